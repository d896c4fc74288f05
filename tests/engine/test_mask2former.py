"""Mask2Former: trains on the targets of its one mode (no task or text tokens), validates,
evaluates and segments the tasks of that mode; the 1-class instance model of TAO's card."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from oneseg.checkpoint import read_checkpoint
from oneseg.config import LossConfig
from oneseg.data.build import build_dataset, load_label_map, model_label_map
from oneseg.data.synth import write_synthetic_dataset
from oneseg.engine.callbacks import latest_checkpoint
from oneseg.engine.evaluate import run_evaluate
from oneseg.engine.inference import run_inference
from oneseg.engine.train import run_train, text_list_length
from oneseg.experiment import ActionRun
from oneseg.spec import spec_from_dict

# what evaluate reports for a model of each mode when asked for all three tasks
MODE_METRICS = {
    "panoptic": {"pq", "miou", "ap"},
    "instance": {"ap"},
    "semantic": {"miou"},
}
ALL_METRICS = {"pq", "miou", "ap"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_m2f")
    return write_synthetic_dataset(root, num_train=4, num_val=2, size=(64, 64), seed=5)


def _model(tiny_model_cfg, **overrides) -> dict:
    config = dataclasses.replace(
        tiny_model_cfg,
        arch="mask2former",
        loss=LossConfig(train_num_points=256),
        # random weights are never confident: let every query take part
        object_mask_threshold=0.0,
        overlap_threshold=0.0,
        **overrides,
    )
    return dataclasses.asdict(config)


def _values(results, data, model, **dataset) -> dict:
    def source(split):
        return {
            "images": str(data[split]["images"]),
            "annotations": str(data[split]["panoptic_json"]),
            "panoptic": str(data[split]["panoptic"]),
        }

    return {
        "results_dir": str(results),
        "model": model,
        "dataset": {
            "train": [source("train")],
            "val": source("val"),
            "label_map": str(data["label_map"]),
            "batch_size": 2,
            "workers": 0,
            "augmentation": {
                "train_min_size": [64],
                "train_max_size": 128,
                "crop_size": [64, 64],
                "eval_min_size": 64,
            },
            **dataset,
        },
        "train": {"num_epochs": 1, "log_every_n_steps": 1},
        "evaluate": {"tasks": ["panoptic", "instance", "semantic"], "batch_size": 2},
        "inference": {
            "images": str(data["val"]["images"]),
            "tasks": ["panoptic", "instance", "semantic"],
            "overlay": False,
        },
    }


def _status(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]


def _train_evaluate_infer(tmp_path, values) -> tuple:
    spec = spec_from_dict(values)
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    checkpoint = latest_checkpoint(tmp_path / "train")
    spec = spec_from_dict(
        values, [f"evaluate.checkpoint={checkpoint}", f"inference.checkpoint={checkpoint}"]
    )
    with ActionRun(spec, "evaluate") as run:
        run_evaluate(spec, run)
    with ActionRun(spec, "inference") as run:
        run_inference(spec, run)
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    return checkpoint, metrics


@pytest.mark.parametrize("mode", ["panoptic", "instance", "semantic"])
def test_trains_validates_evaluates_and_infers_its_mode(tmp_path, synth, tiny_model_cfg, mode):
    values = _values(tmp_path, synth, _model(tiny_model_cfg, mode=mode))
    checkpoint, metrics = _train_evaluate_infer(tmp_path, values)

    train_status = _status(tmp_path / "train")
    assert train_status[-1]["status"] == "SUCCESS"
    kpis = train_status[-1]["kpi"]
    assert kpis["steps"] == 2 and np.isfinite(kpis["final_loss"])
    # validation during training scores the tasks of the mode only
    assert {k for k in ALL_METRICS if k in kpis} == MODE_METRICS[mode]
    # the default monitor (miou) falls back to the metric of the mode where that lacks it
    assert (tmp_path / "train" / "model_best.ckpt").is_file()
    model_cfg, _, state = read_checkpoint(checkpoint)
    assert (model_cfg.arch, model_cfg.mode) == ("mask2former", mode)
    assert not any(k.startswith(("task_mlp", "text_queries")) for k in state)

    assert {k for k in ALL_METRICS if k in metrics["metrics"]} == MODE_METRICS[mode]
    if mode != "panoptic":
        messages = " ".join(line.get("message", "") for line in _status(tmp_path / "evaluate"))
        assert f"in {mode} mode does {mode}: not evaluating" in messages
    written = {p.name for p in (tmp_path / "inference").iterdir() if p.is_dir()}
    expected = {"panoptic": {"panoptic", "semantic"}, "instance": set(), "semantic": {"semantic"}}
    assert written == expected[mode]
    assert (tmp_path / "inference" / "instance.json").exists() == (mode != "semantic")


def test_samples_carry_the_targets_of_the_mode_and_no_tokens(synth, tiny_model_cfg, tmp_path):
    values = _values(tmp_path, synth, _model(tiny_model_cfg, mode="instance"))
    spec = spec_from_dict(values)
    assert text_list_length(spec) == 0
    label_map = load_label_map(spec.dataset)
    dataset = build_dataset(
        spec.dataset, "train", label_map, 0, 32, train=True, task="instance", tokens=False
    )
    batch = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
    assert "task_tokens" not in batch and "text_tokens" not in batch
    assert batch["tasks"] == ["instance"] * len(dataset)
    labels = np.concatenate([t["labels"].numpy() for t in batch["targets"]])
    assert labels.size and all(label_map.isthing[k] for k in labels)


def test_single_class_merges_things_and_leaves_stuff_unlabelled(synth, tiny_model_cfg, tmp_path):
    values = _values(tmp_path, synth, _model(tiny_model_cfg), single_class="object")
    spec = spec_from_dict(values)
    label_map = model_label_map(spec.dataset)
    assert (label_map.names, label_map.isthing, label_map.category_ids) == (["object"], [True], [1])
    source_map = load_label_map(spec.dataset)
    unmerged = dataclasses.replace(spec.dataset, single_class="")
    plain = build_dataset(unmerged, "val", source_map, 0, 32, train=False)
    merged = build_dataset(spec.dataset, "val", label_map, 0, 32, train=False, task="instance")
    for index in range(len(merged)):
        before, after = plain.annotation(index), merged.annotation(index)
        things = [s for s in before.segments if s.isthing]
        stuff_ids = [s.id for s in before.segments if not s.isthing]
        assert [s.id for s in after.segments] == [s.id for s in things]
        assert {s.class_index for s in after.segments} <= {0}
        assert not np.isin(after.segment_map, stuff_ids).any()
        thing_pixels = np.isin(before.segment_map, [s.id for s in things])
        np.testing.assert_array_equal(
            after.segment_map[thing_pixels], before.segment_map[thing_pixels]
        )
        kept = [s for s in things if not s.iscrowd and (before.segment_map == s.id).any()]
        assert merged[index]["labels"].tolist() == [0] * len(kept)


def test_one_class_instance_model_as_the_tao_card(tmp_path, synth, tiny_model_cfg):
    model = _model(tiny_model_cfg, mode="instance", num_classes=1)
    values = _values(tmp_path, synth, model, single_class="object")
    values["evaluate"]["tasks"] = ["instance"]
    values["inference"]["tasks"] = ["instance"]
    checkpoint, metrics = _train_evaluate_infer(tmp_path, values)

    _, label_map, _ = read_checkpoint(checkpoint)
    assert label_map.names == ["object"] and label_map.category_ids == [1]
    assert set(metrics["per_class"]) == {"object"}
    assert "ap" in metrics["metrics"] and "pq" not in metrics["metrics"]
    results = json.loads((tmp_path / "inference" / "instance.json").read_text())
    assert results and {r["category_id"] for r in results} == {1}
    # evaluating it on the multi-class data without the merge names the key
    values["dataset"]["single_class"] = ""
    spec = spec_from_dict(values, [f"evaluate.checkpoint={checkpoint}"])
    with pytest.raises(ValueError, match="dataset.single_class=object"):
        with ActionRun(spec, "evaluate") as run:
            run_evaluate(spec, run)


def test_one_class_without_single_class_names_the_key(tmp_path, synth, tiny_model_cfg):
    values = _values(tmp_path, synth, _model(tiny_model_cfg, mode="instance", num_classes=1))
    spec = spec_from_dict(values)
    with pytest.raises(ValueError, match="dataset.single_class"), ActionRun(spec, "train") as run:
        run_train(spec, run)


def test_tao_card_model_block_trains_on_a_multi_class_dataset(
    tmp_path, synth, tao_mask2former_card
):
    """The card's block as written (1 class, 100 queries, instance mode), narrowed to a CPU-sized
    Swin and heads by oneseg keys; the data's thing classes become its one class."""
    from oneseg.spec import load_spec

    card = tao_mask2former_card
    values = _values(tmp_path, synth, {})
    source = values["dataset"]["train"][0]
    overrides = [
        f"results_dir={tmp_path}",
        f"dataset.train=[{{images: {source['images']}, annotations: {source['annotations']}, "
        f"panoptic: {source['panoptic']}}}]",
        f"dataset.label_map={values['dataset']['label_map']}",
        "dataset.single_class=object",
        "dataset.batch_size=2",
        "dataset.workers=0",
        "dataset.augmentation.train_min_size=[64]",
        "dataset.augmentation.crop_size=[64,64]",
        "model.backbone_embed_dim=24",
        "model.backbone_depths=[1,1,1,1]",
        "model.drop_path_rate=0.0",
        "model.hidden_dim=32",
        "model.dim_feedforward=64",
        "model.dec_layers=2",
        "model.nheads=2",
        "model.pixel_decoder.conv_dim=32",
        "model.pixel_decoder.mask_dim=32",
        "model.pixel_decoder.enc_layers=1",
        "model.pixel_decoder.enc_ffn_dim=64",
        "model.pixel_decoder.norm_groups=8",
        "model.loss.train_num_points=256",
        "train.max_steps=2",
        "train.num_epochs=1",
    ]
    spec = load_spec(card, overrides)
    model = spec.model
    assert (model.arch, model.mode, model.num_classes, model.num_queries) == (
        "mask2former",
        "instance",
        1,
        100,
    )
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    status = _status(tmp_path / "train")
    assert status[-1]["status"] == "SUCCESS" and status[-1]["kpi"]["steps"] == 2
    messages = " ".join(line.get("message", "") for line in status)
    assert "starts from random weights" in messages
    model_cfg, label_map, state = read_checkpoint(latest_checkpoint(tmp_path / "train"))
    assert label_map.names == ["object"] and model_cfg.num_queries == 100
    assert state["decoder.class_embed.weight"].shape[0] == 2  # object + no-object
