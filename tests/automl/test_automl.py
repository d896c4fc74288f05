"""AutoML: the search space from the schema, refused parameters, and studies of tiny trainings
(2 steps each) that survive failing trials, a kill, two processes at once, and prune."""

import csv
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from oneseg import cli
from oneseg.automl.space import POPULAR_PARAMETERS, search_space
from oneseg.config import LossConfig
from oneseg.spec import SpecError, load_spec, spec_from_dict


@pytest.fixture(scope="module")
def tiny_model(tiny_model_cfg):
    return dataclasses.asdict(
        dataclasses.replace(tiny_model_cfg, loss=LossConfig(train_num_points=256))
    )


def _spec_file(folder: Path, data: dict, model: dict, val: bool = False, **automl) -> Path:
    """A spec of 2 training images in one batch and 2 epochs: each trial is 2 steps."""

    def source(split):
        return {
            "images": str(data[split]["images"]),
            "annotations": str(data[split]["panoptic_json"]),
            "panoptic": str(data[split]["panoptic"]),
        }

    values = {
        "results_dir": str(folder / "results"),
        "model": model,
        "dataset": {
            "train": [source("train")],
            "val": source("val") if val else {},
            "label_map": str(data["label_map"]),
            "batch_size": 2,
            "workers": 0,
            "augmentation": {"train_min_size": [64], "crop_size": [64, 64], "eval_min_size": 64},
        },
        "train": {"num_epochs": 2, "log_every_n_steps": 1},
        "evaluate": {"tasks": ["panoptic"]},
        "automl": {"metric": "loss", "algorithm": "random", "seed": 0, **automl},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _automl_dir(spec_file: Path) -> Path:
    return spec_file.parent / "results" / "automl"


def _table(spec_file: Path) -> list[dict]:
    with open(_automl_dir(spec_file) / "trials.csv") as rows:
        return list(csv.DictReader(rows))


def _study(spec_file: Path, direction: str = "minimize") -> optuna.Study:
    folder = _automl_dir(spec_file)
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        storage=f"sqlite:///{folder / 'study.db'}",
        study_name="oneseg",
        direction=direction,
        load_if_exists=True,
    )


def _run_cli(argv: list[str]) -> None:
    sys.exit(cli.main(argv))


def _cli_process(spec_file: Path) -> multiprocessing.Process:
    """`oneseg automl` in a forked process: another pid, without importing everything again."""
    process = multiprocessing.get_context("fork").Process(
        target=_run_cli, args=(["automl", "-e", str(spec_file)],)
    )
    process.start()
    return process


# --------------------------------------------------------------------------- search space


def test_search_space_comes_from_the_schema_bounds():
    space = {p.key: p for p in search_space(spec_from_dict({}))}
    lr = space["train.optim.lr"]  # default 1e-4, bounded only below (> 0): log, x/÷ 10
    assert (lr.kind, lr.log) == ("float", True)
    assert (lr.low, lr.high) == pytest.approx((1e-5, 1e-3))
    assert space["train.optim.weight_decay"].log
    queries = space["model.num_queries"]  # 150, >= 2: integers from 75 to 300
    assert (queries.kind, queries.low, queries.high) == ("int", 75, 300)
    crop = space["dataset.augmentation.crop_size"]  # [512, 512]: one size for both sides
    assert (crop.repeat, crop.low, crop.high) == (2, 256, 1024)
    assert {"dataset.task_prob.semantic", "dataset.task_prob.panoptic"} <= set(space)
    assert not space["model.loss.no_object_weight"].log
    assert len(POPULAR_PARAMETERS) == 7

    spec = spec_from_dict(
        {
            "automl": {
                "parameters": ["model.dropout", "model.arch", "model.pre_norm", "train.optim.lr"],
                "ranges": {"train.optim.lr": [1e-5, 3e-3], "model.arch": ["mask2former"]},
                "disabled_parameters": ["model.pre_norm"],
            }
        }
    )
    space = {p.key: p for p in search_space(spec)}
    assert list(space) == ["model.dropout", "model.arch", "train.optim.lr"]
    assert (space["model.dropout"].low, space["model.dropout"].high) == (0.0, 1.0)  # ge / le
    assert space["model.arch"].choices == ("mask2former",)
    assert (space["train.optim.lr"].low, space["train.optim.lr"].high) == (1e-5, 3e-3)
    enums = search_space(
        spec_from_dict({"automl": {"parameters": ["model.arch", "model.pre_norm"]}})
    )
    assert [p.choices for p in enums] == [("oneformer", "mask2former"), (False, True)]


@pytest.mark.parametrize(
    "automl, message",
    [
        ({"parameters": ["model.hiden_dim"]}, "'model.hiden_dim' is not a spec key; did you mean"),
        ({"parameters": ["model.backbone"]}, "model.backbone is a string, not a number"),
        ({"parameters": ["dataset.train"]}, "dataset.train is a list, not a number"),
        ({"parameters": ["train.optim.warmup_steps"]}, "give automl.ranges.train.optim.warmup"),
        (
            {"parameters": ["model.dropout"], "ranges": {"model.dropout": [0.5, 2.0]}},
            "automl.ranges.model.dropout: got [0.5, 2.0], the schema allows <= 1.0",
        ),
        (
            {"parameters": ["model.arch"], "ranges": {"model.arch": ["maskformer"]}},
            "automl.ranges.model.arch: 'maskformer' is refused",
        ),
        ({"ranges": {"model.hidden_dim": [16, 64]}}, "automl.ranges.model.hidden_dim: not a"),
    ],
)
def test_bad_parameters_are_refused_with_the_key_named(automl, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        search_space(spec_from_dict({"automl": automl}))


def test_the_command_refuses_before_any_trial(tmp_path, synth_data, tiny_model, capsys):
    spec_file = _spec_file(tmp_path, synth_data, tiny_model, parameters=["model.backbone"])
    assert cli.main(["automl", "-e", str(spec_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("oneseg: spec error: automl.parameters: model.backbone is a string")
    assert not list(_automl_dir(spec_file).glob("trial_*"))


# --------------------------------------------------------------------------- studies


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, synth_data, tiny_model):
    spec_file = _spec_file(
        tmp_path,
        synth_data,
        tiny_model,
        val=True,
        metric="pq",
        max_trials=2,
        parameters=["model.nheads"],
        ranges={"model.nheads": [1, 4]},
    )
    study = _study(spec_file, "maximize")
    study.enqueue_trial({"model.nheads": 3})  # hidden_dim 32 is not divisible by 3 heads
    study.enqueue_trial({"model.nheads": 2})
    assert cli.main(["automl", "-e", str(spec_file)]) == 0

    rows = _table(spec_file)
    assert [(r["trial"], r["state"]) for r in rows] == [("0", "FAIL"), ("1", "COMPLETE")]
    assert "multiple of model.nheads (3)" in rows[0]["note"]  # refused by the spec check
    folder = _automl_dir(spec_file)
    failed = [
        json.loads(x) for x in (folder / "trial_000" / "status.json").read_text().split("\n") if x
    ]
    assert failed[-1]["status"] == "FAILURE" and "model.nheads (3)" in failed[-1]["message"]
    assert (
        yaml.safe_load((folder / "trial_000" / "experiment.yaml").read_text())["model"]["nheads"]
        == 3
    )
    # the complete trial: a real training with a checkpoint, pq reported after each validation
    assert (folder / "trial_001" / "model_latest.ckpt").is_file()
    trials = _study(spec_file, "maximize").get_trials()
    assert sorted(trials[1].intermediate_values) == [1, 2]
    best = load_spec(folder / "best_spec.yaml")
    assert best.model.nheads == 2 and best.results_dir == str(tmp_path / "results")
    for name in ("trials.md", "trials.png"):
        assert (folder / name).stat().st_size > 0
    status = [json.loads(x) for x in (folder / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "SUCCESS"
    assert status[-1]["kpi"]["trials_failed"] == 1 and status[-1]["kpi"]["best_trial"] == 1


def test_hyperband_stops_a_clearly_worse_trial_early(tmp_path, synth_data, tiny_model):
    spec_file = _spec_file(
        tmp_path,
        synth_data,
        tiny_model,
        algorithm="hyperband",
        max_trials=2,
        parameters=["model.loss.mask_weight"],
        ranges={"model.loss.mask_weight": [1.0, 100.0]},
    )
    study = _study(spec_file)
    study.enqueue_trial({"model.loss.mask_weight": 1.0})
    study.enqueue_trial({"model.loss.mask_weight": 100.0})  # a loss many times larger
    assert cli.main(["automl", "-e", str(spec_file)]) == 0

    first, second = _study(spec_file).get_trials()
    assert first.state == optuna.trial.TrialState.COMPLETE and first.last_step == 2
    assert second.state == optuna.trial.TrialState.PRUNED and second.last_step == 1
    assert second.intermediate_values[1] > 3 * first.intermediate_values[1]
    folder = _automl_dir(spec_file)
    assert not (folder / "trial_001" / "model_epoch002.ckpt").exists()  # stopped after epoch 1
    assert [r["state"] for r in _table(spec_file)] == ["COMPLETE", "PRUNED"]


def _wait_for(condition, process: multiprocessing.Process, seconds: float = 120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not process.is_alive():
            pytest.fail(f"the study ended early, exit code {process.exitcode}")
        if condition():
            return
        time.sleep(0.1)
    process.kill()
    pytest.fail("timed out")


def test_a_killed_study_resumes_and_keeps_finished_trials(tmp_path, synth_data, tiny_model):
    spec_file = _spec_file(tmp_path, synth_data, tiny_model, max_trials=3)
    spec_file.write_text(spec_file.read_text().replace("num_epochs: 2", "num_epochs: 3"))
    process = _cli_process(spec_file)
    folder = _automl_dir(spec_file)

    def second_trial_training():
        status = folder / "trial_001" / "status.json"
        return status.is_file() and '"step"' in status.read_text()

    _wait_for(second_trial_training, process)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    before = {t.number: t for t in _study(spec_file).get_trials()}
    assert before[0].state == optuna.trial.TrialState.COMPLETE
    assert before[1].state == optuna.trial.TrialState.RUNNING  # as the dead process left it

    assert cli.main(["automl", "-e", str(spec_file)]) == 0
    after = _study(spec_file).get_trials()
    assert (after[0].value, after[0].params) == (before[0].value, before[0].params)
    rows = _table(spec_file)
    assert [r["state"] for r in rows] == ["COMPLETE", "INTERRUPTED", "COMPLETE", "COMPLETE"]
    assert rows[1]["note"] == "run again as trial 2" and rows[2]["note"] == "re-run of trial 1"
    assert after[2].params == before[1].params
    killed = (folder / "trial_001" / "status.json").read_text().splitlines()
    assert json.loads(killed[-1])["status"] == "FAILURE"
    assert "interrupted" in json.loads(killed[-1])["message"]


def test_two_processes_add_trials_to_one_sqlite_study(tmp_path, synth_data, tiny_model):
    spec_file = _spec_file(tmp_path, synth_data, tiny_model, max_trials=4, seed=-1)
    processes = [_cli_process(spec_file) for _ in range(2)]
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0
    trials = _study(spec_file).get_trials()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert 4 <= len(trials) <= 5  # two processes may both start the last one
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert len(_table(spec_file)) == len(trials)
