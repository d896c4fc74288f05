"""The record every reader yields, so that target derivation is written once.

Whatever the annotation format (COCO panoptic, COCO instance, semantic label PNGs), a reader lists
`Record`s and turns one into a `PanopticAnnotation`: a map of segment ids [H, W] (0 = void) and
the list of segments those ids stand for. Tasks, crops and flips all work on that one map.
A dataset packs its records into a `RecordStore`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from oneseg.data.label_map import LabelMap
from oneseg.errors import BadInput


class DataError(BadInput, RuntimeError):
    """A sample that cannot be used; the message names the file and the image id."""


@dataclass(frozen=True)
class Segment:
    id: int  # value of this segment's pixels in the segment map
    class_index: int  # contiguous class index into the label map
    isthing: bool
    iscrowd: bool


@dataclass
class PanopticAnnotation:
    segment_map: np.ndarray  # [H, W] int32, 0 = void
    segments: list[Segment]

    @property
    def ignore_mask(self) -> np.ndarray:
        """[H, W] bool: void pixels, crowd pixels and ids no segment claims."""
        return ignore_mask(self.segment_map, self.segments)


@dataclass
class Record:
    image_path: Path
    image_id: int | str
    height: int | None  # as the annotation states it; None where the format has no size
    width: int | None
    source: Any = field(default=None, repr=False)  # what the reader needs to load the labels


class Reader(Protocol):
    """What the dataset needs from a reader of one annotation source."""

    records: list[Record]

    def load_annotation(self, record: Record) -> PanopticAnnotation: ...


def ignore_mask(segment_map: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """[H, W] bool, True where a pixel is no training target: void, crowd or unclaimed."""
    kept = [s.id for s in segments if not s.iscrowd]
    return ~np.isin(segment_map, np.asarray(kept, dtype=segment_map.dtype))


def category_mapper(label_map: LabelMap, contiguous_id: bool) -> Callable[[int], int]:
    """Category id -> class index.

    With `contiguous_id` the index is the category's position in the label map (COCO ids
    1..200 with gaps become 0..K-1). Without it the dataset's ids already are class indices and
    must lie in 0..K-1. Either way an unknown id raises KeyError naming it.
    """
    if contiguous_id:
        return label_map.class_of
    count = len(label_map)

    def identity(category_id: int) -> int:
        if not 0 <= int(category_id) < count:
            raise KeyError(
                f"unknown category id {category_id} (contiguous_id is off: ids "
                f"must be class indices 0..{count - 1})"
            )
        return int(category_id)

    return identity


def load_json(path: str | Path) -> dict:
    """A COCO-style JSON file as a dict; errors name the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories")
    return data


def coco_images(path: str | Path, data: dict) -> dict:
    """The `images` of a COCO JSON by id, refusing what would pair an image with another's
    labels or crash later: a missing `id` or `file_name`, or an id listed twice."""
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise DataError(f"{path}: no `images` list; a COCO JSON lists its images there")
    by_id: dict = {}
    for k, image in enumerate(images):
        missing = [
            key for key in ("id", "file_name") if not isinstance(image, dict) or key not in image
        ]
        if missing:
            raise DataError(f"{path}: images[{k}] has no `{missing[0]}`")
        if image["id"] in by_id:
            first = by_id[image["id"]]["file_name"]
            raise DataError(
                f"{path}: image id {image['id']!r} is listed twice ({first} and "
                f"{image['file_name']}): ids must be unique, or labels go to the wrong image; "
                "`oneseg data check` lists every duplicate"
            )
        by_id[image["id"]] = image
    return by_id


class RecordStore:
    """An immutable sequence of picklable items (records) packed into one byte buffer.

    A COCO annotation file becomes hundreds of thousands of small Python objects. Forked
    data-loader workers share them copy-on-write, but reading a Python object writes its
    reference count, so each worker ends up copying all of them: gigabytes per worker on COCO.
    Pickled into one NumPy buffer they are a handful of objects that nobody writes to.
    """

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
