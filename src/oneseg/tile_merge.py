"""Joining the instance and panoptic results of overlapping windows (`oneseg.tiling`).

Windows arrive row by row, left to right. Each window owns a cell (the pixels nearer to it than
to its neighbours); of each of its segments only the part in the cell is kept. A segment whose
bulk (half its area or more) lies outside the cell is dropped unless it joins a neighbour's:
there the neighbour sees it with more context. Two pieces on both sides of a seam are one
object when they cover the band the windows share alike (IoU >= `JOIN_IOU` there): instance
detections of one class, panoptic thing segments of any class (the larger piece names it).
Stuff of one class is one segment over the whole image, as in one window.

Held at a time: the band each window shares with the next window and the row below (pieces'
masks over the band), the kept pieces' crops, and the [H, W] result. Never [Q, H, W].
"""

from __future__ import annotations

import numpy as np

from oneseg.model.postprocess import FULL_SIZE_BYTES
from oneseg.results import BoxedMasks, InstanceResult, PanopticResult

JOIN_IOU = 0.5  # two pieces whose masks agree this well in the shared band are one object
BULK = 0.5  # a piece with less than this share of its area in its window's cell is dropped
DENSE_BYTES = FULL_SIZE_BYTES  # instance masks as one [N, H, W] array up to this, else crops
STRIP_PIXELS = 1 << 17  # pixels of the [H, W] map counted or relabelled at a time


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _cell_slices(window) -> tuple[slice, slice]:
    """The window's cell in window coordinates."""
    cy0, cy1, cx0, cx1 = window.cell
    return slice(cy0 - window.y0, cy1 - window.y0), slice(cx0 - window.x0, cx1 - window.x0)


class _Bands:
    """The band each window shares with the next one in its row and with the one below."""

    def __init__(self):
        self.row, self.left, self.above, self.below = -1, None, {}, {}

    def neighbours(self, window):
        """(left band, band above) stored for `window`, None where it has no such neighbour."""
        if window.row != self.row:
            self.row, self.left, self.above, self.below = window.row, None, self.below, {}
        left = self.left if window.left else None
        above = self.above.pop(window.col, None) if window.top else None
        return left, above

    def store(self, window, right_band, bottom_band) -> None:
        self.left = right_band if window.right else None
        if window.bottom:
            self.below[window.col] = bottom_band


def _greedy_pairs(iou: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) with iou[i, j] >= JOIN_IOU, best first."""
    pairs = []
    iou = iou.copy()
    while iou.size:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        if iou[i, j] < JOIN_IOU:
            break
        pairs.append((int(i), int(j)))
        iou[i, :], iou[:, j] = -1.0, -1.0
    return pairs


class InstanceMerger:
    """Instance detections of the windows -> one `InstanceResult` of the image.

    Arguments:
        size: (H, W) of the image.
        label_map: the classes.
        single: one window covers the image (its result is taken as it is).
        join: join pieces across seams; False leaves each window's cell part on its own.
    """

    def __init__(self, size: tuple[int, int], label_map, single: bool = False, join=True):
        self.size, self.label_map, self.single, self.join = size, label_map, single, join
        self.pieces = _UnionFind()
        self.crops, self.boxes, self.scores, self.labels, self.queries = [], [], [], [], []
        self.bulk_inside: list[bool] = []
        self.bands = _Bands()

    def add(self, window, result: InstanceResult) -> None:
        masks = np.asarray(result.masks, dtype=bool)  # [N, h, w]
        rows, cols = _cell_slices(window)
        area = masks.sum((1, 2))
        core = masks[:, rows, cols]
        core_area = core.sum((1, 2))
        keep = np.ones(len(masks), bool) if self.single else area > 0
        ids, labels = [], result.labels[keep]
        for i in np.flatnonzero(keep):
            ids.append(self.pieces.add())
            self._add_crop(core[i], window.cell[0], window.cell[2])
            self.scores.append(float(result.scores[i]))
            self.labels.append(int(result.labels[i]))
            self.queries.append(-1 if result.queries is None else int(result.queries[i]))
            self.bulk_inside.append(bool(core_area[i] >= BULK * area[i]))
        kept = masks[keep]
        left, above = self.bands.neighbours(window) if self.join else (None, None)
        if left is not None:
            self._join(left, (ids, labels, kept[:, :, : window.left]))
        if above is not None:
            self._join(above, (ids, labels, kept[:, : window.top, :]))
        right = (ids, labels, kept[:, :, window.width - window.right :].copy())
        bottom = (ids, labels, kept[:, window.height - window.bottom :, :].copy())
        self.bands.store(window, right, bottom)

    def _add_crop(self, core: np.ndarray, y_cell: int, x_cell: int) -> None:
        ys, xs = np.flatnonzero(core.any(1)), np.flatnonzero(core.any(0))
        if ys.size == 0:
            self.crops.append(np.zeros((0, 0), bool))
            self.boxes.append((0, 0, 0, 0))
            return
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        self.crops.append(core[y0:y1, x0:x1].copy())
        self.boxes.append((y_cell + y0, x_cell + x0, y_cell + y1, x_cell + x1))

    def _join(self, before, after) -> None:
        """Join pieces of one class that cover the shared band alike."""
        (ids_a, labels_a, band_a), (ids_b, labels_b, band_b) = before, after
        if not len(ids_a) or not len(ids_b):
            return
        flat_a = band_a.reshape(len(ids_a), -1).astype(np.float32)  # [Na, P]
        flat_b = band_b.reshape(len(ids_b), -1).astype(np.float32)  # [Nb, P]
        inter = flat_a @ flat_b.T  # [Na, Nb]
        union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        iou[np.asarray(labels_a)[:, None] != np.asarray(labels_b)[None, :]] = 0.0
        for i, j in _greedy_pairs(iou):
            self.pieces.union(ids_a[i], ids_b[j])

    def result(self, label_map=None) -> InstanceResult:
        groups: dict[int, list[int]] = {}
        for piece in range(len(self.crops)):
            groups.setdefault(self.pieces.find(piece), []).append(piece)
        crops, boxes, scores, labels, queries = [], [], [], [], []
        for members in groups.values():  # ordered by their first piece
            if len(members) == 1 and not self.bulk_inside[members[0]]:
                continue
            crop, box = self._union(members)
            crops.append(crop)
            boxes.append(box)
            scores.append(max(self.scores[m] for m in members))
            labels.append(self.labels[members[0]])
            queries.append(self.queries[members[0]])
        masks = BoxedMasks(crops, np.asarray(boxes).reshape(-1, 4), self.size)
        if len(crops) * self.size[0] * self.size[1] <= DENSE_BYTES:
            masks = np.asarray(masks)
        return InstanceResult(
            masks=masks,
            scores=np.asarray(scores, np.float32),
            labels=np.asarray(labels, np.int64),
            queries=np.asarray(queries, np.int64) if self.single else None,
            label_map=label_map or self.label_map,
        )

    def _union(self, members: list[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        filled = [m for m in members if self.crops[m].size]
        if not filled:
            return np.zeros((0, 0), bool), (0, 0, 0, 0)
        boxes = np.asarray([self.boxes[m] for m in filled])
        y0, x0 = boxes[:, 0].min(), boxes[:, 1].min()
        y1, x1 = boxes[:, 2].max(), boxes[:, 3].max()
        crop = np.zeros((y1 - y0, x1 - x0), bool)
        for m, (by0, bx0, by1, bx1) in zip(filled, boxes):
            crop[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] |= self.crops[m]
        return crop, (int(y0), int(x0), int(y1), int(x1))


class PanopticMerger:
    """Panoptic maps of the windows -> one `PanopticResult` of the image.

    Arguments:
        size: (H, W) of the image.
        label_map: the classes.
        single: one window covers the image.
        join: join thing pieces across seams; False leaves each window's cell part on its own.
    """

    def __init__(self, size: tuple[int, int], label_map, single: bool = False, join=True):
        self.size, self.label_map, self.join = size, label_map, join
        self.segment_ids = np.zeros(size, np.int32)  # ids below: 1 + index in these lists
        self.labels, self.isthing, self.scores, self.areas, self.core_areas = [], [], [], [], []
        self.pieces = _UnionFind()
        self.pieces.add()  # id 0: void
        self.stuff: dict[int, int] = {}  # label -> its one id
        self.bands = _Bands()

    def _piece(self, segment: dict) -> int:
        label = int(segment["label"])
        if not segment["isthing"] and label in self.stuff:
            piece = self.stuff[label]
            self.scores[piece - 1] = max(self.scores[piece - 1], float(segment["score"]))
            return piece
        piece = self.pieces.add()
        self.labels.append(label)
        self.isthing.append(bool(segment["isthing"]))
        self.scores.append(float(segment["score"]))
        self.areas.append(0)
        self.core_areas.append(0)
        if not segment["isthing"]:
            self.stuff[label] = piece
        return piece

    def add(self, window, result: PanopticResult) -> None:
        local = result.segment_ids  # [h, w]
        lookup = np.zeros(int(local.max(initial=0)) + 1, np.int64)  # local id -> piece
        for segment in result.segments:
            lookup[int(segment["id"])] = self._piece(segment)
        pieces = lookup[local]  # [h, w]
        rows, cols = _cell_slices(window)
        cy0, cy1, cx0, cx1 = window.cell
        self.segment_ids[cy0:cy1, cx0:cx1] = pieces[rows, cols]
        count = len(self.labels) + 1
        area = np.bincount(pieces.ravel(), minlength=count)
        core = np.bincount(pieces[rows, cols].ravel(), minlength=count)
        for piece in np.flatnonzero(area[1:]) + 1:
            self.areas[piece - 1] += int(area[piece])
            self.core_areas[piece - 1] += int(core[piece])
        left, above = self.bands.neighbours(window) if self.join else (None, None)
        if left is not None:
            self._join(left, pieces[:, : window.left])
        if above is not None:
            self._join(above, pieces[: window.top, :])
        self.bands.store(
            window,
            pieces[:, window.width - window.right :].copy(),
            pieces[window.height - window.bottom :, :].copy(),
        )

    def _join(self, band_a: np.ndarray, band_b: np.ndarray) -> None:
        """Join thing pieces that cover the shared band alike (IoU >= JOIN_IOU)."""
        a, b = band_a.ravel(), band_b.ravel()
        things = np.asarray([False, *self.isthing])
        both = things[a] & things[b]
        if not both.any():
            return
        size_a = np.bincount(a, minlength=len(things))
        size_b = np.bincount(b, minlength=len(things))
        pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
        for (pa, pb), n in zip(pairs.T, inter):
            if n / (size_a[pa] + size_b[pb] - n) >= JOIN_IOU:
                self.pieces.union(int(pa), int(pb))

    def result(self, label_map=None) -> PanopticResult:
        count = len(self.labels) + 1
        roots = np.asarray([self.pieces.find(p) for p in range(count)])
        members = np.bincount(roots, minlength=count)
        core = np.asarray([0, *self.core_areas])
        area = np.asarray([0, *self.areas])
        # a thing seen by one window only, whose bulk lies outside that window's cell
        lone = (members[roots] == 1) & (core < BULK * area) & np.asarray([False, *self.isthing])
        roots[lone] = 0
        roots[0] = 0
        strip = max(1, STRIP_PIXELS // self.size[1])
        per_piece = np.zeros(count, np.int64)
        for start in range(0, self.size[0], strip):  # no [H, W] int64 copy
            per_piece += np.bincount(
                self.segment_ids[start : start + strip].ravel(), minlength=count
            )
        pixels = np.bincount(roots, weights=per_piece, minlength=count).astype(np.int64)
        kept = [r for r in range(1, count) if roots[r] == r and pixels[r] > 0]
        new_id = np.zeros(count, np.int32)
        new_id[kept] = np.arange(1, len(kept) + 1)
        lookup = new_id[roots]
        for start in range(0, self.size[0], strip):  # in place: no second [H, W] map
            rows = self.segment_ids[start : start + strip]
            rows[...] = lookup[rows]
        segments = []
        for root in kept:
            group = np.flatnonzero(roots == root)
            largest = group[np.argmax(core[group])]
            label = self.labels[largest - 1]
            segments.append(
                {
                    "id": int(new_id[root]),
                    "label": label,
                    "isthing": bool(self.isthing[largest - 1]),
                    "score": max(self.scores[p - 1] for p in group),
                    "area": int(pixels[root]),
                }
            )
        return PanopticResult(self.segment_ids, segments, label_map=label_map or self.label_map)
