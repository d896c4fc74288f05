"""One trial of a study: a real training run through `oneseg.engine.train`, in its own folder.

`results_dir/automl/trial_NNN/` holds what `oneseg train` writes (the resolved spec as
`experiment.yaml`, `status.json`, checkpoints, logs). The searched metric is reported to the
Optuna trial after each validation (each epoch for `loss`); when the pruner says so, training
stops at the end of that epoch and the trial is recorded as pruned.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from pathlib import Path

import lightning as L
import optuna
import yaml

from oneseg.automl.report import retry_history
from oneseg.automl.space import searched_tree, suggest
from oneseg.engine.callbacks import latest_checkpoint
from oneseg.engine.train import run_train
from oneseg.experiment import ActionRun
from oneseg.spec import spec_from_dict, spec_to_dict


def trial_folder(automl_dir: Path, number: int) -> Path:
    return Path(automl_dir) / f"trial_{number:03d}"


class MetricReporter(L.Callback):
    """Reports `metric` to the Optuna trial: after each validation (pq / miou / ap, from the
    evaluator's results) or each training epoch (loss: the epoch's mean training loss), at step
    = validations (epochs) done so far. With `prune`, asks the pruner and stops training early."""

    def __init__(self, trial: optuna.Trial, metric: str, validation_interval: int, prune: bool):
        self.trial = trial
        self.metric = metric
        self.interval = 1 if metric == "loss" else validation_interval
        self.prune = prune
        self.last: tuple[int, float] | None = None  # (step, value)
        self.pruned = False
        self._losses: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.metric == "loss":
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._losses.append(float(loss))

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.metric == "loss" and self._losses:
            self._report(trainer, sum(self._losses) / len(self._losses))

    def on_validation_end(self, trainer, module) -> None:
        if self.metric != "loss" and not trainer.sanity_checking and module.last_metrics:
            self._report(trainer, float(module.last_metrics.get(self.metric, math.nan)))

    def _report(self, trainer, value: float) -> None:
        step = (trainer.current_epoch + 1) // self.interval
        self.last = (step, value)
        self.trial.report(value, step)
        if self.prune and self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


class TrialRun(ActionRun):
    """An `ActionRun` for `train` whose folder is the trial's and whose experiment.yaml is the
    trial's spec as sampled, written before it is checked (so a refused value is on record)."""

    def __init__(self, base_spec, tree: dict, folder: Path):
        super().__init__(base_spec, "train")
        self.dir = Path(folder)
        self.tree = tree

    def __enter__(self) -> TrialRun:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "experiment.yaml").write_text(yaml.safe_dump(self.tree, sort_keys=False))
        self.log("STARTED", "automl trial started")
        return self


def mark_identity(trial: optuna.Trial, folder: Path) -> None:
    """Who runs the trial, so a rerun on this host can tell a dead process's trial. The host
    is written last: another process looks only at trials of its host, and must not see one
    whose pid is not written yet."""
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("pid_start", process_start_time(os.getpid()))
    trial.set_user_attr("folder", str(folder))
    trial.set_user_attr("interrupted", False)
    trial.set_user_attr("error", "")
    trial.set_user_attr("host", socket.gethostname())


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def make_objective(base_spec, space, automl_dir: Path):
    """The function Optuna calls with each trial; returns the trial's final metric."""
    automl = base_spec.automl
    base_tree = spec_to_dict(base_spec)

    def objective(trial: optuna.Trial) -> float:
        folder = trial_folder(automl_dir, trial.number)
        mark_identity(trial, folder)
        start = time.time()
        values = suggest(trial, space)
        tree = searched_tree(base_tree, space, values, automl.metric)
        tree["results_dir"] = str(folder)
        resume = _checkpoint_of_retried(trial)
        if resume:
            tree["train"]["resume_training_checkpoint_path"] = str(resume)
        reporter = MetricReporter(
            trial,
            automl.metric,
            base_spec.train.validation_interval,
            prune=automl.algorithm == "hyperband",
        )
        try:
            with TrialRun(base_spec, tree, folder) as run:
                spec = spec_from_dict(tree)
                run.spec = spec
                if resume:
                    run.log("RUNNING", message=f"re-run of an interrupted trial from {resume}")
                run_train(spec, run, callbacks=[reporter], progress_bar=False)
                if reporter.pruned:
                    run.kpis["pruned_at_step"] = reporter.last[0]
                    run.log("RUNNING", message=f"pruned after {reporter.last[0]} report(s)")
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as err:
            trial.set_user_attr("error", _one_line(err))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.time() - start, 1))
        if reporter.pruned:
            step, value = reporter.last
            raise optuna.TrialPruned(f"{automl.metric} {value:.4g} after {step} report(s)")
        if reporter.last is None or not math.isfinite(reporter.last[1]):
            error = (
                f"no {automl.metric} was measured: no validation ran (train.num_epochs "
                f"{spec.train.num_epochs}, train.validation_interval "
                f"{spec.train.validation_interval})"
                if reporter.last is None
                else f"{automl.metric} is {reporter.last[1]} at the last report"
            )
            trial.set_user_attr("error", error)
            raise RuntimeError(error)
        return reporter.last[1]

    return objective


def _checkpoint_of_retried(trial: optuna.Trial) -> Path | None:
    """The latest checkpoint of the interrupted trial this one re-runs, if any."""
    trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    for previous in reversed(retry_history(trials[trial.number])):
        folder = trials[previous].user_attrs.get("folder") if previous in trials else None
        checkpoint = latest_checkpoint(folder) if folder else None
        if checkpoint is not None:
            return checkpoint
    return None


def _one_line(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip().replace("\n", " ")
