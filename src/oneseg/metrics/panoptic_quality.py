"""Panoptic quality (PQ, SQ, RQ) with the definitions of the COCO panoptic API.

PQ of one class is ``sum(IoU of matched pairs) / (TP + FP/2 + FN/2)``; SQ is the mean IoU of the
matched pairs and RQ is ``TP / (TP + FP/2 + FN/2)``, so PQ = SQ * RQ. The rules follow
panopticapi's ``pq_compute``:

- Segment id 0 (``VOID``) is unlabelled. Void pixels of the ground truth are taken out of the
  union: ``union = pred_area + gt_area - intersection - (pred ∩ gt void)``.
- A prediction and a ground-truth segment match when they have the same category and
  IoU > 0.5 (strictly). Above 0.5 a segment can match at most one other, so matching is unique.
- Crowd ground truth (``iscrowd=1``) is never matched and is never a false negative.
- An unmatched prediction is not a false positive when more than half of its area lies on
  ground-truth void plus crowd regions of its own category.
- Classes with TP + FP + FN == 0 are left out of the averages; their per-class values are 0.

Two documented differences from panopticapi, both invisible on well-formed COCO data:
areas of ground-truth segments are counted from the pixels (panopticapi reads the JSON ``area``),
and when an image has several crowd segments of one category all of them count for the
false-positive test (panopticapi keeps the last one listed; COCO has at most one).

All values are fractions in [0, 1]; reports may scale them by 100.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from oneseg.io import read_id_png

VOID = 0


def _lookup(segment_ids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query id in ``segment_ids`` plus one; 0 for VOID, len + 1 for unlisted ids."""
    n = len(segment_ids)
    if n == 0:
        return np.where(query == VOID, 0, 1)
    order = np.argsort(segment_ids)
    sorted_ids = segment_ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, query), n - 1)
    index = np.where(sorted_ids[pos] == query, order[pos] + 1, n + 1)
    index[query == VOID] = 0
    return index


def _pair_counts(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel count of every (gt id, pred id) pair present: one sort of a combined id.

    Returns gt id [M], pred id [M], pixel count [M] over the M pairs present.
    """
    if gt_ids.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    offset = int(pred_ids.max()) + 1
    largest = int(gt_ids.max()) * offset + offset - 1
    if largest >= 2**63:
        raise ValueError("segment ids too large to combine into one 63-bit key")
    # the narrowest key sorts fastest: 32 bits holds the small ids of an in-memory prediction
    key_type = np.uint32 if largest < 2**32 else np.uint64
    # [H*W] gt * offset + pred, cast inside the ufuncs: no converted copies of the inputs
    combined = np.multiply(gt_ids.reshape(-1), offset, dtype=key_type, casting="unsafe")
    np.add(combined, pred_ids.reshape(-1), out=combined, dtype=key_type, casting="unsafe")
    combined.sort()
    starts = np.flatnonzero(np.concatenate(([True], combined[1:] != combined[:-1])))
    pair_id = combined[starts].astype(np.int64)
    count = np.diff(np.append(starts, combined.size))
    return pair_id // offset, pair_id % offset, count


class PanopticQuality:
    """Streaming PQ accumulator over images; mergeable across processes.

    Arguments:
        categories (Mapping[int, bool]): category id -> is a "thing" (False for "stuff").

    State: per-class ``tp``, ``fp``, ``fn`` (int64 [K]) and ``iou`` (float64 [K], the sum of
    the IoUs of matched pairs), in the order of ``category_ids`` (sorted).
    """

    def __init__(self, categories: Mapping[int, bool]):
        self.category_ids = np.array(sorted(categories), dtype=np.int64)
        self.isthing = np.array([bool(categories[c]) for c in self.category_ids], dtype=bool)
        self._index = {int(c): k for k, c in enumerate(self.category_ids)}
        self.reset()

    @classmethod
    def from_coco_categories(cls, categories: Sequence[Mapping]) -> PanopticQuality:
        """From the ``categories`` list of a COCO panoptic JSON (``id``, ``isthing``)."""
        return cls({int(c["id"]): bool(c["isthing"]) for c in categories})

    def reset(self) -> None:
        k = len(self.category_ids)
        self.tp = np.zeros(k, np.int64)
        self.fp = np.zeros(k, np.int64)
        self.fn = np.zeros(k, np.int64)
        self.iou = np.zeros(k, np.float64)

    def _segment_table(self, segments: Sequence[Mapping], kind: str) -> tuple[np.ndarray, ...]:
        """Segment dicts -> ids [S], contiguous class index [S], crowd flag [S]."""
        ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
        crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments], dtype=bool)
        try:
            cls = np.array([self._index[int(s["category_id"])] for s in segments], np.int64)
        except KeyError as err:
            raise ValueError(f"{kind} segment with unknown category_id {err.args[0]}") from None
        if (ids == VOID).any() or len(np.unique(ids)) != len(ids):
            raise ValueError(f"{kind} segment ids must be unique and non-zero, got {ids.tolist()}")
        return ids, cls, crowd

    def update(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping],
    ) -> None:
        """Add one image (see `image_counts` for the arguments)."""
        self.add(self.image_counts(gt_ids, gt_segments, pred_ids, pred_segments))

    def add(self, counts: tuple[np.ndarray, ...]) -> None:
        """Add the counts of one image as `image_counts` returns them."""
        present, tp, fp, fn, iou = counts
        np.add.at(self.tp, present, tp)
        np.add.at(self.fp, present, fp)
        np.add.at(self.fn, present, fn)
        np.add.at(self.iou, present, iou)

    def image_counts(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping],
    ) -> tuple[np.ndarray, ...]:
        """The counts of one image, not added: (classes [M], tp [M], fp [M], fn [M], iou [M])
        over the M classes (indices into `category_ids`) it has a TP, FP or FN of. Small
        enough to keep per image; `add` adds them.

        Arguments:
            gt_ids (np.ndarray): [H, W] non-negative int segment ids, 0 = void (numpy or torch).
            gt_segments (list[dict]): ``id``, ``category_id``, optional ``iscrowd``. Pixels whose
                id is not listed are neither void nor segments (as in panopticapi).
            pred_ids (np.ndarray): [H, W] segment ids, 0 = no prediction.
            pred_segments (list[dict]): ``id``, ``category_id``. Every listed segment must have
                pixels and every non-zero id in ``pred_ids`` must be listed.
        """
        # torch tensors (any device) come to numpy; counting is cheap next to the copy
        gt_ids, pred_ids = (
            np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in (gt_ids, pred_ids)
        )
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"gt shape {gt_ids.shape} != prediction shape {pred_ids.shape}")
        for ids in (gt_ids, pred_ids):
            if ids.size and not np.issubdtype(ids.dtype, np.unsignedinteger) and ids.min() < 0:
                raise ValueError("segment ids must be non-negative")
        gt_seg_ids, gt_cls, gt_crowd = self._segment_table(gt_segments, "ground-truth")
        pred_seg_ids, pred_cls, _ = self._segment_table(pred_segments, "predicted")
        num_gt, num_pred = len(gt_seg_ids), len(pred_seg_ids)

        pair_gt, pair_pred, pair_count = _pair_counts(gt_ids, pred_ids)
        rows = _lookup(gt_seg_ids, pair_gt)  # 0 void, 1..G, G+1 unlisted
        cols = _lookup(pred_seg_ids, pair_pred)  # 0 void, 1..P
        if (cols == num_pred + 1).any():
            unlisted = np.unique(pair_pred[cols == num_pred + 1]).tolist()
            raise ValueError(f"predicted segment ids {unlisted} are in the map but not listed")
        # [G + 2, P + 1] pixel counts: row 0 gt void, last row unlisted gt ids; column 0 pred void
        counts = np.zeros((num_gt + 2) * (num_pred + 1), np.int64)
        np.add.at(counts, rows * (num_pred + 1) + cols, pair_count)
        counts = counts.reshape(num_gt + 2, num_pred + 1)
        pred_area = counts[:, 1:].sum(0)
        if (pred_area == 0).any():
            empty = pred_seg_ids[pred_area == 0].tolist()
            raise ValueError(f"predicted segments {empty} are listed but have no pixels")
        gt_area = counts[1 : num_gt + 1].sum(1)  # includes pixels with no prediction
        inter = counts[1 : num_gt + 1, 1:]
        tp, fp, fn, iou = self._class_counts(
            inter, counts[0, 1:], gt_area, pred_area, gt_cls, gt_crowd, pred_cls
        )
        present = np.flatnonzero(tp + fp + fn)
        return present, tp[present], fp[present], fn[present], iou[present]

    def _class_counts(self, inter, pred_void, gt_area, pred_area, gt_cls, gt_crowd, pred_cls):
        """tp, fp, fn [K] int64 and iou [K] float64 of one image from inter [G, P], pred_void
        [P], gt_area [G], pred_area [P], gt_cls / gt_crowd [G], pred_cls [P]."""
        k = len(self.category_ids)
        union = gt_area[:, None] + pred_area[None, :] - inter - pred_void[None, :]
        iou = inter / np.maximum(union, 1)
        same_class = gt_cls[:, None] == pred_cls[None, :]  # [G, P]
        gt_idx, pred_idx = np.nonzero(same_class & ~gt_crowd[:, None] & (iou > 0.5))
        tp = np.bincount(gt_cls[gt_idx], minlength=k).astype(np.int64)
        iou_sum = np.bincount(gt_cls[gt_idx], weights=iou[gt_idx, pred_idx], minlength=k)

        gt_unmatched = np.ones(len(gt_cls), bool)
        gt_unmatched[gt_idx] = False
        fn = np.bincount(gt_cls[gt_unmatched & ~gt_crowd], minlength=k).astype(np.int64)

        pred_unmatched = np.ones(len(pred_cls), bool)
        pred_unmatched[pred_idx] = False
        on_crowd = (inter * (same_class & gt_crowd[:, None])).sum(0)  # [P] same-class crowd
        ignored = (pred_void + on_crowd) / pred_area > 0.5
        fp = np.bincount(pred_cls[pred_unmatched & ~ignored], minlength=k).astype(np.int64)
        return tp, fp, fn, iou_sum.astype(np.float64)

    def merge(self, other: PanopticQuality) -> PanopticQuality:
        """Add the counts of ``other`` (same categories) into this accumulator; returns self."""
        if not (
            np.array_equal(self.category_ids, other.category_ids)
            and np.array_equal(self.isthing, other.isthing)
        ):
            raise ValueError("cannot merge PanopticQuality accumulators with different categories")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        return self

    def compute(self) -> dict:
        """PQ / SQ / RQ as fractions.

        Returns:
            dict: ``"All"``, ``"Things"``, ``"Stuff"`` -> {"pq", "sq", "rq", "n"} where ``n`` is
            the number of classes averaged (values are 0.0 when n == 0), and ``"per_class"`` ->
            {category_id: {"pq", "sq", "rq", "tp", "fp", "fn"}}.
        """
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        present = denom > 0
        safe_denom = np.where(present, denom, 1.0)
        pq = np.where(present, self.iou / safe_denom, 0.0)
        rq = np.where(present, self.tp / safe_denom, 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        groups = {
            "All": present,
            "Things": present & self.isthing,
            "Stuff": present & ~self.isthing,
        }
        result = {name: _average(pq, sq, rq, group) for name, group in groups.items()}
        result["per_class"] = {
            int(c): {
                "pq": float(pq[k]),
                "sq": float(sq[k]),
                "rq": float(rq[k]),
                "tp": int(self.tp[k]),
                "fp": int(self.fp[k]),
                "fn": int(self.fn[k]),
            }
            for k, c in enumerate(self.category_ids)
        }
        return result


def _average(pq: np.ndarray, sq: np.ndarray, rq: np.ndarray, group: np.ndarray) -> dict:
    n = int(group.sum())
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    return {
        "pq": float(pq[group].mean()),
        "sq": float(sq[group].mean()),
        "rq": float(rq[group].mean()),
        "n": n,
    }


def _evaluate_chunk(categories: dict[int, bool], jobs: list[tuple]) -> PanopticQuality:
    """jobs: (gt_png, gt_segments, pred_png, pred_segments) per image."""
    metric = PanopticQuality(categories)
    for gt_png, gt_segments, pred_png, pred_segments in jobs:
        try:
            metric.update(read_id_png(gt_png), gt_segments, read_id_png(pred_png), pred_segments)
        except ValueError as err:
            raise ValueError(f"{pred_png}: {err}") from None
    return metric


def _load_json(source: str | Path | Mapping) -> Mapping:
    if isinstance(source, Mapping):
        return source
    with open(source) as f:
        return json.load(f)


def _png_folder(json_source: str | Path | Mapping, folder: str | Path | None) -> Path:
    if folder is not None:
        return Path(folder)
    if isinstance(json_source, Mapping):
        raise ValueError("give the PNG folder of a JSON passed as a dict")
    return Path(str(json_source).removesuffix(".json"))


def evaluate_coco_panoptic(
    gt_json: str | Path | Mapping,
    pred_json: str | Path | Mapping,
    gt_folder: str | Path | None = None,
    pred_folder: str | Path | None = None,
    *,
    workers: int = 1,
    chunk_size: int = 4,
) -> PanopticQuality:
    """PQ of COCO panoptic predictions (PNG + JSON) against COCO panoptic ground truth.

    Arguments:
        gt_json, pred_json: paths to (or loaded) COCO panoptic JSON; the prediction JSON needs
            only ``annotations``. Every ground-truth image must have a prediction.
        gt_folder, pred_folder: PNG folders; by default the JSON path without ``.json``
            (the panopticapi convention).
        workers: processes reading and counting images (1 = in this process). Images are cut
            into chunks of ``chunk_size`` whatever ``workers`` is, so the result does not
            depend on ``workers``.

    Returns:
        PanopticQuality: the filled accumulator; call ``.compute()`` for the numbers.
    """
    gt_folder = _png_folder(gt_json, gt_folder)
    pred_folder = _png_folder(pred_json, pred_folder)
    gt, pred = _load_json(gt_json), _load_json(pred_json)
    categories = {int(c["id"]): bool(c["isthing"]) for c in gt["categories"]}
    pred_by_image = {ann["image_id"]: ann for ann in pred["annotations"]}
    jobs = []
    for gt_ann in gt["annotations"]:
        pred_ann = pred_by_image.get(gt_ann["image_id"])
        if pred_ann is None:
            raise ValueError(f"no prediction for image {gt_ann['image_id']}")
        jobs.append(
            (
                gt_folder / gt_ann["file_name"],
                gt_ann["segments_info"],
                pred_folder / pred_ann["file_name"],
                pred_ann["segments_info"],
            )
        )
    chunks = [jobs[i : i + chunk_size] for i in range(0, len(jobs), chunk_size)]
    total = PanopticQuality(categories)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            total.merge(_evaluate_chunk(categories, chunk))
        return total
    # the default start method: fork on Linux, or what the caller set with set_start_method
    with multiprocessing.get_context().Pool(min(workers, len(chunks))) as pool:
        # imap keeps chunk order, so float sums are added in the same order as with workers=1
        for part in pool.imap(partial(_evaluate_chunk, categories), chunks):
            total.merge(part)
    return total
