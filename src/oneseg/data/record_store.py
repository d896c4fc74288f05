"""Records packed into one byte buffer, so that worker processes do not copy them.

A COCO annotation file becomes hundreds of thousands of small Python objects. Forked data-loader
workers share them copy-on-write, but merely reading a Python object writes its reference count,
so every worker ends up with its own copy of all of them: gigabytes per worker on COCO. Pickled
into a single NumPy buffer, the records are a handful of objects that no one writes to.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable

import numpy as np


class RecordStore:
    """An immutable sequence of picklable items stored as bytes."""

    def __init__(self, items: Iterable):
        blobs = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._bytes = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index = index % len(self)
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._bytes[start : int(self._ends[index])].tobytes())

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return int(self._bytes.nbytes + self._ends.nbytes)
