"""`oneseg automl`: a resumable Optuna study over the spec, run by one process or many.

The study lives in a database (`automl.storage`; SQLite in `results_dir/automl/study.db` unless
given): every process that runs `oneseg automl` with the same storage and study name adds trials
to the same study, until `automl.max_trials` trials are finished over all of them. Rerunning the
command after a kill resumes: finished trials stay, and a trial whose process died (same host:
its pid is gone; another host: its heartbeat stopped) is marked interrupted and queued again with
the same values, resuming from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from oneseg.automl.report import append_status_line, count_finished, retried_numbers, write_reports
from oneseg.automl.space import search_space
from oneseg.automl.trial import make_objective, process_start_time
from oneseg.errors import BadInput
from oneseg.io import pid_running
from oneseg.redact import redact
from oneseg.spec import SpecError, check_inputs

HEARTBEAT_S = 30  # a running trial writes a heartbeat this often ...
GRACE_S = 300  # ... and is taken for dead (on another host) after this long without one
MAX_RETRY = 2  # an interrupted trial is re-run at most this many times
SQLITE_TIMEOUT_S = 120  # a writer waits this long for another process's lock
METRIC_TASK = {"pq": "panoptic", "miou": "semantic", "ap": "instance"}


def run_automl(spec, run) -> None:
    automl = spec.automl
    check_inputs(spec, "train")
    reports = check_search_spec(spec)
    space = search_space(spec)
    folder = Path(run.dir)
    folder.mkdir(parents=True, exist_ok=True)
    url = automl.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    storage = open_storage(url)
    study = load_study(spec, storage, space, reports)
    for number in recover_interrupted(study, storage):
        run.log("RUNNING", message=f"trial {number} was interrupted; queued to run again")
    run.log(
        "RUNNING",
        message=f"study '{automl.study_name}' in {redact(url)}: {automl.algorithm} over "
        + "; ".join(p.describe() for p in space),
    )
    _quiet_libraries()
    objective = make_objective(spec, space, folder)
    start = time.time()
    progress = _Progress(automl.max_trials, automl.metric)
    finished: list[optuna.trial.FrozenTrial] = []
    try:
        while True:
            done = count_finished(study.get_trials(deepcopy=False), running=True)
            progress.update(done, study)
            if done >= automl.max_trials:
                break
            if automl.timeout and time.time() - start >= automl.timeout:
                run.log("RUNNING", message=f"automl.timeout of {automl.timeout} s reached")
                break
            study.optimize(
                objective,
                n_trials=1,
                catch=(Exception,),
                gc_after_trial=True,
                callbacks=[lambda _study, trial: finished.append(trial)],
            )
            kpi = write_reports(study, spec, space, folder)
            trial = finished[-1]
            progress.trial_line(trial)
            run.log("RUNNING", kpi={**kpi, **_trial_kpi(trial, automl.metric)})
    finally:
        progress.close()
        run.kpis.update(write_reports(study, spec, space, folder))
    print(f"automl: {run.kpis.get('trials_finished', 0)} trials; tables and best spec in {folder}")


def check_search_spec(spec) -> int:
    """Refuse a spec the search cannot run; returns the reports a full trial makes (the steps
    the pruner sees): validations, or epochs for `loss`."""
    automl, train = spec.automl, spec.train
    if automl.metric != "loss":
        if not spec.dataset.val.images:
            raise SpecError(
                f"automl.metric: '{automl.metric}' is measured on dataset.val, which is not "
                "given; give dataset.val or use automl.metric=loss"
            )
        task = METRIC_TASK[automl.metric]
        if task not in spec.evaluate.tasks:
            raise SpecError(
                f"evaluate.tasks: got {spec.evaluate.tasks}; automl.metric "
                f"'{automl.metric}' needs '{task}'"
            )
    if train.num_nodes * max(train.num_gpus, train.num_processes_cpu) > 1:
        raise SpecError(
            "train.num_gpus / num_processes_cpu / num_nodes: automl trains each trial in one "
            "process; to run trials in parallel, start `oneseg automl` once per device (e.g. "
            "CUDA_VISIBLE_DEVICES=0, =1, ...) with one automl.storage"
        )
    interval = 1 if automl.metric == "loss" else train.validation_interval
    reports = train.num_epochs // interval
    if automl.algorithm == "hyperband" and reports < 2:
        raise SpecError(
            f"automl.algorithm: hyperband stops a trial between reports of {automl.metric}, "
            f"but train.num_epochs {train.num_epochs} / validation interval {interval} makes "
            f"{reports}; validate more often (train.validation_interval)"
        )
    return reports


def open_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage with heartbeats; SQLite writers wait for each other's locks.
    A URL SQLAlchemy cannot parse, or a file that is not a study database, is refused in one
    line naming `automl.storage` (its password masked) or the file."""
    try:
        return _open_storage(url)
    except sqlalchemy.exc.ArgumentError as err:
        raise SpecError(
            f"automl.storage: got {redact(url)!r}, not a database URL "
            f"({type(err).__name__}); e.g. sqlite:///study.db or postgresql://user@host/db"
        ) from None
    except ImportError:  # Optuna's word for a database without its driver installed
        raise SpecError(
            f"automl.storage: got {redact(url)!r}; its database driver is not installed"
        ) from None
    except sqlalchemy.exc.DatabaseError as err:
        where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact(url)
        reason = str(getattr(err, "orig", None) or type(err).__name__).splitlines()[0]
        raise BadInput(
            f"{where}: not a usable study database ({redact(reason)}); move it away or set "
            "another automl.storage"
        ) from None


def _open_storage(url: str) -> RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if "sqlite" in url else {}
    for attempt in range(6):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=_retry_callback(),
            )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
            # two processes creating the tables of a new database at once: one loses
            if attempt == 5 or "not a database" in str(err):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _retry_callback() -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRY, inherit_intermediate_values=True
        )


def make_sampler(automl, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of `automl.algorithm`. A fixed `automl.seed` is offset by the trials the
    study already holds, so that a resumed study draws new points instead of the first draws
    of the seed again (which a trial before the interruption already searched)."""
    seed = None if automl.seed < 0 else automl.seed + trials_before
    if automl.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, automl.max_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(automl, reports: int) -> optuna.pruners.BasePruner:
    if automl.algorithm != "hyperband":
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(
        min_resource=1, max_resource=reports, reduction_factor=automl.reduction_factor
    )


def load_study(spec, storage: RDBStorage, space, reports: int) -> optuna.Study:
    """Create the study, or load it and refuse one that searched something else."""
    automl = spec.automl
    direction = automl.direction
    if direction == "auto":
        direction = "minimize" if automl.metric == "loss" else "maximize"
    for attempt in range(6):
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=automl.study_name,
                direction=direction,
                sampler=make_sampler(automl),
                pruner=make_pruner(automl, reports),
                load_if_exists=True,
            )
            break
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    trials_before = len(study.get_trials(deepcopy=False))
    if trials_before and automl.seed >= 0:
        study.sampler = make_sampler(automl, trials_before)
    searched = {"metric": automl.metric, "parameters": [p.describe() for p in space]}
    recorded = {key: study.user_attrs.get(key) for key in searched}
    if recorded["metric"] is None:
        for key, value in searched.items():
            study.set_user_attr(key, value)
    elif recorded != searched or study.direction.name.lower() != direction:
        raise SpecError(
            f"automl.study_name: the study '{automl.study_name}' in this storage searched "
            f"{recorded['parameters']} for {recorded['metric']} "
            f"({study.direction.name.lower()}); this spec asks {searched['parameters']} for "
            f"{automl.metric} ({direction}); choose another automl.study_name or results_dir"
        )
    return study


def recover_interrupted(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Mark this host's trials whose process is gone as interrupted (FAIL) and queue every
    interrupted trial not yet queued again, with the same values; returns their numbers."""
    host = socket.gethostname()
    retry = _retry_callback()
    queued = []
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state == TrialState.RUNNING and attrs.get("host") == host:
            if _alive(attrs.get("pid"), attrs.get("pid_start")):
                continue
            try:
                storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue
            trial = storage.get_trial(trial._trial_id)
            if attrs.get("folder"):
                append_status_line(
                    Path(attrs["folder"]) / "status.json",
                    "FAILURE",
                    "interrupted: the process "
                    "running this trial ended without finishing it; queued to run again",
                )
        if (
            trial.state == TrialState.FAIL
            and trial.user_attrs.get("interrupted")
            and trial.number not in retried
        ):
            retry(study, trial)
            queued.append(trial.number)
    return queued


def _alive(pid, started) -> bool:
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False  # a trial recorded under our pid cannot be running: we run none yet
    if Path("/proc/self/stat").is_file():  # Linux: a zombie or a reused pid is not ours
        start = process_start_time(pid)
        if start is None or (started is not None and start != started):
            return False
    return pid_running(pid)


def _trial_kpi(trial: optuna.trial.FrozenTrial, metric: str) -> dict:
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    return {
        "trial": trial.number,
        "state": trial.state.name,
        metric: value,
        "seconds": trial.user_attrs.get("seconds"),
    }


def _quiet_libraries() -> None:
    """Each trial is a training: keep Lightning's and Optuna's chatter out of the progress."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # heartbeats and retries are marked experimental in Optuna since 2.8; their use is settled
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _Progress:
    """Trials finished / planned over every process, and the best metric so far."""

    def __init__(self, total: int, metric: str):
        from tqdm import tqdm

        self.metric = metric
        self.bar = tqdm(total=total, desc="automl", unit="trial", file=sys.stderr)

    def update(self, done: int, study: optuna.Study) -> None:
        self.bar.n = min(done, self.bar.total)
        try:
            best = study.best_trial
            self.bar.set_postfix_str(f"best {self.metric} {best.value:.4g} (trial {best.number})")
        except ValueError:  # no trial complete yet
            pass
        self.bar.refresh()

    def trial_line(self, trial: optuna.trial.FrozenTrial) -> None:
        seconds = trial.user_attrs.get("seconds")
        kpi = _trial_kpi(trial, self.metric)
        value = kpi[self.metric]
        shown = f"{self.metric} {value:.4g}" if value is not None else trial.user_attrs.get("error")
        self.bar.write(f"trial {trial.number}: {trial.state.name.lower()}, {shown}, {seconds} s")

    def close(self) -> None:
        self.bar.close()
