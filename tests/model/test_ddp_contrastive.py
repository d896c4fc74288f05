"""Two gloo processes with 2 images each see the contrastive loss of the global batch of 4."""

import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oneseg.model.criterion import SetCriterion, contrastive_loss
from oneseg.model.matcher import HungarianMatcher

WORLD, LOCAL_BATCH, Q, D, K = 2, 2, 3, 4, 3
LOG_SCALE = torch.tensor(math.log(1 / 0.07))
TARGET_COUNTS = [(3, 2), (1, 0)]  # per rank: 6 masks in all, 3 per process


def _global_batch():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(WORLD * LOCAL_BATCH, Q, D, generator=g)
    texts = torch.randn(WORLD * LOCAL_BATCH, Q, D, generator=g)
    return queries, texts


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queries, texts = _global_batch()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local_queries = queries[rows].clone().requires_grad_()
        local_texts = texts[rows].clone().requires_grad_()
        loss = contrastive_loss(local_queries, local_texts, LOG_SCALE)
        loss.backward()

        criterion = SetCriterion(
            K, HungarianMatcher(num_points=16), weight_dict={}, eos_coef=0.1, num_points=16
        )
        targets = [
            {"labels": torch.zeros(n, dtype=torch.long), "masks": torch.ones(n, 8, 8)}
            for n in TARGET_COUNTS[rank]
        ]
        outputs = {
            "pred_logits": torch.randn(LOCAL_BATCH, Q, K + 1),
            "pred_masks": torch.randn(LOCAL_BATCH, Q, 2, 2),
            "contrastive_logits": queries[rows],
            "texts": texts[rows],
            "logit_scale": LOG_SCALE,
        }
        criterion_loss = criterion(outputs, targets)["loss_contrastive"]
        torch.save(
            {
                "loss": loss.detach(),
                "criterion_loss": criterion_loss.detach(),
                "num_masks": criterion.num_masks(targets, torch.device("cpu")),
                "grad_queries": local_queries.grad,
                "grad_texts": local_texts.grad,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_gathered_contrastive_loss_equals_the_global_batch_loss(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    queries, texts = _global_batch()
    queries.requires_grad_()
    texts.requires_grad_()
    expected = contrastive_loss(queries, texts, LOG_SCALE)
    expected.backward()

    # Each process averages over its own rows; DDP averages over processes.
    mean_loss = sum(r["loss"] for r in results) / WORLD
    torch.testing.assert_close(mean_loss, expected.detach())
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["criterion_loss"], result["loss"])
        assert result["num_masks"].item() == 3.0
        # The gradient reaching a process's rows comes from every process's loss: it is the
        # gradient of the sum over processes, i.e. WORLD x that of the global-batch loss.
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        assert result["grad_queries"].abs().sum() > 0
        torch.testing.assert_close(result["grad_queries"] / WORLD, queries.grad[rows])
        torch.testing.assert_close(result["grad_texts"] / WORLD, texts.grad[rows])
