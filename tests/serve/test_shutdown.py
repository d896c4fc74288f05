"""Serving safely: the API key, the loopback rule, and SIGTERM with requests in flight."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.serve.conftest import SRC, ServerProcess, serve_overrides


def test_api_key_is_required_when_set(tmp_path, tiny_checkpoint, scene_png):
    server = ServerProcess(serve_overrides(tmp_path, tiny_checkpoint, "serve.api_key=s3cret"))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for headers in ({}, {"X-API-Key": "wrong"}):
                response = client.post("/v1/segment", content=scene_png, headers=headers)
                assert response.status_code == 401
                assert response.json() == {"error": "missing or wrong X-API-Key header"}
                assert client.get("/v1/model", headers=headers).status_code == 401
            good = client.post(
                "/v1/segment?task=semantic", content=scene_png, headers={"X-API-Key": "s3cret"}
            )
            assert good.status_code == 200
            assert client.get("/healthz").json()["api_key_required"] is True
    finally:
        assert server.stop() == 143


def test_binding_beyond_loopback_needs_a_key(tmp_path, tiny_checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "oneseg.cli", "serve"]
        + serve_overrides(tmp_path, tiny_checkpoint, "serve.host=0.0.0.0"),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "serve.host" in result.stderr and "ONESEG_API_KEY" in result.stderr


def test_sigterm_answers_every_request_in_flight(tmp_path, tiny_checkpoint, scene_png):
    # one image per forward at 256 px: eight requests take a few seconds to answer
    server = ServerProcess(
        serve_overrides(
            tmp_path, tiny_checkpoint, "serve.max_batch=1", "dataset.augmentation.eval_min_size=256"
        )
    )
    answers: list[tuple[int, float]] = []

    def ask():
        with httpx.Client(timeout=120) as client:
            response = client.post(f"{server.url}/v1/segment?task=all", content=scene_png)
            answers.append((response.status_code, time.monotonic()))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        _wait_for_queue(server.url, depth=3)
        signalled = time.monotonic()
        code = server.stop(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
    finally:
        server.stop(signal.SIGKILL)  # only if a step above failed before the process ended
    assert code == 143
    assert sorted(status for status, _ in answers) == [200] * 8
    assert sum(at > signalled for _, at in answers) >= 3  # answered after the signal


def _wait_for_queue(url: str, depth: int, timeout: float = 30.0) -> None:
    """Until at least `depth` requests wait in the server's queue (or `timeout`)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            metrics = client.get(f"{url}/metrics").text
            if float(re.search(r"^oneseg_queue_depth (\S+)", metrics, re.M).group(1)) >= depth:
                return
            time.sleep(0.02)
