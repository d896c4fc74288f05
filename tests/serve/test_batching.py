"""The batch queue alone: batch sizes, tasks kept apart, cancelled requests, draining."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from oneseg.serve.batching import BatchQueue, QueueFull


class Recorder:
    """A predict function that waits for `go` and records the batches it runs."""

    def __init__(self):
        self.batches: list[tuple[int, tuple[str, ...]]] = []
        self.go = threading.Event()

    def __call__(self, images, tasks):
        self.go.wait(10)
        self.batches.append((len(images), tuple(tasks)))
        return [{t: float(image[0, 0, 0]) for t in tasks} for image in images]


def image(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def test_requests_share_batches_up_to_max_batch_and_keep_their_tasks():
    predict = Recorder()
    queue = BatchQueue(predict, max_batch=4, max_wait_ms=50, max_queue=16)
    futures = [queue.submit(image(i), ("semantic",)) for i in range(5)]
    futures.append(queue.submit(image(9), ("panoptic",)))
    queue.start()
    predict.go.set()
    results = [f.result(10) for f in futures]
    queue.stop()
    assert [r.get("semantic", r.get("panoptic")) for r in results] == [0, 1, 2, 3, 4, 9]
    assert predict.batches == [(4, ("semantic",)), (1, ("semantic",)), (1, ("panoptic",))]


def test_full_queue_is_refused_and_cancelled_requests_are_not_run():
    predict = Recorder()
    queue = BatchQueue(predict, max_batch=1, max_wait_ms=0, max_queue=2)
    first, second = (queue.submit(image(i), ("semantic",)) for i in (1, 2))
    with pytest.raises(QueueFull):
        queue.submit(image(3), ("semantic",))
    second.cancel()
    queue.start()
    predict.go.set()
    assert first.result(10) == {"semantic": 1.0}
    queue.stop()
    assert predict.batches == [(1, ("semantic",))]


def test_stop_answers_what_is_queued_and_an_error_reaches_every_request():
    def failing(images, tasks):
        raise RuntimeError("out of memory")

    queue = BatchQueue(failing, max_batch=2, max_wait_ms=0)
    futures = [queue.submit(image(i), ("semantic",)) for i in range(3)]
    queue.start()
    queue.stop(10)
    for future in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(0)
