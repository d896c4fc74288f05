"""The app's own limits, in process with a stand-in model: timeout (504), full queue (503)."""

from __future__ import annotations

import threading
import time

import numpy as np
from fastapi.testclient import TestClient

from oneseg.serve.app import ServeLimits, create_app
from oneseg.serve.batching import BatchQueue
from tests.serve.conftest import png_bytes

INFO = {"version": "test", "tasks": ["semantic"]}
PICTURE = png_bytes(np.full((16, 16, 3), 90, np.uint8))


def limits(timeout_s: float) -> ServeLimits:
    return ServeLimits(
        max_request_bytes=2**20, max_image_pixels=10**6, min_image_side=8, timeout_s=timeout_s
    )


class SlowModel:
    """Answers after `release` is set; counts the images it ran."""

    def __init__(self):
        self.release = threading.Event()
        self.ran = 0

    def __call__(self, images, tasks):
        self.release.wait(10)
        self.ran += len(images)
        raise RuntimeError("a stand-in model has no results")


def test_a_request_past_its_timeout_gets_504_and_is_not_run():
    model = SlowModel()
    queue = BatchQueue(model, max_batch=1, max_wait_ms=0, max_queue=8)
    with TestClient(create_app(INFO, queue, limits(timeout_s=0.3))) as client:
        # the first request holds the model; the second waits in the queue past its time
        first = threading.Thread(target=_post, args=(client,))
        first.start()
        time.sleep(0.1)
        late = _post(client)
        assert late.status_code == 504
        assert late.json() == {"error": "no answer within serve.timeout_s = 0.3 s"}
        model.release.set()
        first.join(10)
    assert model.ran == 1  # the timed-out request was dropped unrun


def test_a_full_queue_gets_503():
    model = SlowModel()
    queue = BatchQueue(model, max_batch=1, max_wait_ms=0, max_queue=1)
    with TestClient(create_app(INFO, queue, limits(timeout_s=5))) as client:
        waiting = [threading.Thread(target=_post, args=(client,)) for _ in range(2)]
        for thread in waiting:  # one runs (blocked), one waits: the queue is full
            thread.start()
            time.sleep(0.2)
        busy = _post(client)
        assert busy.status_code == 503 and "serve.max_queue" in busy.json()["error"]
        model.release.set()
        for thread in waiting:
            thread.join(10)
        failed = _post(client)
        assert failed.status_code == 500 and "stand-in" in failed.json()["error"]


def _post(client):
    return client.post("/v1/segment?task=semantic", content=PICTURE)
