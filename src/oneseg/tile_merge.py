"""Merging the results of overlapping windows (`oneseg.tiling`) into one result of the image.

Windows arrive row by row, left to right. Each window owns a cell (the pixels nearer to it than
to its neighbours: the cells partition the image).

- Semantic (`SemanticMerger`): per-class scores (or weighted votes) blended with a window weight
  that falls towards the sides a window shares with its neighbours; the label is the arg-max.
- Things, best view first. A window's thing segment that keeps clear of the sides it shares
  with a neighbour is seen whole there: a *whole* candidate. Its *reach* is its distance to
  those sides: how much context the window gave it. Whole candidates are placed farthest reach
  first (ties: higher score). One that mostly lies on objects already placed is the same object
  seen from another window, and is dropped (its score lifts the placed one's if higher).
- Things no window sees whole (larger than a window's middle, or cut by every window) come in
  *pieces*: each window's piece is cut to its cell, and two pieces on both sides of a seam are
  one object when they cover the band the two windows share alike (IoU >= `JOIN_IOU` there).
  A piece whose bulk lies outside its cell and that joins nothing is dropped: the window owning
  those pixels did not find it. Pieces yield to whole objects, one by one: a piece that loses
  more than half its pixels to them was one of them seen cut, and goes with its links.
- Panoptic: the windows vote on each other's whole views (`_Votes`): a view that the windows
  seeing its place with more context see as part of a larger object going on beyond its
  window is a corner, no object; two touching views of one window that the other windows see
  as one segment are one object.
- Panoptic stuff: each stuff class is one segment over the image; a pixel no thing holds takes
  the stuff class of the blended scores (votes of the windows' stuff labels for runners that give
  no scores), so a window that straddles two regions does not decide alone.

Held at a time: the band each window shares with the next window and with the row below, the
candidates' crops, the blend's rows still shared with the next row of windows ([K, size, W]),
the thing maps of the windows a later window still overlaps (panoptic votes: one byte a pixel;
the previous and the current row of windows at half overlap), and [H, W] maps (panoptic: an
int32 map and a one-byte stuff map). Never [Q, H, W].
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np
import torch

from oneseg.model.postprocess import FULL_SIZE_BYTES
from oneseg.results import BoxedMasks, InstanceResult, PanopticResult, SemanticResult

JOIN_IOU = 0.5  # two pieces whose masks agree this well in the shared band are one object
BULK = 0.5  # a piece with less than this share of its area in its window's cell is dropped
SAME = 0.5  # a candidate with more than this share of it on placed objects is one of them
EDGE = 2  # a segment within this many pixels of a shared side is cut there, not whole
DENSE_BYTES = FULL_SIZE_BYTES  # instance masks as one [N, H, W] array up to this, else crops
STRIP_PIXELS = 1 << 15  # pixels of the [H, W] map counted or relabelled at a time


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


def window_weight(window) -> torch.Tensor:
    """[h, w] float32: 1 inside, falling linearly towards each side shared with a neighbour."""

    def ramp(length: int, before: int, after: int) -> torch.Tensor:
        weight = torch.ones(length)
        if before:
            weight[:before] = torch.arange(1, before + 1) / (before + 1)
        if after:
            falling = torch.arange(after, 0, -1) / (after + 1)
            weight[length - after :] = torch.minimum(weight[length - after :], falling)
        return weight

    wy = ramp(window.height, window.top, window.bottom)
    wx = ramp(window.width, window.left, window.right)
    return wy[:, None] * wx[None, :]


class SemanticMerger:
    """Blends per-class scores (or weighted votes) of the windows, one band of rows at a time.

    Arguments:
        size: (H, W) of the image.
        num_classes: K.
        dtype: of the label map.
    """

    def __init__(self, size: tuple[int, int], num_classes: int, dtype=np.int32):
        self.height, self.width = size
        self.num_classes = num_classes
        self.labels = np.zeros(size, dtype=dtype)
        self.scores = torch.zeros(num_classes, 0, self.width)  # rows [self.y0, self.y1)
        self.y0 = 0

    def _advance(self, y0: int, y1: int) -> None:
        """Settle the rows above `y0` (no later window reaches them) and hold rows to `y1`."""
        done = y0 - self.y0
        if done > 0:
            self.labels[self.y0 : y0] = self.scores[:, :done].argmax(0).numpy()
            self.scores = self.scores[:, done:]
            self.y0 = y0
        grow = y1 - (self.y0 + self.scores.shape[1])
        if grow > 0:
            self.scores = torch.cat(
                [self.scores, torch.zeros(self.num_classes, grow, self.width)], 1
            )

    def add(self, window, output) -> None:
        """`output`: [K, h, w] scores, or a `SemanticResult` whose labels vote."""
        self._advance(window.y0, window.y0 + window.height)
        weight = window_weight(window)
        rows = slice(window.y0 - self.y0, window.y0 - self.y0 + window.height)
        view = self.scores[:, rows, window.x0 : window.x0 + window.width]
        if isinstance(output, torch.Tensor):
            view += output.float().cpu() * weight
        else:
            labels = torch.from_numpy(np.asarray(output.labels)).long()
            view.scatter_add_(0, labels[None], weight[None])

    def settle(self) -> np.ndarray:
        """The [H, W] labels, once every window is in."""
        self._advance(self.height, self.height)
        return self.labels

    def result(self, label_map) -> SemanticResult:
        return SemanticResult(self.settle(), label_map=label_map)


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


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of a [h, w] mask's pixels, None when it has none."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if ys.size == 0:
        return None
    return int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1


def _reach(window, box: tuple[int, int, int, int]) -> int | None:
    """Pixels between a segment's box (window coordinates) and the nearest side the window
    shares with a neighbour (sides on the image border do not count); None when the segment
    comes within `EDGE` of such a side: it may go on beyond the window."""
    y0, x0, y1, x1 = box
    gaps = [
        y0 if window.top else None,
        x0 if window.left else None,
        window.height - y1 if window.bottom else None,
        window.width - x1 if window.right else None,
    ]
    gaps = [g for g in gaps if g is not None]
    if any(g < EDGE for g in gaps):
        return None
    return min(gaps, default=max(window.height, window.width))


class _Candidates:
    """Whole segments of the windows: crop, box in the image, score, label, reach, window."""

    def __init__(self):
        self.crops: list[np.ndarray] = []
        self.boxes: list[tuple[int, int, int, int]] = []
        self.scores: list[float] = []
        self.labels: list[int] = []
        self.reach: list[int] = []
        self.window: list[tuple[int, int]] = []

    def offer(self, window, mask: np.ndarray, score, label) -> bool | None:
        """Keep a window's [h, w] segment when it is whole there (True); False when it comes
        near a side the window shares (a piece), None when it is empty."""
        box = _box(mask)
        if box is None:
            return None
        reach = _reach(window, box)
        if reach is None:
            return False
        self.add(window, mask[box[0] : box[2], box[1] : box[3]].copy(), box, score, label, reach)
        return True

    def add(self, window, crop, box, score, label, reach) -> None:
        y0, x0, y1, x1 = box
        self.crops.append(crop)
        self.boxes.append((window.y0 + y0, window.x0 + x0, window.y0 + y1, window.x0 + x1))
        self.scores.append(float(score))
        self.labels.append(int(label))
        self.reach.append(int(reach))
        self.window.append((window.row, window.col))

    def join(self, members: list[int]) -> None:
        """A new candidate: the union of views of one window (their nearest reach to a side,
        their highest score)."""
        boxes = np.asarray([self.boxes[m] for m in members])
        y0, x0 = boxes[:, 0].min(), boxes[:, 1].min()
        crop = np.zeros((boxes[:, 2].max() - y0, boxes[:, 3].max() - x0), bool)
        for m, (by0, bx0, by1, bx1) in zip(members, boxes):
            crop[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] |= self.crops[m]
        self.crops.append(crop)
        self.boxes.append((int(y0), int(x0), int(y0) + crop.shape[0], int(x0) + crop.shape[1]))
        self.scores.append(max(self.scores[m] for m in members))
        self.labels.append(self.labels[members[0]])
        self.reach.append(min(self.reach[m] for m in members))
        self.window.append(self.window[members[0]])

    def best_view_first(self) -> list[int]:
        """Farthest reach first, then higher score, then arrival."""
        return sorted(range(len(self.crops)), key=lambda i: (-self.reach[i], -self.scores[i], i))

    def objects(
        self, step: int, same_label: bool, skip: Container[int] = ()
    ) -> tuple[list[int], list[float], _BoxIndex]:
        """The candidates grouped into objects: each object is its best view (farthest reach),
        and a candidate of another window whose mask matches that view (IoU >= `SAME`; of
        the same class with `same_label`) is the same object seen again. Segments of one
        window are never one object here (`_Votes` joins those the other windows see as one).
        Candidates in `skip` are left out. Returns each object's view (a candidate index) and
        score (the highest of its views: how sure the windows are of it, apart from where they
        saw it), and the views bucketed by box."""
        index, views, scores = _BoxIndex(step), [], []
        areas = [int(np.count_nonzero(c)) for c in self.crops]
        for i in self.best_view_first():
            if i in skip:
                continue
            best, best_iou = None, SAME
            for k in index.near(self.boxes[i]):
                j = views[k]
                if self.window[j] == self.window[i] or (
                    same_label and self.labels[j] != self.labels[i]
                ):
                    continue
                shared = _overlap(self.crops[i], self.boxes[i], self.crops[j], self.boxes[j])
                iou = shared / (areas[i] + areas[j] - shared)
                if iou >= best_iou:
                    best, best_iou = k, iou
            if best is None:
                index.add(len(views), self.boxes[i])
                views.append(i)
                scores.append(self.scores[i])
            else:
                scores[best] = max(scores[best], self.scores[i])
        return views, scores, index


class _BoxIndex:
    """Boxes bucketed on a coarse grid: which placed boxes may overlap a box."""

    def __init__(self, step: int):
        self.step, self.buckets = max(1, step), {}

    def _keys(self, box):
        y0, x0, y1, x1 = box
        for by in range(y0 // self.step, (y1 - 1) // self.step + 1):
            for bx in range(x0 // self.step, (x1 - 1) // self.step + 1):
                yield by, bx

    def add(self, item: int, box) -> None:
        for key in self._keys(box):
            self.buckets.setdefault(key, []).append(item)

    def near(self, box) -> set[int]:
        found: set[int] = set()
        for key in self._keys(box):
            found.update(self.buckets.get(key, ()))
        return found


def _overlap(crop_a, box_a, crop_b, box_b) -> int:
    """Pixels two boxed masks share."""
    y0, x0 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    y1, x1 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    if y0 >= y1 or x0 >= x1:
        return 0
    a = crop_a[y0 - box_a[0] : y1 - box_a[0], x0 - box_a[1] : x1 - box_a[1]]
    b = crop_b[y0 - box_b[0] : y1 - box_b[0], x0 - box_b[1] : x1 - box_b[1]]
    return int(np.count_nonzero(a & b))


def _seen_as(window, ids: np.ndarray, crop: np.ndarray, box) -> tuple[int, int, int]:
    """How a window's map of thing segments ([h, w], 0 = none) shows a boxed mask of the image:
    (the segment holding most of the mask's pixels the window sees, those pixels, pixels seen)."""
    y0, x0 = max(box[0], window.y0), max(box[1], window.x0)
    y1, x1 = min(box[2], window.y0 + window.height), min(box[3], window.x0 + window.width)
    if y0 >= y1 or x0 >= x1:
        return 0, 0, 0
    seen = ids[y0 - window.y0 : y1 - window.y0, x0 - window.x0 : x1 - window.x0][
        crop[y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]]
    ]
    counts = np.bincount(seen, minlength=1)
    counts[0] = 0
    segment = int(counts.argmax())
    return segment, int(counts[segment]), int(seen.size)


class _Votes:
    """The windows' votes on the whole views of the windows they overlap, where one window's
    word is not enough:

    - a *corner*: a window that sees a view's place farther from its shared sides (more
      context) than the view's own window sees there a segment that is not the view (inside the
      view's window they match with IoU < `SAME`) and whose bulk lies outside the view's window.
      The view is a corner of an object that goes on beyond its window, which the model there
      stopped short of the window's side; it is no object of its own.
    - *one object*: two touching whole views of one class from one window, each held mostly by
      one segment of another window that sees them: the same segment (one object) or two.

    Either is taken when more windows say so than not, the view's own window counted against.
    A window's map of thing segments is held until no later window overlaps it."""

    def __init__(self):
        self.held: list[tuple] = []  # (window, [h, w] thing map, its views, its pairs)
        self.corner: dict[int, list[int]] = {}  # view -> [windows: a corner, not]
        self.joined: dict[tuple[int, int], list[int]] = {}  # pair -> [windows: one, two]

    def add(self, window, ids: np.ndarray, views: list[int], whole: _Candidates) -> None:
        """`ids`: the window's [h, w] thing segments (0 = none); `views`: its whole views."""
        self.held = [h for h in self.held if h[0].y0 + h[0].height > window.y0]
        pairs = [
            (i, j)
            for n, i in enumerate(views)
            for j in views[n + 1 :]
            if whole.labels[i] == whole.labels[j] and _touch(whole.boxes[i], whole.boxes[j])
        ]
        self.corner.update((view, [0, 0]) for view in views)
        self.joined.update((pair, [0, 0]) for pair in pairs)
        mine = (window, ids, views, pairs)
        for other in self.held:
            if _intersect(window, other[0]):
                self._vote(other, mine, whole)
                self._vote(mine, other, whole)
        self.held.append(mine)

    def _vote(self, voter, asked, whole: _Candidates) -> None:
        """The voter's votes on the views and pairs of the window `asked`."""
        window, ids, _, _ = voter
        own = asked[0]
        for view in asked[2]:
            y0, x0, y1, x1 = whole.boxes[view]
            box = (y0 - window.y0, x0 - window.x0, y1 - window.y0, x1 - window.x0)
            if min(box[:2]) < 0 or box[2] > window.height or box[3] > window.width:
                continue  # the voter does not see all of it
            reach = _reach(window, box)
            if reach is None or reach <= whole.reach[view]:
                continue  # the voter sees the view's place with no more context
            segment, covered, _ = _seen_as(window, ids, whole.crops[view], whole.boxes[view])
            area = int(np.count_nonzero(whole.crops[view]))
            if 2 * covered <= area:
                continue  # no one segment there
            mask = ids == segment
            inside = np.count_nonzero(
                mask[
                    max(0, own.y0 - window.y0) : own.y0 + own.height - window.y0,
                    max(0, own.x0 - window.x0) : own.x0 + own.width - window.x0,
                ]
            )
            other = covered / (inside + area - covered) < SAME
            beyond = 2 * inside < np.count_nonzero(mask)
            self.corner[view][0 if other and beyond else 1] += 1
        for pair in asked[3]:
            seen_as = []
            for view in pair:
                segment, covered, seen = _seen_as(window, ids, whole.crops[view], whole.boxes[view])
                if segment and 2 * covered > seen:
                    seen_as.append(segment)
            if len(seen_as) == 2:
                self.joined[pair][0 if seen_as[0] == seen_as[1] else 1] += 1

    def corners(self) -> set[int]:
        return {view for view, (yes, no) in self.corner.items() if yes > no + 1}

    def one_object(self) -> list[tuple[int, int]]:
        return [pair for pair, (one, two) in self.joined.items() if one > two + 1]


def _intersect(a, b) -> bool:
    return (
        a.y0 < b.y0 + b.height
        and b.y0 < a.y0 + a.height
        and a.x0 < b.x0 + b.width
        and b.x0 < a.x0 + a.width
    )


def _touch(a, b) -> bool:
    """Two boxes (y0, x0, y1, x1) overlap or meet."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


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
        self.whole = _Candidates()
        self.pieces = _UnionFind()
        self.crops, self.boxes, self.scores, self.labels = [], [], [], []
        self.bulk_inside: list[bool] = []
        self.bands = _Bands()
        self.step = 1
        self.only: InstanceResult | None = None

    def add(self, window, result: InstanceResult) -> None:
        if self.single:
            self.only = result
            return
        self.step = max(self.step, window.height, window.width)
        masks = np.asarray(result.masks, dtype=bool)  # [N, h, w]
        rows, cols = _cell_slices(window)
        ids, labels, cut = [], [], []
        for i, mask in enumerate(masks):
            if self.whole.offer(window, mask, result.scores[i], result.labels[i]) is not False:
                continue  # whole, or empty
            ids.append(self.pieces.add())
            labels.append(int(result.labels[i]))
            cut.append(i)
            core = mask[rows, cols]
            self._add_crop(core, window.cell[0], window.cell[2])
            self.scores.append(float(result.scores[i]))
            self.labels.append(int(result.labels[i]))
            self.bulk_inside.append(bool(core.sum() >= BULK * mask.sum()))
        kept = masks[cut]
        left, above = self.bands.neighbours(window) if self.join else (None, None)
        if left is not None:
            self._join(left, (ids, labels, kept[:, :, : window.left]))
        if above is not None:
            self._join(above, (ids, labels, kept[:, : window.top, :]))
        right = (ids, labels, kept[:, :, window.width - window.right :].copy())
        bottom = (ids, labels, kept[:, window.height - window.bottom :, :].copy())
        self.bands.store(window, right, bottom)

    def _add_crop(self, core: np.ndarray, y_cell: int, x_cell: int) -> None:
        box = _box(core)
        if box is None:
            self.crops.append(np.zeros((0, 0), bool))
            self.boxes.append((0, 0, 0, 0))
            return
        y0, x0, y1, x1 = box
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
        if self.only is not None:
            return self.only
        whole = self.whole
        views, scores, index = whole.objects(self.step, same_label=True)
        crops = [whole.crops[i] for i in views]
        boxes = [whole.boxes[i] for i in views]
        labels = [whole.labels[i] for i in views]
        groups: dict[int, list[int]] = {}
        for piece in range(len(self.crops)):
            groups.setdefault(self.pieces.find(piece), []).append(piece)
        for members in groups.values():  # ordered by their first piece
            if len(members) == 1 and not self.bulk_inside[members[0]]:
                continue
            crop, box = self._union(members)
            label = self.labels[members[0]]
            area = int(np.count_nonzero(crop))
            if not area or any(
                labels[k] == label and _overlap(crop, box, crops[k], boxes[k]) > SAME * area
                for k in index.near(box)
            ):
                continue  # an object placed whole, seen cut here
            crops.append(crop)
            boxes.append(box)
            scores.append(max(self.scores[m] for m in members))
            labels.append(label)
        order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
        masks = BoxedMasks(
            [crops[i] for i in order], np.asarray(boxes).reshape(-1, 4)[order], self.size
        )
        if len(crops) * self.size[0] * self.size[1] <= DENSE_BYTES:
            masks = np.asarray(masks)
        return InstanceResult(
            masks=masks,
            scores=np.asarray(scores, np.float32)[order],
            labels=np.asarray(labels, np.int64)[order],
            queries=None,
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
        single: one window covers the image (its result is taken as it is).
        join: join thing pieces across seams; False leaves each window's cell part on its own.
    """

    def __init__(self, size: tuple[int, int], label_map, single: bool = False, join=True):
        self.size, self.label_map, self.single, self.join = size, label_map, single, join
        self.stuff_classes = [k for k, thing in enumerate(label_map.isthing) if not thing]
        # channel 0: "no stuff here" (a faint vote where a window sees a thing or void)
        dtype = np.uint8 if len(self.stuff_classes) < 255 else np.int32
        self.stuff = SemanticMerger(size, len(self.stuff_classes) + 1, dtype)
        self.segment_ids = np.zeros(size, np.int32)  # thing pieces: 1 + index in these lists
        self.labels, self.scores, self.areas, self.core_areas = [], [], [], []
        self.pieces = _UnionFind()
        self.pieces.add()  # id 0: none
        self.links: list[tuple[int, int]] = []  # the joins made, to redo without lost pieces
        self.whole = _Candidates()
        self.votes = _Votes()
        self.bands = _Bands()
        self.step = 1
        self.only: PanopticResult | None = None

    def _piece(self, segment: dict, area: int, core_area: int) -> int:
        piece = self.pieces.add()
        self.labels.append(int(segment["label"]))
        self.scores.append(float(segment["score"]))
        self.areas.append(area)
        self.core_areas.append(core_area)
        return piece

    def add(self, window, result: PanopticResult, scores: torch.Tensor | None = None) -> None:
        """`scores`: the window's [K, h, w] class scores of the panoptic forward, when the
        runner gives them (they decide stuff); else its stuff segments vote."""
        if self.single:
            self.only = result
            return
        self.step = max(self.step, window.height, window.width)
        local = result.segment_ids  # [h, w]
        rows, cols = _cell_slices(window)
        lookup = np.zeros(int(local.max(initial=0)) + 1, np.int64)  # local id -> piece
        stuff_of = np.zeros(len(lookup), np.int64)  # local id -> stuff channel (0: none)
        channel = {k: c for c, k in enumerate(self.stuff_classes, 1)}
        thing_of = np.zeros(len(lookup), np.uint8 if len(lookup) <= 256 else np.int32)
        first_view = len(self.whole.crops)
        for segment in result.segments:
            sid = int(segment["id"])
            if not segment["isthing"]:
                stuff_of[sid] = channel[int(segment["label"])]
                continue
            thing_of[sid] = sid
            mask = local == sid
            if self.whole.offer(window, mask, segment["score"], segment["label"]) is False:
                core_area = int(np.count_nonzero(mask[rows, cols]))
                lookup[sid] = self._piece(segment, int(np.count_nonzero(mask)), core_area)
        views = list(range(first_view, len(self.whole.crops)))
        self.votes.add(window, thing_of[local], views, self.whole)
        self._add_stuff(window, local, stuff_of, scores)
        pieces = lookup[local]  # [h, w]
        cy0, cy1, cx0, cx1 = window.cell
        self.segment_ids[cy0:cy1, cx0:cx1] = pieces[rows, cols]
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

    def _add_stuff(self, window, local, stuff_of, scores) -> None:
        if scores is not None:
            stuff = scores[self.stuff_classes].float().cpu()
            faint = torch.full((1, *stuff.shape[1:]), 1e-6)
            self.stuff.add(window, torch.cat([faint, stuff]))
        else:
            votes = stuff_of[local]  # [h, w] channel, 0 where a thing or void
            self.stuff.add(window, SemanticResult(votes.astype(np.int64)))

    def _join(self, band_a: np.ndarray, band_b: np.ndarray) -> None:
        """Join thing pieces that cover the shared band alike (IoU >= JOIN_IOU)."""
        a, b = band_a.ravel(), band_b.ravel()
        both = (a > 0) & (b > 0)
        if not both.any():
            return
        count = len(self.labels) + 1
        size_a = np.bincount(a, minlength=count)
        size_b = np.bincount(b, minlength=count)
        pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
        for (pa, pb), n in zip(pairs.T, inter):
            if n / (size_a[pa] + size_b[pb] - n) >= JOIN_IOU:
                self.pieces.union(int(pa), int(pb))
                self.links.append((int(pa), int(pb)))

    def _whole_objects(self) -> tuple[list[int], list[float]]:
        """The whole views grouped into objects (`_Candidates.objects`), once the windows'
        votes are in: corners left out, views of one window that are one object joined."""
        whole = self.whole
        corners = self.votes.corners()
        same = _UnionFind()
        for _ in whole.crops:
            same.add()
        for i, j in self.votes.one_object():
            if i not in corners and j not in corners:
                same.union(i, j)
        groups: dict[int, list[int]] = {}
        for i in range(len(whole.crops)):
            groups.setdefault(same.find(i), []).append(i)
        skip = set(corners)
        for group in groups.values():
            if len(group) > 1:
                whole.join(group)
                skip.update(group)
        views, scores, _ = whole.objects(self.step, same_label=False, skip=skip)
        return views, scores

    def _strips(self):
        step = max(1, STRIP_PIXELS // self.size[1])
        for start in range(0, self.size[0], step):  # no [H, W] int64 temporaries
            yield slice(start, start + step)

    def result(self, label_map=None) -> PanopticResult:
        if self.only is not None:
            return self.only
        label_map = label_map or self.label_map
        seg = self.segment_ids  # pieces now; relabelled in place below
        count = len(self.labels) + 1
        roots = np.asarray([self.pieces.find(p) for p in range(count)], np.int32)
        members = np.bincount(roots, minlength=count)
        core = np.asarray([0, *self.core_areas])
        area = np.asarray([0, *self.areas])
        lone = (members[roots] == 1) & (core < BULK * area)  # bulk outside its cell, unjoined
        roots[lone] = 0
        roots[0] = 0
        before = np.zeros(count, np.int64)  # pixels of each piece
        for rows in self._strips():
            before += np.bincount(seg[rows].ravel(), minlength=count)
        # whole things over pieces, surest first, each in its best view; ids from `count` on
        segments, base = [], count
        whole = self.whole
        views, scores = self._whole_objects()
        for k in sorted(range(len(views)), key=lambda k: (-scores[k], k)):
            i = views[k]
            y0, x0, y1, x1 = whole.boxes[i]
            view = seg[y0:y1, x0:x1]
            crop = whole.crops[i]
            if np.count_nonzero(view[crop] >= base) > SAME * np.count_nonzero(crop):
                continue  # mostly on surer objects: two of them taken for one
            view[crop & (view < base)] = base + len(segments)
            segments.append({"label": whole.labels[i], "isthing": True, "score": scores[k]})
        # each piece keeps what whole things left it, unless that is less than half: a piece
        # of an object placed whole goes, and with it the link it made to other objects
        after = np.zeros(count, np.int64)
        for rows in self._strips():
            strip = seg[rows]
            after += np.bincount(strip[strip < base], minlength=count)
        alive = (after > 0) & (after * 2 >= before) & (roots > 0)
        joined = _UnionFind()
        for _ in range(count):
            joined.add()
        for a, b in self.links:
            if alive[a] and alive[b]:
                joined.union(a, b)
        roots = np.asarray([joined.find(p) if alive[p] else 0 for p in range(count)], np.int32)
        group_id = np.zeros(count, np.int32)
        for root in np.unique(roots[alive]):
            group = np.flatnonzero(roots == root)
            largest = group[np.argmax(core[group])]
            group_id[root] = base + len(segments)
            segments.append(
                {
                    "label": self.labels[largest - 1],
                    "isthing": True,
                    "score": max(self.scores[p - 1] for p in group),
                }
            )
        channels = np.arange(len(self.stuff_classes) + 1, dtype=np.int32)
        stuff_ids = base + len(segments) - 1 + channels  # channel c >= 1 -> its segment id
        segments += [{"label": k, "isthing": False, "score": 1.0} for k in self.stuff_classes]
        stuff = self.stuff.settle()
        piece_id = group_id[roots]  # piece -> its group's id, 0 when dropped
        for rows in self._strips():
            strip = seg[rows]
            free = strip < base
            pieces = piece_id[strip[free]]
            stuff_here = stuff_ids[stuff[rows][free]]
            stuff_here[stuff[rows][free] == 0] = 0
            strip[free] = np.where(pieces > 0, pieces, stuff_here)
        # compact ids 1..n in order, areas counted, empty segments gone
        total = base + len(segments)
        pixels = np.zeros(total, np.int64)
        for rows in self._strips():
            pixels += np.bincount(seg[rows].ravel(), minlength=total)
        new_id = np.zeros(total, np.int32)
        kept = []
        for k, segment in enumerate(segments):
            if pixels[base + k] > 0:
                new_id[base + k] = len(kept) + 1
                kept.append({"id": len(kept) + 1, **segment, "area": int(pixels[base + k])})
        for rows in self._strips():
            seg[rows] = new_id[seg[rows]]
        return PanopticResult(seg, kept, label_map=label_map)
