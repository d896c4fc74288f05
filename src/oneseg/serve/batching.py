"""Requests that arrive close together share one forward.

    queue = BatchQueue(predict, max_batch=4, max_wait_ms=10, max_queue=64)
    queue.start()
    future = queue.submit(image, ("panoptic",))    # concurrent.futures.Future
    results = future.result()                      # dict task -> result of that image
    queue.stop()                                   # finishes what was queued, then returns

One worker thread owns the model: it takes the oldest request, waits up to `max_wait_ms` for
more with the same tasks (up to `max_batch`), runs them as one batch and answers each future.
The event loop only submits and awaits, so inference never blocks it. A request whose future
was cancelled before its batch started (its client gave up) is dropped unrun.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

# predict(images [H, W, 3] uint8 list, tasks) -> one dict task -> result per image
PredictFn = Callable[[list[np.ndarray], Sequence[str]], list[dict]]


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class _Item:
    image: np.ndarray  # [H, W, 3] uint8
    tasks: tuple[str, ...]
    future: Future = field(default_factory=Future)


class BatchQueue:
    """A bounded queue of images and one thread that runs them in batches.

    Arguments:
        predict: runs a batch (e.g. `Predictor.predict`); called only from the worker thread.
        max_batch: images per forward at most.
        max_wait_ms: how long the oldest request waits for company.
        max_queue: requests waiting at most; `submit` raises QueueFull beyond.
        on_batch: called with the size of every batch run (metrics).
    """

    def __init__(
        self,
        predict: PredictFn,
        max_batch: int = 4,
        max_wait_ms: float = 10.0,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.predict = predict
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="oneseg-batches", daemon=True)

    def __len__(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        with self._cond:
            return len(self._items)

    def start(self) -> None:
        self._thread.start()

    def submit(self, image: np.ndarray, tasks: Sequence[str]) -> Future:
        """Queue one image; the future gets its dict task -> result, or the batch's error."""
        item = _Item(image, tuple(tasks))
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._items) >= self.max_queue:
                raise QueueFull(f"{len(self._items)} requests are waiting (serve.max_queue)")
            self._items.append(item)
            self._cond.notify_all()
        return item.future

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = self.predict([item.image for item in batch], batch[0].tasks)
            except BaseException as err:  # every waiting request learns why
                for item in batch:
                    item.future.set_exception(err)
                continue
            for item, result in zip(batch, results):
                item.future.set_result(result)

    def _next_batch(self) -> list[_Item] | None:
        """The oldest request and those of the same tasks that come within max_wait."""
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait
            while not self._stopping:
                if self._count_like(self._items[0].tasks) >= self.max_batch:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._take_like(self._items[0].tasks)

    def _count_like(self, tasks: tuple[str, ...]) -> int:
        return sum(item.tasks == tasks for item in self._items)

    def _take_like(self, tasks: tuple[str, ...]) -> list[_Item]:
        taken, kept = [], deque()
        for item in self._items:
            if item.tasks == tasks and len(taken) < self.max_batch:
                taken.append(item)
            else:
                kept.append(item)
        self._items = kept
        return taken
