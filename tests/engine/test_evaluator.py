"""The evaluator: ground truth scored as a prediction is perfect, merging counts an image once,
and the real tiny model gives every metric in range."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from oneseg.data.build import build_dataset
from oneseg.data.label_map import LabelMap
from oneseg.data.synth import synthetic_dataset_config
from oneseg.engine.evaluator import Evaluator, instance_ground_truth
from oneseg.model.oneformer import Prediction
from oneseg.model.postprocess import PostprocessConfig
from oneseg.runner import TorchRunner, run_batch

TASKS = ["panoptic", "semantic", "instance"]
POST = PostprocessConfig()


def _val_set(synth_data, min_size=64):
    cfg = synthetic_dataset_config(synth_data)
    cfg.augmentation = dataclasses.replace(
        cfg.augmentation, eval_min_size=min_size, eval_max_size=1000
    )
    label_map = LabelMap.from_json(synth_data["label_map"])
    dataset = build_dataset(cfg, "val", label_map, 0, 32, train=False)
    return dataset, label_map


def _batches(dataset, batch_size=2):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=dataset.collate_fn
    )
    return list(loader)


class GroundTruthModel(nn.Module):
    """Stands in for the network: for an image of the dataset it returns one confident query
    per segment, crowd ones included (class logit +10, mask logit +20 inside, -20 outside),
    and no-object for the other queries, with masks at the input resolution. Only the network
    is replaced: batching, post-processing, GT loading and the metrics are the evaluator's own.
    A predicted crowd region is neither a false positive for PQ nor for AP."""

    def __init__(self, dataset, num_classes: int, num_queries: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the evaluator a device
        self.targets = {}
        for index in range(len(dataset)):
            image = dataset[index]["image"]
            annotation = dataset.annotation(index)
            assert tuple(image.shape[-2:]) == annotation.segment_map.shape  # no resize
            kept = annotation.segments
            assert len(kept) <= num_queries
            masks = np.stack([annotation.segment_map == s.id for s in kept])
            labels = [s.class_index for s in kept]
            self.targets[image.numpy().tobytes()] = (torch.tensor(labels), torch.from_numpy(masks))
        self.calls = []

    def predict(self, images, tasks, image_sizes, precision="fp32"):
        self.calls.append(list(tasks))
        out = self(images)
        return Prediction({task: out for task in tasks}, image_sizes, tuple(images.shape[-2:]))

    def forward(self, images):
        batch, _, height, width = images.shape
        logits = torch.full((batch, self.num_queries, self.num_classes + 1), -10.0)
        logits[..., -1] = 10.0
        masks = torch.full((batch, self.num_queries, height, width), -20.0)
        for b in range(batch):
            labels, gt_masks = self.targets[images[b].to(torch.uint8).numpy().tobytes()]
            n = len(labels)
            logits[b, :n, -1] = -10.0
            logits[b, torch.arange(n), labels] = 10.0
            masks[b, :n, : gt_masks.shape[1], : gt_masks.shape[2]][gt_masks] = 20.0
        return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def add(evaluator, model, label_map, batch, post=None):
    """The runner of `model` on `batch`, its results added to `evaluator`."""
    runner = TorchRunner(model, label_map, post or PostprocessConfig(), TASKS)
    evaluator.update(batch, run_batch(runner, batch, evaluator.tasks))


def test_ground_truth_as_prediction_scores_100(synth_data, tiny_model_cfg):
    dataset, label_map = _val_set(synth_data)
    assert any(s.iscrowd for i in range(len(dataset)) for s in dataset.annotation(i).segments)
    model = GroundTruthModel(dataset, len(label_map))
    evaluator = Evaluator(dataset, label_map, tasks=TASKS)
    for batch in _batches(dataset):
        add(evaluator, model, label_map, batch)
    metrics = evaluator.compute(gather=True)
    assert metrics["num_images"] == len(dataset)
    for key in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "pixel_acc", "fwiou"):
        assert metrics[key] == pytest.approx(100.0), key
    for key in ("ap", "ap50", "ap75"):
        assert metrics[key] == pytest.approx(100.0), key
    present = [v for v in metrics["per_class"].values() if not math.isnan(v["pq"])]
    assert present and all(v["pq"] == pytest.approx(100.0) for v in present)
    assert all(v["ap"] == pytest.approx(100.0) for v in present if v["isthing"])
    # one predict call per batch, for every task
    assert model.calls == [TASKS] * len(_batches(dataset))


def _rotated_things_model(dataset, label_map):
    """The ground-truth stand-in with every thing label moved to the next thing class."""
    model = GroundTruthModel(dataset, len(label_map))
    things = label_map.thing_classes
    for key, (labels, masks) in model.targets.items():
        rotated = [
            things[(things.index(c) + 1) % len(things)] if c in things else c for c in labels
        ]
        model.targets[key] = (torch.tensor(rotated), masks)
    return model


def test_wrong_thing_labels_lower_the_thing_metrics(synth_data, tiny_model_cfg):
    dataset, label_map = _val_set(synth_data)
    model = _rotated_things_model(dataset, label_map)
    evaluator = Evaluator(dataset, label_map, tasks=TASKS)
    for batch in _batches(dataset):
        add(evaluator, model, label_map, batch)
    metrics = evaluator.compute()
    assert metrics["pq_th"] == 0.0
    assert metrics["pq_st"] == pytest.approx(100.0)  # stuff left as it was
    assert 0.0 < metrics["miou"] < 100.0
    # the right class is still there at a probability of e^-20: found, but after all wrong ones
    assert metrics["ap"] < 50.0


def test_merge_counts_an_image_seen_twice_once(synth_data, tiny_model_cfg):
    dataset, label_map = _val_set(synth_data)
    model = _rotated_things_model(dataset, label_map)
    batches = _batches(dataset, batch_size=1)
    whole = Evaluator(dataset, label_map, tasks=TASKS)
    for batch in batches:
        add(whole, model, label_map, batch)
    # two "processes": the second repeats an image, as a padding distributed sampler does
    first, second = (Evaluator(dataset, label_map, tasks=TASKS) for _ in range(2))
    for batch in batches[:2]:
        add(first, model, label_map, batch)
    for batch in batches[1:]:
        add(second, model, label_map, batch)
    expected, merged = whole.compute(), first.merge(second).compute()
    assert merged["num_images"] == len(dataset)
    per_class = expected.pop("per_class")
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, nan_ok=True), key
    for name, values in per_class.items():
        assert merged["per_class"][name] == pytest.approx(values, nan_ok=True), name


def test_instance_ground_truth_flags_crowd_and_counts_pixels(synth_data):
    dataset, label_map = _val_set(synth_data)
    for index in range(len(dataset)):
        annotation = dataset.annotation(index)
        instances = instance_ground_truth(annotation, index + 1, label_map.category_ids)
        things = [s for s in annotation.segments if s.isthing]
        assert [a["iscrowd"] for a in instances] == [int(s.iscrowd) for s in things]
        assert [a["area"] for a in instances] == [
            int((annotation.segment_map == s.id).sum()) for s in things
        ]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_cfg):
    from oneseg.model.build import build_model

    torch.manual_seed(0)
    return build_model(tiny_model_cfg, num_classes=8).eval()


def test_real_model_metrics_in_range(synth_data, tiny_model_cfg, tiny_model):
    # eval size 96: images are resized for the model and its results resized back to 64
    dataset, label_map = _val_set(synth_data, min_size=96)
    cfg = dataclasses.replace(tiny_model_cfg, object_mask_threshold=0.0, overlap_threshold=0.0)
    evaluator = Evaluator(dataset, label_map, tasks=TASKS)
    for batch in _batches(dataset, batch_size=2)[:1]:
        add(evaluator, tiny_model, label_map, batch, PostprocessConfig.of_model(cfg))
    metrics = evaluator.compute()
    assert metrics["num_images"] == 2
    for key in ("pq", "sq", "rq", "miou", "pixel_acc", "fwiou", "ap", "ap50"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert set(metrics["per_class"]) == set(label_map.names)


def test_rejects_unknown_task(synth_data, tiny_model_cfg):
    dataset, label_map = _val_set(synth_data)
    with pytest.raises(ValueError, match="tasks"):
        Evaluator(dataset, label_map, tasks=["depth"])


def test_evaluate_action_writes_metrics_tables_and_chart(
    tmp_path, evaluate_command, tiny_checkpoint
):
    import json

    from oneseg import cli

    code = cli.main(
        evaluate_command(
            tmp_path,
            tiny_checkpoint,
            "evaluate.batch_size=2",
            "model.object_mask_threshold=0.0",
        )
    )
    assert code == 0
    folder = tmp_path / "evaluate"
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["metrics"]["num_images"] == 4
    for key in ("pq", "miou", "ap"):
        assert 0.0 <= saved["metrics"][key] <= 100.0
    rows = (folder / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,category_id,kind,pq,sq,rq,iou,ap" and len(rows) == 1 + 8
    assert (folder / "per_class.md").read_text().startswith("| class |")
    assert (folder / "per_class.png").stat().st_size > 1000
    final = json.loads((folder / "status.json").read_text().splitlines()[-1])
    assert final["status"] == "SUCCESS" and "pq" in final["kpi"]


def test_evaluate_action_needs_a_checkpoint(tmp_path, capsys):
    from oneseg import cli

    assert cli.main(["evaluate", f"results_dir={tmp_path}"]) != 0
    assert "evaluate.checkpoint is empty" in capsys.readouterr().err


def test_compute_gathers_the_images_of_every_process(synth_data, tiny_model_cfg, monkeypatch):
    """compute(gather=True) under an initialised process group merges what all_gather_object
    returns (a stand-in group of two here; the merge is the one tested above)."""
    from oneseg.engine import evaluator as evaluator_module

    dataset, label_map = _val_set(synth_data)
    model = GroundTruthModel(dataset, len(label_map))
    batches = _batches(dataset, batch_size=2)
    local, remote = (Evaluator(dataset, label_map, tasks=TASKS) for _ in range(2))
    add(local, model, label_map, batches[0])
    add(remote, model, label_map, batches[1])

    class TwoProcesses:
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def is_initialized():
            return True

        @staticmethod
        def get_world_size():
            return 2

        @staticmethod
        def all_gather_object(out, obj):
            out[:] = [obj, remote.images]

    monkeypatch.setattr(evaluator_module, "dist", TwoProcesses)
    assert local.compute(gather=False)["num_images"] == 2
    gathered = local.compute(gather=True)
    assert gathered["num_images"] == 4 and gathered["pq"] == pytest.approx(100.0)


def test_instance_ap_of_a_large_output_equals_the_direct_path(synth_data, monkeypatch):
    """Outputs above the large-mask threshold give instance results as one mask per query
    (`QueryMasks`); the evaluator scores them as the direct path's [N, H, W] masks (the
    threshold is lowered to 0 here rather than allocating a gigabyte)."""
    from oneseg.model import postprocess as pp
    from oneseg.results import QueryMasks

    dataset, label_map = _val_set(synth_data)
    model = _rotated_things_model(dataset, label_map)  # AP below 100: a real comparison
    metrics = {}
    for label, threshold in (("direct", pp.FULL_SIZE_BYTES), ("large", 0)):
        monkeypatch.setattr(pp, "FULL_SIZE_BYTES", threshold)
        evaluator = Evaluator(dataset, label_map, tasks=["instance"])
        for batch in _batches(dataset):
            add(evaluator, model, label_map, batch)
        metrics[label] = evaluator.compute(gather=False)
    runner = TorchRunner(model, label_map, PostprocessConfig(), TASKS)
    (result,) = run_batch(runner, _batches(dataset, batch_size=1)[0], ["instance"])
    assert isinstance(result["instance"].masks, QueryMasks)  # still the large form
    assert 0 < metrics["direct"]["ap"] < 100
    for key in ("ap", "ap50", "ap75", "aps", "apm", "apl"):
        assert metrics["large"][key] == pytest.approx(metrics["direct"][key], nan_ok=True), key
