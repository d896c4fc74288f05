"""The one form of a segmentation result, from post-processing to every reader.

`oneseg.model.postprocess.postprocess` makes them, every runner (`oneseg.runner`) returns them,
and the evaluator, the inference writer, `Predictor` and the exported-graph runtimes read them:

    SemanticResult.labels        [H, W] int32 contiguous class of every pixel
    InstanceResult.masks         [N, H, W] bool (or `QueryMasks` for very large images)
    PanopticResult.segment_ids   [H, W] int32 segment id of every pixel, 0 = void

Arrays are numpy, at the size results were asked for (the original image's). A result knows
its classes through the label map it was made with (`category_ids`, `names`); made without
one (low-level use), the contiguous class index stands for the category id.

`coco_instances` is the one converter from an instance result to COCO result dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from oneseg.data.label_map import LabelMap
from oneseg.metrics.instance import masks_to_rle


def _numpy(array, dtype) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array).astype(dtype, copy=False)


def _category_ids(label_map: LabelMap | None, labels: np.ndarray) -> np.ndarray:
    if label_map is None:
        return labels.astype(np.int64)
    return np.asarray(label_map.category_ids, dtype=np.int64)[labels]


def _names(label_map: LabelMap | None, labels) -> list[str]:
    if label_map is None:
        return [str(int(k)) for k in labels]
    return [label_map.names[int(k)] for k in labels]


class QueryMasks:
    """N full-size masks [H, W] stored once per query: the instance masks of an image too large
    for an [N, H, W] array (detections of one query under several classes share its mask).
    Indexes like that array: `masks[i]` is [H, W] bool, `len(masks)` is N; `np.asarray(masks)`
    builds the whole array.

    Arguments:
        query_masks: [U, H, W] bool, one mask per query kept.
        index: [N] int, the row of `query_masks` of each detection.
    """

    def __init__(self, query_masks: np.ndarray, index: np.ndarray):
        self.query_masks = _numpy(query_masks, bool)
        self.index = _numpy(index, np.int64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.index), *self.query_masks.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.query_masks[self.index[i]]
        return QueryMasks(self.query_masks, self.index[i])

    def __array__(self, dtype=None, copy=None):
        array = self.query_masks[self.index]
        return array if dtype is None else array.astype(dtype)


class BoxedMasks:
    """N masks of a large image, each kept as the crop of its bounding box: the instance masks
    of a tiled image (`oneseg.tiling`), whose objects are small beside the image. Indexes like
    an [N, H, W] bool array: `masks[i]` is [H, W] bool (built on demand), `len(masks)` is N;
    `np.asarray(masks)` builds the whole array; `to_rle()` encodes without it.

    Arguments:
        crops: N arrays [h_i, w_i] bool.
        boxes: [N, 4] int (y0, x0, y1, x1) of each crop in the image.
        size: (H, W) of the image.
    """

    def __init__(self, crops: list[np.ndarray], boxes: np.ndarray, size: tuple[int, int]):
        self.crops = [np.asarray(c, dtype=bool) for c in crops]
        self.boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        self.size = (int(size[0]), int(size[1]))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.crops), *self.size)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            mask = np.zeros(self.size, dtype=bool)
            y0, x0, y1, x1 = self.boxes[i]
            mask[y0:y1, x0:x1] = self.crops[i]
            return mask
        rows = np.arange(len(self))[i]
        return BoxedMasks([self.crops[r] for r in rows], self.boxes[rows], self.size)

    def __array__(self, dtype=None, copy=None):
        array = np.zeros(self.shape, dtype=bool)
        for i, (y0, x0, y1, x1) in enumerate(self.boxes):
            array[i, y0:y1, x0:x1] = self.crops[i]
        return array if dtype is None else array.astype(dtype)

    def to_rle(self) -> list[dict]:
        """N COCO RLE dicts {"size": [H, W], "counts": str}, each from its crop's columns."""
        from pycocotools import mask as mask_util

        height, width = self.size
        out = []
        for crop, (y0, x0, _, _) in zip(self.crops, self.boxes):
            strip = np.zeros((height, crop.shape[1]), dtype=bool)  # the crop's columns
            strip[y0 : y0 + crop.shape[0]] = crop
            flat = strip.T.ravel()  # column-major, as COCO counts run
            bounds = np.flatnonzero(flat[1:] != flat[:-1]) + 1
            runs = np.diff(np.concatenate([[0], bounds, [flat.size]])).tolist()
            if flat.size and flat[0]:
                runs.insert(0, 0)  # counts start with a run of zeros
            runs = runs or [0]
            runs[0] += int(x0) * height
            after = (width - int(x0) - crop.shape[1]) * height
            if len(runs) % 2:  # the last run is of zeros
                runs[-1] += after
            elif after:
                runs.append(after)
            rle = mask_util.frPyObjects({"size": [height, width], "counts": runs}, height, width)
            out.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
        return out


@dataclass
class SemanticResult:
    labels: np.ndarray  # [H, W] int32 contiguous class index of every pixel
    label_map: LabelMap | None = field(default=None, repr=False, compare=False)
    task: ClassVar[str] = "semantic"

    def __post_init__(self):
        self.labels = _numpy(self.labels, np.int32)

    @property
    def category_map(self) -> np.ndarray:
        """[H, W] int32, the dataset's category id of every pixel."""
        return _category_ids(self.label_map, self.labels).astype(np.int32)

    @property
    def classes(self) -> list[dict]:
        """The classes present: label, category_id, name, area (pixels)."""
        count = len(self.label_map) if self.label_map is not None else 0
        areas = np.bincount(self.labels.ravel(), minlength=count)
        present = np.flatnonzero(areas)
        return [
            {"label": int(k), "category_id": int(c), "name": n, "area": int(areas[k])}
            for k, c, n in zip(
                present, _category_ids(self.label_map, present), _names(self.label_map, present)
            )
        ]


@dataclass
class InstanceResult:
    masks: np.ndarray | QueryMasks | BoxedMasks  # [N, H, W] bool (or lazy, for large images)
    scores: np.ndarray  # [N] float32, decreasing class probability
    labels: np.ndarray  # [N] int64 contiguous class index
    queries: np.ndarray | None = None  # [N] int64 query of each detection (None: unknown)
    label_map: LabelMap | None = field(default=None, repr=False, compare=False)
    task: ClassVar[str] = "instance"

    def __post_init__(self):
        if not isinstance(self.masks, QueryMasks | BoxedMasks):
            self.masks = _numpy(self.masks, bool)
        self.scores = _numpy(self.scores, np.float32)
        self.labels = _numpy(self.labels, np.int64)
        if self.queries is not None:
            self.queries = _numpy(self.queries, np.int64)

    @property
    def category_ids(self) -> np.ndarray:
        """[N] int64, the dataset's category id of each detection."""
        return _category_ids(self.label_map, self.labels)

    @property
    def names(self) -> list[str]:
        return _names(self.label_map, self.labels)


@dataclass
class PanopticResult:
    segment_ids: np.ndarray  # [H, W] int32, 0 = void
    # id, label, isthing, score, area; with a label map also category_id and name
    segments: list[dict]
    label_map: LabelMap | None = field(default=None, repr=False, compare=False)
    task: ClassVar[str] = "panoptic"

    def __post_init__(self):
        self.segment_ids = _numpy(self.segment_ids, np.int32)
        if self.label_map is not None:
            for segment in self.segments:
                segment.setdefault("category_id", self.label_map.category_ids[segment["label"]])
                segment.setdefault("name", self.label_map.names[segment["label"]])


Result = SemanticResult | InstanceResult | PanopticResult


def coco_instances(
    image_id: int, result: InstanceResult, category_ids=None, rounded: bool = True
) -> list[dict]:
    """COCO result dicts (image_id, category_id, RLE segmentation, score, bbox) of one image's
    detections, loadable by pycocotools' `COCO.loadRes`.

    Arguments:
        category_ids: the category id of each contiguous class; default the result's own.
        rounded: scores to 6 decimals and boxes to 2, as written to files; False keeps the
            float32 scores as they are (evaluation).
    """
    from pycocotools import mask as mask_util

    rles = masks_to_rle(result.masks)
    if not rles:
        return []
    if category_ids is None:
        ids = result.category_ids
    else:
        ids = np.asarray(category_ids, dtype=np.int64)[result.labels]
    boxes = mask_util.toBbox([{**r, "counts": r["counts"].encode("ascii")} for r in rles])
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "segmentation": rle,
            "score": round(float(score), 6) if rounded else float(score),
            "bbox": [round(float(v), 2) for v in box] if rounded else [float(v) for v in box],
        }
        for rle, score, category_id, box in zip(rles, result.scores, ids, boxes)
    ]
