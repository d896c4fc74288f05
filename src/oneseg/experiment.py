"""Bookkeeping shared by every action: its results folder, resolved spec and status.json.

`status.json` holds one JSON object per line, as NVIDIA TAO writes it: a STARTED line, RUNNING
lines with progress and KPIs, and a final SUCCESS or FAILURE line carrying the error message.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from oneseg.io import finite_json
from oneseg.spec import dump_spec


class ActionRun:
    """Context manager around one action: `with ActionRun(spec, "train") as run: ...`."""

    def __init__(self, spec, action: str, rank: int | None = None):
        self.spec = spec
        self.action = action
        self.dir = Path(spec.results_dir) / action
        self.rank = _rank_from_env() if rank is None else rank
        self.kpis: dict = {}
        self._start = time.time()

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
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "experiment.yaml").write_text(dump_spec(self.spec))
        self.log("STARTED", f"{self.action} started")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.log("SUCCESS", f"{self.action} finished", kpi=self.kpis)
        else:
            detail = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.log("FAILURE", detail, kpi=self.kpis)
        return False


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
