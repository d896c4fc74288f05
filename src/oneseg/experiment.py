"""Bookkeeping shared by every action: its results folder, resolved spec and status.json.

`status.json` holds one JSON object per line, as NVIDIA TAO writes it: a STARTED line, RUNNING
lines with progress and KPIs, and a final SUCCESS or FAILURE line carrying the error message.

Before anything is written, the folder is checked and locked: a results_dir that is a file, a
folder another run of the same action is writing into (automl excepted: its processes share one
study), or (for training) a folder holding a run of another model is refused with one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import yaml

from oneseg.config import ARCHITECTURE_KEYS
from oneseg.errors import ResultsDirError
from oneseg.io import finite_json
from oneseg.spec import dump_spec

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are not detected
    fcntl = None

LOCK_FILE = ".lock"
# actions whose folder several processes share by design: `oneseg automl` processes on one
# study number their trials through its database and each trial writes its own sub-folder
SHARED_FOLDER_ACTIONS = ("automl",)


class ActionRun:
    """Context manager around one action: `with ActionRun(spec, "train") as run: ...`."""

    def __init__(self, spec, action: str, rank: int | None = None):
        self.spec = spec
        self.action = action
        self.dir = Path(spec.results_dir) / action
        self.rank = _rank_from_env() if rank is None else rank
        self.kpis: dict = {}
        self._start = time.time()
        self._lock = None

    @property
    def status_file(self) -> Path:
        return self.dir / "status.json"

    def log(self, status: str = "RUNNING", message: str = "", **fields) -> None:
        """Append one status line (only rank 0 writes)."""
        if self.rank != 0:
            return
        line = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "action": self.action,
            "status": status,
            "elapsed_s": round(time.time() - self._start, 2),
        }
        if message:
            line["message"] = message
        line.update(fields)
        with open(self.status_file, "a") as out:
            out.write(json.dumps(finite_json(line), default=_jsonable) + "\n")

    def __enter__(self) -> ActionRun:
        if self.rank == 0:
            root = Path(self.spec.results_dir)
            for folder in (root, self.dir):
                if folder.exists() and not folder.is_dir():
                    raise ResultsDirError(f"results_dir: {folder} is a file; give a folder")
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.action not in SHARED_FOLDER_ACTIONS:
                self._lock = _lock_folder(self.dir, self.action)
            try:
                if self.action == "train":
                    _refuse_another_model(self.dir, self.spec)
                (self.dir / "experiment.yaml").write_text(dump_spec(self.spec))
            except BaseException:
                self._release()
                raise
        self.log("STARTED", f"{self.action} started")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is None:
                self.log("SUCCESS", f"{self.action} finished", kpi=self.kpis)
            else:
                detail = "".join(traceback.format_exception_only(exc_type, exc)).strip()
                self.log("FAILURE", detail or exc_type.__name__, kpi=self.kpis)
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None


def _lock_folder(folder: Path, action: str):
    """An open file holding an exclusive lock on `folder`; refuses a folder another process
    holds (two inference runs into one folder would each rewrite the other's JSON files)."""
    if fcntl is None:
        return None
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ResultsDirError(
            f"{folder}: in use by another oneseg {action} run ({holder}); wait for it to end "
            "or use another results_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def _refuse_another_model(folder: Path, spec) -> None:
    """A training folder with a checkpoint resumes; refuse it when the spec's model differs
    from the one trained there (before experiment.yaml is overwritten)."""
    previous = folder / "experiment.yaml"
    if not (folder / "model_latest.ckpt").exists() or not previous.is_file():
        return
    try:
        old = (yaml.safe_load(previous.read_text()) or {}).get("model", {})
    except yaml.YAMLError:
        return
    new = dataclasses.asdict(spec.model)
    differ = [k for k in ARCHITECTURE_KEYS if k in old and old[k] != new[k]]
    if differ:
        shown = ", ".join(f"model.{k}: {old[k]!r} there, {new[k]!r} now" for k in differ[:3])
        raise ResultsDirError(
            f"{folder}: results_dir holds a run of another model ({shown}); use a new "
            "results_dir, or the model settings of that run"
        )


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _rank_from_env() -> int:
    """This process's global rank as the launcher set it (0 when launched by hand); only whether
    it is 0 matters here: rank 0 alone writes."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))
