"""Training: exact resume, a bad loss stops the run cleanly, every parameter learns, DDP on CPU."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from oneseg.checkpoint import read_checkpoint, read_intensity
from oneseg.config import LossConfig
from oneseg.data.intensity import Intensity
from oneseg.data.synth import write_synthetic_dataset
from oneseg.engine import callbacks as callbacks_module
from oneseg.engine.callbacks import latest_checkpoint
from oneseg.engine.module import NonFiniteLossError
from oneseg.engine.optim import lr_factor, param_groups
from oneseg.engine.sampling import EpochSampler
from oneseg.engine.train import run_train, text_list_length
from oneseg.experiment import ActionRun
from oneseg.spec import spec_from_dict


@pytest.fixture(scope="module")
def tiny_model(tiny_model_cfg):
    """The shared tiny OneFormer, with stochastic depth on so that resuming must restore RNG."""
    config = dataclasses.replace(
        tiny_model_cfg, drop_path_rate=0.1, loss=LossConfig(train_num_points=256)
    )
    return dataclasses.asdict(config)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_dataset(root, num_train=8, num_val=2, size=(64, 64), seed=3)


def _spec(results, data, model, **train):
    def source(split):
        return {
            "images": str(data[split]["images"]),
            "annotations": str(data[split]["panoptic_json"]),
            "panoptic": str(data[split]["panoptic"]),
        }

    values = {
        "results_dir": str(results),
        "model": model,
        "dataset": {
            "train": [source("train")],
            "label_map": str(data["label_map"]),
            "batch_size": 2,
            "workers": 0,
            "augmentation": {
                "train_min_size": [64],
                "train_max_size": 128,
                "crop_size": [64, 64],
                "eval_min_size": 64,
            },
        },
        "train": {"num_epochs": 2, "log_every_n_steps": 1, "optim": {"warmup_steps": 2}, **train},
    }
    return spec_from_dict(values)


def _train(spec):
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    return run


def _losses(results):
    lines = (results / "train" / "status.json").read_text().splitlines()
    return {d["step"]: d["loss"] for d in map(json.loads, lines) if "loss" in d}


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path, synth, tiny_model, monkeypatch):
    straight = tmp_path / "straight"
    _train(
        _spec(straight, synth, tiny_model, checkpoint_interval=1, checkpoint_interval_unit="step")
    )

    # the same run, killed after step 3 (mid-epoch: 4 steps per epoch), then resumed
    broken = tmp_path / "broken"
    original = callbacks_module.StatusCallback.on_train_batch_end

    def kill_after_step_3(self, trainer, module, *args):
        original(self, trainer, module, *args)
        if trainer.global_step == 3:
            raise RuntimeError("killed")

    monkeypatch.setattr(callbacks_module.StatusCallback, "on_train_batch_end", kill_after_step_3)
    spec = _spec(broken, synth, tiny_model, checkpoint_interval=1, checkpoint_interval_unit="step")
    with pytest.raises(RuntimeError, match="killed"):
        _train(spec)
    assert (broken / "train" / "model_crash.ckpt").is_file()
    assert latest_checkpoint(broken / "train").name == "model_step0000003.ckpt"
    monkeypatch.undo()
    _train(spec)  # finds the latest checkpoint in results_dir by itself

    a, b = _losses(straight), _losses(broken)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), step
    _, _, weights_a = read_checkpoint(latest_checkpoint(straight / "train"))
    # the intensity rule of the training images travels with the weights
    assert read_intensity(latest_checkpoint(straight / "train")) == Intensity().to_dict()
    _, _, weights_b = read_checkpoint(latest_checkpoint(broken / "train"))
    for name, value in weights_a.items():
        torch.testing.assert_close(weights_b[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_nan_loss_stops_with_step_samples_and_last_good_checkpoint(
    tmp_path, synth, tiny_model, monkeypatch
):
    from oneseg.model import criterion as criterion_module

    original = criterion_module.SetCriterion.forward
    calls = {"n": 0}

    def poisoned(self, outputs, targets):
        losses = original(self, outputs, targets)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return losses

    monkeypatch.setattr(criterion_module.SetCriterion, "forward", poisoned)
    spec = _spec(
        tmp_path, synth, tiny_model, checkpoint_interval=1, checkpoint_interval_unit="step"
    )
    with pytest.raises(NonFiniteLossError) as info:
        _train(spec)
    message = str(info.value)
    assert "at step 2" in message and "model_step0000002.ckpt" in message
    assert "samples" in message
    saved = sorted(p.name for p in (tmp_path / "train").glob("model_step*.ckpt"))
    assert saved == ["model_step0000001.ckpt", "model_step0000002.ckpt"]
    assert not (tmp_path / "train" / "model_crash.ckpt").exists()
    last = json.loads((tmp_path / "train" / "status.json").read_text().splitlines()[-1])
    assert last["status"] == "FAILURE" and "nan" in last["message"]


def test_every_trainable_parameter_gets_a_gradient(synth, tiny_model):
    from oneseg.data.build import build_dataset, load_label_map
    from oneseg.model.build import build_model
    from oneseg.model.criterion import build_criterion

    spec = _spec("unused", synth, tiny_model)
    label_map = load_label_map(spec.dataset)
    dataset = build_dataset(
        spec.dataset, "train", label_map, text_list_length(spec), 32, train=True
    )
    batch = dataset.collate_fn([dataset[i] for i in range(2)])
    model = build_model(spec.model, num_classes=len(label_map)).train()
    criterion = build_criterion(spec.model.loss, len(label_map), "oneformer")
    images = model.normalize(batch["images"].float())
    outputs = model(images, batch["task_tokens"], batch["text_tokens"])
    criterion.total(criterion(outputs, batch["targets"])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # by design: the last decoder layer's prediction uses no later attention mask, so nothing
    # is unused; the list must be empty
    assert no_grad == []


def test_param_groups_and_schedule(tiny_model):
    from oneseg.model.build import build_model

    spec = spec_from_dict({"model": tiny_model})
    model = build_model(spec.model, num_classes=3)
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 0.05, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert groups["head"]["lr"] == pytest.approx(1e-4)
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    no_decay = {
        id(p) for name in ("head_no_decay", "backbone_no_decay") for p in groups[name]["params"]
    }
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(id(m.weight) in no_decay for m in norms if m.weight.requires_grad)
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)
    assert lr_factor(0, 100, "poly", 0.9, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(100, 100, "poly", 0.9, 0, 1.0) == 0.0
    assert lr_factor(50, 100, "poly", 0.9, 0, 1.0) == pytest.approx(0.5**0.9)


def test_epoch_sampler_splits_and_skips():
    shares = [list(EpochSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    indices = [i for share in shares for i, _ in share]
    assert len(indices) == 12 and set(indices) == set(range(10))  # padded like DDP
    full = list(EpochSampler(10, seed=1))
    skipped = EpochSampler(10, seed=1)
    skipped.skip(4)
    assert list(skipped) == full[4:]
    assert list(skipped) == full  # the skip applies to one epoch only
    unpadded = [len(EpochSampler(10, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert unpadded == [4, 3, 3]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on Linux")
def test_two_process_ddp_on_cpu_keeps_ranks_in_sync(tmp_path, synth, tiny_model):
    spec = _spec(tmp_path, synth, tiny_model, num_processes_cpu=2, num_epochs=1)
    spec_file = tmp_path / "spec.yaml"
    from oneseg.spec import dump_spec

    spec_file.write_text(dump_spec(spec))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-m", "oneseg.cli", "train", "-e", str(spec_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "train" / "status.json").read_text().splitlines()]
    assert lines[-1]["status"] == "SUCCESS"
    assert lines[-1]["kpi"]["weights_in_sync"] is True
    # 8 images, 2 per batch, 2 processes: 2 steps per epoch
    assert lines[-1]["kpi"]["steps"] == 2
    assert yaml.safe_load((tmp_path / "train" / "experiment.yaml").read_text())
