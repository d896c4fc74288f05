"""A `oneseg serve` process on 127.0.0.1 (a free port), serving the tiny random-weight model.

The panoptic threshold is 0 so that random weights still give segments to look at."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[2] / "src"


class ServerProcess:
    """A running server: its `url`, its process, and what it printed."""

    def __init__(self, overrides: list[str], env: dict | None = None):
        environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oneseg.cli", "serve", *overrides],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"the server ended: {self.process.stderr.read()}")
            found = re.search(r"at (http://\S+)", line)
            if found:
                return found.group(1).rstrip("/")
        raise RuntimeError("the server printed no address in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def serve_overrides(tmp: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        f"results_dir={tmp}",
        f"serve.model={checkpoint}",
        "serve.port=0",
        "serve.max_request_mb=1",
        "dataset.max_image_pixels=1000000",
        "dataset.augmentation.eval_min_size=64",
        "model.object_mask_threshold=0.0",
        "cpu_threads=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    """The server every API test of a module talks to."""
    tmp = tmp_path_factory.mktemp("serve")
    process = ServerProcess(serve_overrides(tmp, tiny_checkpoint, "serve.max_wait_ms=20"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield http


def png_bytes(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def scene_png(synth_data) -> bytes:
    """A validation picture of the synthetic set, as PNG bytes."""
    folder = Path(synth_data["val"]["images"])
    path = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))[0]
    return path.read_bytes()
