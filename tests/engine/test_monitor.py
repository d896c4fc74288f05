"""train.monitor keeps model_best.ckpt at the best value, logs it, and early stopping stops."""

import dataclasses
import json

import pytest
import torch

from oneseg.checkpoint import read_checkpoint
from oneseg.config import LossConfig
from oneseg.data.synth import write_synthetic_dataset
from oneseg.engine.evaluator import Evaluator
from oneseg.engine.train import run_train
from oneseg.experiment import ActionRun
from oneseg.spec import spec_from_dict


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_monitor")
    return write_synthetic_dataset(root, num_train=4, num_val=2, size=(64, 64), seed=5)


def _spec(results, data, model_cfg, validate: bool, **train):
    def source(split):
        return {
            "images": str(data[split]["images"]),
            "annotations": str(data[split]["panoptic_json"]),
            "panoptic": str(data[split]["panoptic"]),
        }

    model = dataclasses.asdict(dataclasses.replace(model_cfg, loss=LossConfig(train_num_points=64)))
    dataset = {
        "train": [source("train")],
        "label_map": str(data["label_map"]),
        "batch_size": 2,
        "workers": 0,
        "augmentation": {"train_min_size": [64], "crop_size": [64, 64], "eval_min_size": 64},
    }
    if validate:
        dataset["val"] = source("val")
    values = {
        "results_dir": str(results),
        "model": model,
        "dataset": dataset,
        "evaluate": {"tasks": ["semantic"]},
        "train": {"log_every_n_steps": 1, **train},
    }
    return spec_from_dict(values)


def _train(spec):
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    lines = (run.dir / "status.json").read_text().splitlines()
    return run, [json.loads(line) for line in lines]


def _weights(path):
    return read_checkpoint(path)[2]


def test_early_stop_keeps_the_best_epoch(tmp_path, synth, tiny_model_cfg, monkeypatch):
    """mIoU falls after the first validation: with patience 1 training stops after epoch 2 of 5
    and model_best.ckpt holds the weights of epoch 1."""
    values = iter([50.0, 40.0, 30.0, 20.0, 10.0])
    original = Evaluator.compute

    def falling_miou(self, gather=True):
        metrics = original(self, gather)
        metrics["miou"] = next(values)
        return metrics

    monkeypatch.setattr(Evaluator, "compute", falling_miou)
    spec = _spec(
        tmp_path, synth, tiny_model_cfg, True, num_epochs=5, monitor="miou", early_stop_patience=1
    )
    run, status = _train(spec)
    folder = run.dir
    assert (folder / "model_epoch002.ckpt").is_file()
    assert not (folder / "model_epoch003.ckpt").exists()
    best_lines = [s for s in status if "best" in s]
    assert [b["best"] for b in best_lines] == [
        {"monitor": "miou", "value": 50.0, "epoch": 0, "file": "model_best.ckpt"}
    ]
    assert any("early stop" in s.get("message", "") for s in status)
    assert status[-1]["status"] == "SUCCESS"
    assert status[-1]["kpi"]["best_miou"] == 50.0 and status[-1]["kpi"]["best_epoch"] == 0
    assert not list(folder.glob("*.tmp"))
    best, first, second = (
        _weights(folder / name)
        for name in ("model_best.ckpt", "model_epoch001.ckpt", "model_epoch002.ckpt")
    )
    assert all(torch.equal(best[k], first[k]) for k in best)
    assert not all(torch.equal(best[k], second[k]) for k in best)


def test_loss_monitor_needs_no_validation(tmp_path, synth, tiny_model_cfg):
    spec = _spec(tmp_path, synth, tiny_model_cfg, False, num_epochs=2, monitor="loss")
    run, status = _train(spec)
    losses = {}
    for line in status:
        if "loss" in line:
            losses.setdefault(line["epoch"], []).append(line["loss"])
    means = {epoch: sum(v) / len(v) for epoch, v in losses.items()}
    best_lines = [s["best"] for s in status if "best" in s]
    assert best_lines and best_lines[-1]["value"] == pytest.approx(min(means.values()), rel=1e-5)
    assert best_lines[-1]["epoch"] == min(means, key=means.get)
    assert (run.dir / "model_best.ckpt").is_file()


def test_monitor_of_a_task_not_evaluated_is_refused(tmp_path, synth, tiny_model_cfg):
    spec = _spec(tmp_path, synth, tiny_model_cfg, True, num_epochs=1, monitor="pq")
    with pytest.raises(ValueError, match="train.monitor: got 'pq'.*'panoptic' in evaluate.tasks"):
        _train(spec)
