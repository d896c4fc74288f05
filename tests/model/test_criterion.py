"""The OneFormer / Mask2Former loss: invariants, hand cases and the transformers reference."""

import math

import pytest
import torch
from torch import nn

import oneseg.model.criterion as criterion_module
from oneseg.config import LossConfig
from oneseg.model.criterion import SetCriterion, build_criterion, contrastive_loss
from oneseg.model.matcher import HungarianMatcher

K, Q, D = 4, 6, 5
LOG_SCALE = math.log(1 / 0.07)


def _outputs(seed=0, batch=2, aux_layers=2, size=(4, 4), text_len=Q):
    g = torch.Generator().manual_seed(seed)

    def layer():
        return {
            "pred_logits": torch.randn(batch, Q, K + 1, generator=g).requires_grad_(),
            "pred_masks": torch.randn(batch, Q, *size, generator=g).requires_grad_(),
        }

    return {
        **layer(),
        "aux_outputs": [layer() for _ in range(aux_layers)],
        "contrastive_logits": torch.randn(batch, Q, D, generator=g).requires_grad_(),
        "texts": torch.randn(batch, text_len, D, generator=g).requires_grad_(),
        "logit_scale": torch.tensor(LOG_SCALE),
    }


def _targets(counts=(3, 2), seed=1, size=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(K, (n,), generator=g),
            "masks": torch.rand(n, *size, generator=g) > 0.5,
        }
        for n in counts
    ]


def _criterion(num_points=40, **kwargs):
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0, "loss_contrastive": 0.5}
    kwargs.setdefault("weight_dict", weights)
    return SetCriterion(
        K,
        HungarianMatcher(2.0, 5.0, 5.0, num_points),
        eos_coef=0.1,
        num_points=num_points,
        **kwargs,
    )


def _leaves(outputs):
    layers = [outputs, *outputs["aux_outputs"]]
    tensors = [t for layer in layers for t in (layer["pred_logits"], layer["pred_masks"])]
    return tensors + [outputs["contrastive_logits"], outputs["texts"]]


class PlantedMatcher(nn.Module):
    """Target j -> query j: matching without randomness."""

    def forward(self, outputs, targets):
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


def test_same_losses_and_gradients_as_transformers():
    modeling = pytest.importorskip("transformers.models.oneformer.modeling_oneformer")
    outputs, targets = _outputs(), _targets()
    reference = modeling.OneFormerLoss(
        K, modeling.OneFormerHungarianMatcher(2.0, 5.0, 5.0, 40), {}, 0.1, 40, 3.0, 0.75, 0.07
    )
    torch.manual_seed(0)
    ours = _criterion()(outputs, targets)
    ours_grads = torch.autograd.grad(sum(ours.values()), _leaves(outputs))
    torch.manual_seed(0)
    expected = reference(
        outputs["pred_masks"],
        outputs["pred_logits"],
        outputs["contrastive_logits"],
        [t["masks"].float() for t in targets],
        [t["labels"] for t in targets],
        outputs["texts"],
        [
            {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
            for a in outputs["aux_outputs"]
        ],
    )
    expected_grads = torch.autograd.grad(sum(expected.values()), _leaves(outputs))
    assert len(ours) == len(expected) == 3 * 3 + 1
    for key, value in ours.items():
        reference_value = expected[key.replace("loss_ce", "loss_cross_entropy")]
        torch.testing.assert_close(value, reference_value.reshape(()))
    for a, b in zip(ours_grads, expected_grads):
        torch.testing.assert_close(a, b)


def test_losses_are_invariant_to_target_order():
    outputs, targets = _outputs(seed=2), _targets(counts=(4, 3))
    criterion = _criterion()
    torch.manual_seed(0)
    losses = criterion(outputs, targets)
    permuted = []
    for t in targets:
        perm = torch.randperm(len(t["labels"]))
        permuted.append({"labels": t["labels"][perm], "masks": t["masks"][perm]})
    torch.manual_seed(0)
    permuted_losses = criterion(outputs, permuted)
    for key in losses:
        torch.testing.assert_close(losses[key], permuted_losses[key])


@pytest.mark.parametrize("counts", [(0, 0), (0, 2)])
def test_empty_targets_give_finite_losses_and_gradients(counts):
    outputs, targets = _outputs(), _targets(counts=counts)
    losses = _criterion()(outputs, targets)
    assert set(losses) >= {"loss_ce", "loss_mask", "loss_dice", "loss_contrastive", "loss_dice_1"}
    assert all(torch.isfinite(v) for v in losses.values())
    if counts == (0, 0):
        assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    grads = torch.autograd.grad(_criterion().total(losses), _leaves(outputs), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_batched_losses_combine_per_image_losses(monkeypatch):
    """Class CE is a weighted mean over queries: batched = per-image CEs weighted by their summed
    class weights (a plain mean when the target counts are equal). Mask losses are sums over
    masks / num_masks: batched * total masks = sum of per-image losses * their mask counts."""
    fixed = torch.rand(1, 40, 2, generator=torch.Generator().manual_seed(7))

    def same_points_for_every_mask(logits, num_points, *args):
        return fixed.expand(logits.shape[0], -1, -1)

    monkeypatch.setattr(criterion_module, "sample_uncertain_points", same_points_for_every_mask)
    criterion = SetCriterion(
        K, PlantedMatcher(), weight_dict={}, eos_coef=0.1, losses=("labels", "masks")
    )
    for counts in [(3, 5), (2, 2)]:
        outputs, targets = _outputs(seed=3, aux_layers=0), _targets(counts=counts)
        batched = criterion(outputs, targets)
        single = [
            criterion({k: outputs[k][b : b + 1] for k in ("pred_logits", "pred_masks")}, [t])
            for b, t in enumerate(targets)
        ]
        class_weight = torch.tensor([n + 0.1 * (Q - n) for n in counts])
        ce = torch.stack([s["loss_ce"] for s in single])
        torch.testing.assert_close(
            batched["loss_ce"], (class_weight * ce).sum() / class_weight.sum()
        )
        if counts[0] == counts[1]:
            torch.testing.assert_close(batched["loss_ce"], ce.mean())
        for key in ("loss_mask", "loss_dice"):
            per_image = sum(n * s[key] for n, s in zip(counts, single))
            torch.testing.assert_close(batched[key] * sum(counts), per_image)


def test_contrastive_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    queries, texts = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    for log_scale, scale in [(math.log(10.0), 10.0), (math.log(500.0), 100.0)]:  # capped at 100
        q = [x.flatten() / x.flatten().norm() for x in queries]
        t = [x.flatten() / x.flatten().norm() for x in texts]
        sim = [[float(q[i] @ t[j]) * scale for j in range(2)] for i in range(2)]  # image i, text j

        def ce(row, label):
            return -row[label] + math.log(sum(math.exp(v) for v in row))

        image_to_text = (ce(sim[0], 0) + ce(sim[1], 1)) / 2
        text_to_image = (ce([sim[0][0], sim[1][0]], 0) + ce([sim[0][1], sim[1][1]], 1)) / 2
        loss = contrastive_loss(queries, texts, torch.tensor(log_scale))
        assert loss.item() == pytest.approx(image_to_text + text_to_image, rel=1e-5)


def test_contrastive_loss_equals_transformers():
    modeling = pytest.importorskip("transformers.models.oneformer.modeling_oneformer")
    queries, texts = torch.randn(3, Q, D), torch.randn(3, Q, D)
    reference = modeling.OneFormerLoss(
        K, modeling.OneFormerHungarianMatcher(), {}, 0.1, 10, 3.0, 0.75, 0.07
    )
    expected = reference.loss_contrastive(queries, texts)["loss_contrastive"]
    torch.testing.assert_close(contrastive_loss(queries, texts, torch.tensor(LOG_SCALE)), expected)


def test_contrastive_loss_of_one_image_is_zero():
    queries, texts = torch.randn(1, Q, D, requires_grad=True), torch.randn(1, Q, D)
    loss = contrastive_loss(queries, texts, torch.tensor(LOG_SCALE))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss, queries)
    assert torch.isfinite(grad).all()


def test_contrastive_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        contrastive_loss(torch.randn(2, Q, D), torch.randn(2, Q - 1, D), torch.tensor(0.0))


def test_logit_scale_falls_back_to_the_temperature():
    outputs, targets = _outputs(aux_layers=0), _targets()
    criterion = _criterion(contrastive_temperature=0.07)
    with_scale = criterion(outputs, targets)["loss_contrastive"]
    del outputs["logit_scale"]
    torch.testing.assert_close(criterion(outputs, targets)["loss_contrastive"], with_scale)


def test_total_weights_every_layer_and_skips_unweighted_keys():
    criterion = _criterion(weight_dict={"loss_ce": 2.0, "loss_dice": 5.0, "loss_dice_1": 1.0})
    losses = {k: torch.tensor(1.0) for k in ("loss_ce", "loss_ce_0", "loss_dice_1", "loss_mask")}
    assert criterion.total(losses).item() == 2.0 + 2.0 + 1.0


def test_build_criterion_for_both_architectures():
    outputs, targets = _outputs(aux_layers=1), _targets()
    cfg = LossConfig(train_num_points=32)
    oneformer = build_criterion(cfg, K, "oneformer")
    assert oneformer.weight_dict == {
        "loss_ce": 2.0,
        "loss_mask": 5.0,
        "loss_dice": 5.0,
        "loss_contrastive": 0.5,
    }
    assert oneformer.matcher.num_points == 32 and oneformer.empty_weight[
        -1
    ].item() == pytest.approx(0.1)
    assert "loss_contrastive" in oneformer(outputs, targets)

    mask2former = build_criterion(cfg, K, "mask2former")
    plain = {k: outputs[k] for k in ("pred_logits", "pred_masks", "aux_outputs")}
    assert set(mask2former(plain, targets)) == {
        "loss_ce",
        "loss_mask",
        "loss_dice",
        "loss_ce_0",
        "loss_mask_0",
        "loss_dice_0",
    }
    last_layer_only = build_criterion(LossConfig(deep_supervision=False), K, "mask2former")
    assert set(last_layer_only(plain, targets)) == {"loss_ce", "loss_mask", "loss_dice"}
    with pytest.raises(ValueError):
        build_criterion(cfg, K, "detr")


def test_ignore_mask_drops_points_from_the_mask_losses():
    outputs, targets = _outputs(aux_layers=0), _targets()
    default = _criterion(losses=("masks",))
    with_ignore = _criterion(losses=("masks",), use_ignore_mask=True)
    torch.manual_seed(0)
    expected = default(outputs, targets)
    for t in targets:
        t["ignore_mask"] = torch.zeros(16, 16, dtype=torch.bool)
    torch.manual_seed(0)
    nothing_ignored = with_ignore(outputs, targets)
    for key in expected:
        torch.testing.assert_close(nothing_ignored[key], expected[key])
    torch.manual_seed(0)
    assert default(outputs, targets)["loss_mask"] == expected["loss_mask"]  # off by default

    for t in targets:
        t["ignore_mask"][:] = True
    torch.manual_seed(0)
    all_ignored = with_ignore(outputs, targets)
    assert all_ignored["loss_mask"] == 0 and all_ignored["loss_dice"] == 0


def test_losses_under_autocast_are_finite():
    outputs, targets = _outputs(), _targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _criterion()(outputs, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_unknown_loss_names_are_refused():
    with pytest.raises(ValueError, match="boxes"):
        _criterion(losses=("labels", "boxes"))
