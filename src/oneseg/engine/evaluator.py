"""PQ, mIoU and mask AP of one model on a dataset, from the same batches and the same GT.

The model runs once per task on each batch; its results are post-processed at each image's
original size and compared with the untransformed annotation of that image:

- panoptic -> PQ / SQ / RQ against the panoptic ground truth (crowd regions as in panopticapi);
- semantic -> confusion matrix against the class of every pixel (void and crowd ignored);
- instance -> COCO mask AP against the non-crowd thing segments, crowd ones as `iscrowd=1`.

What each image adds is kept per image (sparse counts, RLE masks) under its dataset index, so
that images seen twice (a distributed sampler pads the last batch by repeating images) count
once when the processes' states are merged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from oneseg.config import TASKS, ModelConfig
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.label_map import LabelMap
from oneseg.data.records import PanopticAnnotation
from oneseg.inference import model_outputs
from oneseg.metrics import ConfusionMatrix, PanopticQuality, evaluate_segm, masks_to_rle
from oneseg.model.postprocess import postprocess

IGNORE = 255


def semantic_target(annotation: PanopticAnnotation, ignore: int = IGNORE) -> np.ndarray:
    """[H, W] int64 class index of every pixel; void, crowd and unlisted ids -> `ignore`."""
    segment_map = annotation.segment_map.astype(np.int64, copy=False)
    kept = [s for s in annotation.segments if not s.iscrowd]
    target = np.full(segment_map.shape, ignore, dtype=np.int64)
    if not kept:
        return target
    ids = np.array([s.id for s in kept], dtype=np.int64)
    classes = np.array([s.class_index for s in kept], dtype=np.int64)
    order = np.argsort(ids)
    ids, classes = ids[order], classes[order]
    pos = np.minimum(np.searchsorted(ids, segment_map), len(ids) - 1)
    found = ids[pos] == segment_map
    target[found] = classes[pos[found]]
    return target


def instance_ground_truth(
    annotation: PanopticAnnotation, image_id: int, category_ids: list[int]
) -> list[dict]:
    """COCO instance annotations (RLE) of the thing segments of an image; ids set later."""
    things = [s for s in annotation.segments if s.isthing]
    if not things:
        return []
    masks = np.stack([annotation.segment_map == s.id for s in things])  # [N, H, W]
    areas = masks.reshape(len(things), -1).sum(1)
    out = []
    for segment, rle, area in zip(things, masks_to_rle(masks), areas.tolist()):
        if area == 0:
            continue
        out.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[segment.class_index]),
                "segmentation": rle,
                "area": int(area),
                "iscrowd": int(segment.iscrowd),
                "bbox": _mask_box(masks[len(out) if False else things.index(segment)]),
            }
        )
    return out


def _mask_box(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
