"""COCO mask AP through pycocotools' COCOeval (iouType "segm").

Results are kept as COCO result dicts (``image_id``, ``category_id``, ``segmentation`` as RLE
with ``counts`` a str, ``score``), so they can be written to JSON as they are. Numbers are
fractions in [0, 1] as pycocotools gives them; -1 means no ground truth in that area range.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor on any device
        return x.detach().cpu().numpy()
    return np.asarray(x)


def masks_to_rle(masks) -> list[dict]:
    """Binary masks [N, H, W] -> N COCO RLE dicts {"size": [H, W], "counts": str}.

    Masks that share rows of one array (`oneseg.inference.QueryMasks`) are encoded once."""
    if hasattr(masks, "to_rle"):  # cropped masks of a tiled image (`results.BoxedMasks`)
        return masks.to_rle()
    if hasattr(masks, "query_masks"):  # large: one mask at a time, no [H, W, U] copy
        unique = [masks_to_rle(m[None])[0] for m in masks.query_masks]
        return [dict(unique[j]) for j in masks.index]
    masks = _to_numpy(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools encodes column-major [H, W, N] uint8
    encoded = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return encoded


def load_coco(source: COCO | str | Path | Mapping) -> COCO:
    """A pycocotools COCO from a COCO object, a JSON path or an in-memory dataset dict."""
    if isinstance(source, COCO):
        return source
    if isinstance(source, str | Path):
        with open(source) as f:
            source = json.load(f)
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(source))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _empty_results(coco_gt: COCO) -> COCO:
    """A result set with no detections: COCOeval then scores 0 where there is ground truth."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def evaluate_segm(
    coco_gt: COCO | str | Path | Mapping,
    results: Sequence[Mapping],
    image_ids: Iterable[int] | None = None,
) -> dict:
    """Mask AP of COCO results against ``coco_gt``.

    Arguments:
        coco_gt: ground truth with instance annotations (polygons, RLE, crowd).
        results: COCO result dicts; a ``bbox`` key is dropped so that the area ranges (small,
            medium, large) use the mask area, as detectron2 does.
        image_ids: images to evaluate; all ground-truth images by default.

    Returns:
        dict: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (float) and ``per_class``
        {category_id: AP over IoU 0.50:0.95, area "all", 100 detections; NaN without ground truth}.
    """
    coco_gt = load_coco(coco_gt)
    # loadRes writes area, id and iscrowd into the dicts it gets: give it copies
    results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = {name: float(value) for name, value in zip(_STAT_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall, class, area, max dets]
    out["per_class"] = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out["per_class"][int(category_id)] = float(p.mean()) if p.size else float("nan")
    return out


class InstanceAP:
    """Streaming collector of instance predictions, scored with COCOeval on ``compute()``.

    Arguments:
        coco_gt: a pycocotools COCO, a path to instance annotations JSON, or the dict itself.

    Accumulators of several processes combine with ``merge`` (it concatenates the results).
    """

    def __init__(self, coco_gt: COCO | str | Path | Mapping):
        self.coco_gt = load_coco(coco_gt)
        self.results: list[dict] = []

    def reset(self) -> None:
        self.results = []

    def update(self, image_id: int, masks, scores, category_ids) -> None:
        """Add the predictions of one image.

        Arguments:
            image_id (int): the COCO image id.
            masks: bool [N, H, W] at the image's original size (numpy or torch).
            scores: float [N].
            category_ids: int [N], COCO category ids (not contiguous class indices).
        """
        scores, category_ids = _to_numpy(scores), _to_numpy(category_ids)
        rles = masks_to_rle(masks)
        if not len(rles) == len(scores) == len(category_ids):
            raise ValueError("masks, scores and category_ids must have the same length")
        for rle, score, category_id in zip(rles, scores.tolist(), category_ids.tolist()):
            self.results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_id),
                    "segmentation": rle,
                    "score": float(score),
                }
            )

    def add_results(self, results: Iterable[Mapping]) -> None:
        """Add COCO result dicts that are already encoded."""
        self.results.extend(dict(r) for r in results)

    def merge(self, other: InstanceAP) -> InstanceAP:
        self.results.extend(other.results)
        return self

    def compute(self, image_ids: Iterable[int] | None = None) -> dict:
        """See ``evaluate_segm``."""
        return evaluate_segm(self.coco_gt, self.results, image_ids)
