"""Tiled inference: one window covering the image gives the untiled result exactly; objects
across seams come back whole and once; memory stays at the size of a window; ONNX runs too.

The seam tests use a stand-in network whose answer is known on any window: each query finds
the pixels of one colour (see `ColourModel`), as a perfect model would segment flat objects."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from oneseg import tile_merge, tiling
from oneseg.data.label_map import LabelMap
from oneseg.model.oneformer import Prediction
from oneseg.model.postprocess import PostprocessConfig
from oneseg.predictor import Predictor
from oneseg.results import BoxedMasks
from oneseg.runner import TorchRunner
from oneseg.tiling import plan_windows, run_tiled

TASKS = ("semantic", "instance", "panoptic")
CATEGORIES = [
    {"id": 1, "name": "ground", "isthing": 0},
    {"id": 2, "name": "box", "isthing": 1},
    {"id": 3, "name": "ball", "isthing": 1},
]
BACKGROUND = (40, 40, 40)
# thresholds at which the random tiny model keeps several panoptic segments
LOW_THRESHOLDS = PostprocessConfig(object_mask_threshold=0.3, overlap_threshold=0.3, topk=12)


class ColourModel(nn.Module):
    """Stands in for the network on images of flat colours: query q says "class labels[q]" with
    certainty and its mask is where the pixel has colour colours[q] (logit +20, else -20), at
    the input resolution. On any window it gives what a perfect model sees there: the objects,
    cut by the window's border. Records the input size of every call."""

    def __init__(self, colours: list[tuple[int, int, int]], labels: list[int], num_classes: int):
        super().__init__()
        self.colours = torch.tensor(colours, dtype=torch.int16)  # [Q, 3]
        self.labels = torch.tensor(labels)
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(1))
        self.inputs: list[tuple[int, ...]] = []

    def predict(self, images, tasks, image_sizes, precision="fp32"):
        self.inputs.append(tuple(images.shape))
        pixels = images.to(torch.int16)[:, None]  # [B, 1, 3, H, W]
        same = (pixels == self.colours[None, :, :, None, None]).all(2)  # [B, Q, H, W]
        masks = torch.where(same, 20.0, -20.0)
        logits = torch.full((len(images), len(self.labels), self.num_classes + 1), -10.0)
        logits[:, torch.arange(len(self.labels)), self.labels] = 10.0
        out = {"pred_logits": logits, "pred_masks": masks}
        return Prediction({t: out for t in tasks}, image_sizes, tuple(images.shape[-2:]))


def scene(height: int, width: int, boxes: list[tuple[int, int, int, int, int]]):
    """An image of flat boxes (y0, x0, y1, x1, label) on a ground, its model and the truth:
    ([H, W, 3] uint8, ColourModel, [H, W] object index (0 = ground), labels of the objects)."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND
    truth = np.zeros((height, width), np.int32)
    colours, labels = [BACKGROUND], [0]
    for k, (y0, x0, y1, x1, label) in enumerate(boxes, 1):
        colour = (k % 256, 100 + k // 256, 77)  # one per object
        image[y0:y1, x0:x1] = colour
        truth[y0:y1, x0:x1] = k
        colours.append(colour)
        labels.append(label)
    return image, ColourModel(colours, labels, len(CATEGORIES)), truth, labels


def seam_boxes(height: int, width: int, size: int, overlap: int):
    """Boxes placed across the seams of the window grid: on vertical and horizontal seams, on
    corners (four windows), inside shared bands, and one longer than a window."""
    rows = plan_windows(height, width, size, overlap)
    seams_y = [w.cell[1] for w in (r[0] for r in rows[:-1])]
    seams_x = [w.cell[3] for w in rows[0][:-1]]
    boxes = []
    for i, sx in enumerate(seams_x):
        boxes.append((8, sx - 9, 20, sx + 6, 1 + i % 2))  # across a vertical seam
    for i, sy in enumerate(seams_y):
        boxes.append((sy - 5, 4, sy + 11, 14, 2 - i % 2))  # across a horizontal seam
    for sy, sx in zip(seams_y, seams_x):
        boxes.append((sy - 6, sx - 7, sy + 5, sx + 4, 1))  # on a corner
    boxes.append((height - 14, 20, height - 4, width - 20, 2))  # through every window of a row
    boxes.append((seams_y[0] + 20, seams_x[0] - 3, seams_y[0] + 24, seams_x[0] + 2, 2))  # small
    return boxes


@pytest.fixture(scope="module")
def label_map() -> LabelMap:
    return LabelMap.from_categories(CATEGORIES)


def _objects_found(truth: np.ndarray, masks: list[np.ndarray]) -> dict[int, list[int]]:
    """GT object -> the predicted masks that cover at least 10% of it."""
    found: dict[int, list[int]] = {k: [] for k in range(1, int(truth.max()) + 1)}
    for i, mask in enumerate(masks):
        for k in found:
            part = truth == k
            if (mask & part).sum() >= 0.1 * part.sum():
                found[k].append(i)
    return found


def _check_seams(image, model, truth, labels, label_map, size, overlap, join=True):
    runner = TorchRunner(model, label_map, tasks=TASKS)
    results = run_tiled(runner, image, TASKS, size, overlap, batch_size=3, join=join)
    assert len(plan_windows(*truth.shape, size, overlap)) > 1
    panoptic = results["panoptic"]
    things = [s for s in panoptic.segments if s["isthing"]]
    thing_masks = [panoptic.segment_ids == s["id"] for s in things]
    instance = results["instance"]
    confident = np.flatnonzero(instance.scores > 0.5)
    instance_masks = [np.asarray(instance.masks[int(i)]) for i in confident]
    thing_labels = [s["label"] for s in things]
    instance_labels = instance.labels[confident].tolist()
    for masks, predicted in ((thing_masks, thing_labels), (instance_masks, instance_labels)):
        found = _objects_found(truth, masks)
        assert all(len(v) == 1 for v in found.values()), f"split or missed: {found}"
        assert len(masks) == len(found)  # none duplicated
        for k, (i,) in found.items():
            assert np.array_equal(masks[i], truth == k), k  # whole, to the pixel
            assert predicted[i] == labels[k]
    semantic = np.asarray(labels)[truth]
    np.testing.assert_array_equal(results["semantic"].labels, semantic)
    ground = [s for s in panoptic.segments if not s["isthing"]]
    assert (
        len(ground) == 1 and (panoptic.segment_ids == ground[0]["id"]).sum() == (truth == 0).sum()
    )


def test_objects_across_seams_are_neither_split_nor_duplicated(label_map):
    size, overlap = 64, 16
    boxes = seam_boxes(150, 210, size, overlap)
    image, model, truth, labels = scene(150, 210, boxes)
    _check_seams(image, model, truth, labels, label_map, size, overlap)


@pytest.mark.parametrize("switch", ["join=False", "JOIN_IOU above 1"])
def test_without_joining_the_seam_check_fails(label_map, monkeypatch, switch):
    """The seam check can fail: with joining switched off, objects come back in pieces."""
    if switch != "join=False":
        monkeypatch.setattr(tile_merge, "JOIN_IOU", 2.0)
    size, overlap = 64, 16
    image, model, truth, labels = scene(150, 210, seam_boxes(150, 210, size, overlap))
    with pytest.raises(AssertionError, match="split or missed"):
        _check_seams(
            image, model, truth, labels, label_map, size, overlap, switch == "JOIN_IOU above 1"
        )


class EdgeShyModel(ColourModel):
    """A ColourModel that sees less near a window's sides, as a real model does: an object
    whose box comes within `SHY` pixels of the window's border loses its outer ring of pixels
    (and it is surer of it: score alone cannot tell the better view). Seen from the middle of
    some window, each object is exact."""

    SHY = 6

    def predict(self, images, tasks, image_sizes, precision="fp32"):
        prediction = super().predict(images, tasks, image_sizes, precision)
        out = prediction.outputs[tasks[0]]
        masks = out["pred_masks"] > 0  # [B, Q, H, W]
        for b, (height, width) in enumerate(image_sizes):
            for q in range(1, masks.shape[1]):  # query 0: the ground
                ys, xs = torch.nonzero(masks[b, q, :height, :width], as_tuple=True)
                if not len(ys):
                    continue
                gaps = (ys.min(), xs.min(), height - 1 - ys.max(), width - 1 - xs.max())
                if min(int(g) for g in gaps) < self.SHY:
                    m = masks[b, q]
                    inner = m.clone()
                    inner[1:] &= m[:-1]
                    inner[:-1] &= m[1:]
                    inner[:, 1:] &= m[:, :-1]
                    inner[:, :-1] &= m[:, 1:]
                    out["pred_masks"][b, q] = torch.where(inner, 20.0, -20.0)
                    out["pred_logits"][b, q, self.labels[q]] = 14.0
        return prediction


def _edge_shy_scene():
    """12-pixel boxes anywhere on a 150 x 210 image of 64-pixel windows sharing half (off
    the image's border, where every window would see them shyly)."""
    rng = np.random.default_rng(4)
    boxes, taken = [], np.zeros((150, 210), bool)
    while len(boxes) < 24:
        y, x = int(rng.integers(8, 130)), int(rng.integers(8, 190))
        if not taken[max(0, y - 2) : y + 14, max(0, x - 2) : x + 14].any():
            taken[y : y + 12, x : x + 12] = True
            boxes.append((y, x, y + 12, x + 12, int(rng.integers(1, 3))))
    image, colour_model, truth, labels = scene(150, 210, boxes)
    model = EdgeShyModel(colour_model.colours.tolist(), labels, len(CATEGORIES))
    return image, model, truth, labels


def test_each_object_is_taken_from_its_best_view(label_map):
    """With windows sharing half their side, every small object lies well inside some window;
    the merge takes it from there, so it comes back exact although most windows see it
    eroded (and scores the eroded view higher, so a choice by score would not do)."""
    image, model, truth, labels = _edge_shy_scene()
    _check_seams(image, model, truth, labels, label_map, 64, 32)


def test_without_best_view_the_eroded_views_show(label_map, monkeypatch):
    """The check above can fail: placing whole segments by score instead."""

    def by_score(self):
        return sorted(range(len(self.crops)), key=lambda i: -self.scores[i])

    monkeypatch.setattr(tile_merge._Candidates, "best_view_first", by_score)
    image, model, truth, labels = _edge_shy_scene()
    with pytest.raises(AssertionError):
        _check_seams(image, model, truth, labels, label_map, 64, 32)


def _check_panoptic(image, model, truth, label_map, size, overlap):
    """Each object of the truth is one panoptic segment, exact to the pixel."""
    runner = TorchRunner(model, label_map, tasks=("panoptic",))
    panoptic = run_tiled(runner, image, ["panoptic"], size, overlap, batch_size=3)["panoptic"]
    masks = [panoptic.segment_ids == s["id"] for s in panoptic.segments if s["isthing"]]
    found = _objects_found(truth, masks)
    assert all(len(v) == 1 for v in found.values()), f"split or missed: {found}"
    assert len(masks) == len(found), f"{len(masks)} segments for {len(found)} objects"
    for k, (i,) in found.items():
        assert np.array_equal(masks[i], truth == k), k


class SplittingModel(ColourModel):
    """A ColourModel that splits object `split` into two segments of its class (its left two
    thirds and the rest, the latter by the last query) in the window that sees it best: where
    it keeps `CLEAR` pixels from every side. Every other window sees it as one."""

    CLEAR = 16
    split = 1

    def predict(self, images, tasks, image_sizes, precision="fp32"):
        prediction = super().predict(images, tasks, image_sizes, precision)
        masks = prediction.outputs[tasks[0]]["pred_masks"]  # [B, Q, H, W]
        for b, (height, width) in enumerate(image_sizes):
            ys, xs = torch.nonzero(masks[b, self.split, :height, :width] > 0, as_tuple=True)
            if not len(ys):
                continue
            gaps = (ys.min(), xs.min(), height - 1 - ys.max(), width - 1 - xs.max())
            if min(int(g) for g in gaps) >= self.CLEAR:
                cut = int(xs.min()) + 2 * (int(xs.max()) - int(xs.min()) + 1) // 3
                masks[b, -1, :, cut:] = masks[b, self.split, :, cut:]
                masks[b, self.split, :, cut:] = -20.0
        return prediction


def _split_scene():
    """A 12-pixel box on a 150 x 210 image of 64-pixel windows sharing half: 20 pixels from
    the sides of window (1, 1), 3 from those of its neighbours, cut by the others."""
    rows = plan_windows(150, 210, 64, 32)
    y, x = rows[1][1].y0 + 20, rows[1][1].x0 + 20
    image, colour_model, truth, labels = scene(150, 210, [(y, x, y + 12, x + 12, 1)])
    colours = [*colour_model.colours.tolist(), (255, 255, 255)]  # the last: no pixel's colour
    model = SplittingModel(colours, [*labels, labels[1]], len(CATEGORIES))
    return image, model, truth


def test_an_object_one_window_splits_is_one_when_the_others_see_one(label_map):
    """The window that sees an object best gives it as two segments, each whole there; the
    windows around it see one segment there (one of them cut): the object comes back one."""
    image, model, truth = _split_scene()
    _check_panoptic(image, model, truth, label_map, 64, 32)


def test_without_the_vote_the_best_view_splits_the_object(label_map, monkeypatch):
    monkeypatch.setattr(tile_merge._Votes, "one_object", lambda self: [])
    image, model, truth = _split_scene()
    with pytest.raises(AssertionError, match="split or missed"):
        _check_panoptic(image, model, truth, label_map, 64, 32)


class ShortSightedModel(ColourModel):
    """A ColourModel that, seeing only a sliver of an object along its border (every pixel
    within 2 * `SHORT` of a side), stops `SHORT` pixels short of the sides: it gives a small
    segment clear of the window's sides, which looks like a whole object there."""

    SHORT = 6

    def predict(self, images, tasks, image_sizes, precision="fp32"):
        prediction = super().predict(images, tasks, image_sizes, precision)
        masks = prediction.outputs[tasks[0]]["pred_masks"]  # [B, Q, H, W]
        for b, (height, width) in enumerate(image_sizes):
            ys = torch.arange(height)[:, None]
            xs = torch.arange(width)[None, :]
            border = torch.minimum(
                torch.minimum(ys, height - 1 - ys), torch.minimum(xs, width - 1 - xs)
            )  # [h, w] pixels to the nearest side
            for q in range(1, masks.shape[1]):  # query 0: the ground
                seen = masks[b, q, :height, :width] > 0
                if seen.any() and int(border[seen].max()) < 2 * self.SHORT:
                    masks[b, q, :height, :width][border < self.SHORT] = -20.0
        return prediction


def _corner_scene():
    """A 12-pixel wide box from row 85 down to the bottom of a 150 x 210 image of 64-pixel
    windows sharing half (rows of windows from 29, 57 and 86; columns from 29 and 58 hold
    it): no window sees it whole, and the row of windows from 29 sees only its top 8 rows."""
    image, colour_model, truth, labels = scene(150, 210, [(85, 69, 150, 81, 1)])
    model = ShortSightedModel(colour_model.colours.tolist(), labels, len(CATEGORIES))
    return image, model, truth


def test_a_corner_seen_short_of_a_side_is_no_object(label_map):
    """Two windows see an object's top as a small segment stopping short of their side (whole
    there); the windows that see that place farther from their sides see it as part of a
    larger segment that goes on below: the object comes back one, joined from its pieces."""
    assert [w.y0 for w in (r[0] for r in plan_windows(150, 210, 64, 32))] == [0, 29, 57, 86]
    image, model, truth = _corner_scene()
    _check_panoptic(image, model, truth, label_map, 64, 32)


def test_without_the_vote_the_corner_splits_the_object(label_map, monkeypatch):
    monkeypatch.setattr(tile_merge._Votes, "corners", lambda self: set())
    image, model, truth = _corner_scene()
    with pytest.raises(AssertionError, match="2 segments for 1 objects"):
        _check_panoptic(image, model, truth, label_map, 64, 32)


class BridgingModel(ColourModel):
    """A ColourModel that, in a window seeing all of the objects `bridged` at once, gives them
    as one segment (by the first one's query), as a model may paint neighbours as one."""

    bridged = (1, 2, 3)

    def predict(self, images, tasks, image_sizes, precision="fp32"):
        prediction = super().predict(images, tasks, image_sizes, precision)
        masks = prediction.outputs[tasks[0]]["pred_masks"]  # [B, Q, H, W]
        first, *others = self.bridged
        for b in range(len(images)):
            if all((masks[b, q] > 0).any() for q in self.bridged):
                masks[b, first] = masks[b, list(self.bridged)].amax(0)
                masks[b, others] = -20.0
        return prediction


def _bridge_scene():
    """Three boxes on a 64 x 128 image of 64-pixel windows from x = 0, 32, 64 (cells split at
    48 and 80): A (x 0-63) cut by the first window, W (x 50-62) whole only in the first, C
    (x 65-128) cut by the last. The middle window gives A, W and C as one piece P: A's and C's
    pieces join it across both seams, and P loses most of its cell to W, placed whole."""
    (row,) = plan_windows(64, 128, 64, 32)
    assert [(w.x0, w.cell[3]) for w in row] == [(0, 48), (32, 80), (64, 128)]
    boxes = [(0, 0, 20, 63, 1), (22, 50, 58, 62, 1), (60, 65, 64, 128, 1)]
    image, colour_model, truth, labels = scene(64, 128, boxes)
    model = BridgingModel(colour_model.colours.tolist(), labels, len(CATEGORIES))
    return image, model, truth


def test_a_piece_that_yields_takes_its_joins_with_it(label_map):
    """The piece P that yields to W goes with the joins it made: A and C, joined only through
    P, come back as two segments (each its own cell's part; their pixels in P's cell go with
    P), not as one."""
    image, model, truth = _bridge_scene()
    runner = TorchRunner(model, label_map, tasks=("panoptic",))
    panoptic = run_tiled(runner, image, ["panoptic"], 64, 32)["panoptic"]
    things = [s for s in panoptic.segments if s["isthing"]]
    assert [s["label"] for s in things] == [1, 1, 1], f"{len(things)} thing segments, not 3"
    x = np.arange(128)[None, :]
    expected = [truth == 2, (truth == 1) & (x < 48), (truth == 3) & (x >= 80)]  # W, A, C
    for segment, mask in zip(things, expected):
        np.testing.assert_array_equal(panoptic.segment_ids == segment["id"], mask)


def test_window_grid_covers_the_image_with_the_overlap():
    rows = plan_windows(300, 410, 128, 32)
    cover = np.zeros((300, 410), int)
    owners = np.zeros((300, 410), int)
    for row in rows:
        for w in row:
            assert (w.height, w.width) == (128, 128)
            cover[w.y0 : w.y0 + w.height, w.x0 : w.x0 + w.width] += 1
            cy0, cy1, cx0, cx1 = w.cell
            assert w.y0 <= cy0 < cy1 <= w.y0 + w.height and w.x0 <= cx0 < cx1 <= w.x0 + w.width
            owners[cy0:cy1, cx0:cx1] += 1
    assert cover.min() >= 1 and (owners == 1).all()  # the cells partition the image
    starts = [row[0].y0 for row in rows]
    assert all(b - a <= 128 - 32 for a, b in zip(starts, starts[1:]))


def _tiny_model(tiny_model_cfg, num_classes):
    from oneseg.model.build import build_model

    torch.manual_seed(3)  # a seed whose random heads give several panoptic segments
    cfg = dataclasses.replace(tiny_model_cfg, test_topk_per_image=12)
    model = build_model(cfg, num_classes=num_classes).eval()
    with torch.no_grad():  # confident heads: several queries survive panoptic's threshold
        model.decoder.class_embed.weight.mul_(6.0)
        model.decoder.mask_embed.layers[-1].weight.mul_(4.0)
    return model


def _assert_same(tiled: dict, plain: dict) -> None:
    np.testing.assert_array_equal(tiled["semantic"].labels, plain["semantic"].labels)
    a, b = tiled["instance"], plain["instance"]
    np.testing.assert_array_equal(np.asarray(a.masks), np.asarray(b.masks))
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    a, b = tiled["panoptic"], plain["panoptic"]
    np.testing.assert_array_equal(a.segment_ids, b.segment_ids)
    assert a.segments == b.segments


def test_one_window_equals_untiled_exactly(tiny_model_cfg, label_map):
    model = _tiny_model(tiny_model_cfg, len(label_map))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 90, 3), dtype=np.uint8)
    settings = dict(min_size=64, cpu_threads=None, postprocess=LOW_THRESHOLDS)
    plain = Predictor(model, label_map, **settings).predict([image], TASKS)
    got = Predictor(model, label_map, **settings, tile={"size": 96}).predict([image], TASKS)
    assert len(plain[0]["panoptic"].segments) >= 2 and len(plain[0]["instance"].scores) > 0
    _assert_same(got[0], plain[0])


def test_auto_tiles_only_images_the_resize_would_shrink_more_than_twice():
    assert not tiling.should_tile("auto", 512, 700, 256, 2048)
    assert tiling.should_tile("auto", 520, 700, 256, 2048)
    assert tiling.should_tile("auto", 300, 5000, 256, 2048)
    assert tiling.should_tile("on", 10, 10, 256, 2048)
    assert not tiling.should_tile("off", 9000, 9000, 256, 2048)
    with pytest.raises(ValueError, match="overlap"):
        tiling.tile_settings({"size": 64, "overlap": 64}, 512)


def test_memory_is_that_of_a_window(label_map, monkeypatch):
    """A 600x800 image of 150 objects in 64-pixel windows: the model never sees more than a
    window, and merging holds a few [H, W] maps, nothing like [Q, H, W] (instance masks stay
    crops). numpy allocations are traced; the model's own tensors are a window's."""
    monkeypatch.setattr(tile_merge, "DENSE_BYTES", 0)
    rng = np.random.default_rng(1)
    boxes = []
    for _ in range(150):
        y, x = int(rng.integers(0, 580)), int(rng.integers(0, 780))
        boxes.append((y, x, y + 15, x + 17, int(rng.integers(1, 3))))
    image, model, truth, labels = scene(600, 800, boxes)
    runner = TorchRunner(model, label_map, tasks=TASKS)
    tracemalloc.start()
    results = run_tiled(runner, image, TASKS, 64, 16, batch_size=4)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    queries = len(labels)
    assert max(shape[-2] * shape[-1] for shape in model.inputs) <= 64 * 64
    assert peak < 12 * 600 * 800 < queries * 600 * 800 / 8, peak  # 3 int32 maps, not [Q, H, W]
    masks = results["instance"].masks
    assert isinstance(masks, BoxedMasks)
    from oneseg.metrics.instance import masks_to_rle

    dense = np.asarray(masks)
    assert masks_to_rle(masks) == masks_to_rle(dense)  # crops encode as the full masks do
    assert results["panoptic"].segment_ids.shape == (600, 800)


def test_sixteen_bit_image_through_the_predictor(tmp_path, label_map):
    """A 16-bit PNG is stretched to 0-255 once for the whole image, then cut into windows: the
    objects keep one grey level across windows and come back whole."""
    from PIL import Image

    from oneseg.predictor import as_rgb_array

    image16 = np.full((120, 150), 1000, np.uint16)
    image16[20:70, 30:110] = 30000  # across several seams of 48-pixel windows
    image16[80:100, 40:60] = 60000
    path = tmp_path / "deep.png"
    Image.fromarray(image16).save(path)
    predictor = Predictor(
        ColourModel([(0, 0, 0)], [0], len(CATEGORIES)),
        label_map,
        min_size=48,
        cpu_threads=None,
        tile={"size": 48, "overlap": 12},
    )
    stretched = as_rgb_array(path, predictor.intensity)
    colours = [tuple(int(v) for v in stretched[y, x]) for y, x in ((0, 0), (30, 40), (90, 50))]
    assert len(set(colours)) == 3
    predictor.runner.model.__init__(colours, [0, 1, 2], len(CATEGORIES))
    result = predictor(path, "panoptic")
    things = sorted((s for s in result.segments if s["isthing"]), key=lambda s: s["label"])
    assert [s["label"] for s in things] == [1, 2]
    np.testing.assert_array_equal(result.segment_ids == things[0]["id"], image16 == 30000)
    np.testing.assert_array_equal(result.segment_ids == things[1]["id"], image16 == 60000)


def test_spec_tile_sections(tmp_path):
    from oneseg.spec import SpecError, spec_from_dict

    spec = spec_from_dict({}, ["inference.tile.mode=auto", "evaluate.tile.size=256"])
    assert spec.inference.tile.mode == "auto" and spec.evaluate.tile.size == 256
    assert spec.evaluate.tile.mode == "off"  # off unless asked
    with pytest.raises(SpecError, match="inference.tile.mode"):
        spec_from_dict({}, ["inference.tile.mode=sometimes"])
    with pytest.raises(SpecError, match="evaluate.tile.overlap"):
        spec_from_dict({}, ["evaluate.tile.size=64", "evaluate.tile.overlap=64"])


def _evaluate(tmp_path, evaluate_command, checkpoint, *overrides) -> dict:
    import json

    from oneseg import cli

    code = cli.main(
        evaluate_command(
            tmp_path,
            checkpoint,
            "evaluate.iou_per_class=false",
            "model.object_mask_threshold=0.0",
            *overrides,
        )
    )
    assert code == 0
    return json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["metrics"]


def test_evaluate_tile(tmp_path, evaluate_command, tiny_checkpoint):
    """evaluate.tile: one window per 64x64 image scores as the loader's path does; 32-pixel
    windows run and score in range."""
    plain = _evaluate(tmp_path / "plain", evaluate_command, tiny_checkpoint)
    whole = _evaluate(
        tmp_path / "whole", evaluate_command, tiny_checkpoint, "evaluate.tile.mode=on"
    )
    for key in ("pq", "miou", "ap", "num_images"):
        assert whole[key] == plain[key], key
    small = _evaluate(
        tmp_path / "small",
        evaluate_command,
        tiny_checkpoint,
        "evaluate.tile.mode=on",
        "evaluate.tile.size=32",
        "evaluate.tile.overlap=8",
    )
    assert small["num_images"] == 4 and 0.0 <= small["pq"] <= 100.0


class _Unscored:
    """A runner as exported graphs are: results only, no `run_scored`."""

    def __init__(self, runner):
        self.runner = runner

    def __getattr__(self, name):
        if name == "run_scored":
            raise AttributeError(name)
        return getattr(self.runner, name)


@pytest.fixture(scope="module")
def onnx_runner(tmp_path_factory, tiny_model_cfg, label_map):
    """The tiny model exported for 64x64 inputs of any batch size (one graph per task), in an
    `ExportedRunner`, and the PyTorch model it came from."""
    from oneseg.export.onnx_export import ExportSettings, export_onnx
    from oneseg.export.runtime import OnnxEngine
    from oneseg.runner import ExportedRunner

    model = _tiny_model(tiny_model_cfg, len(label_map))
    folder = tmp_path_factory.mktemp("tiles_onnx")
    check = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    engines = {}
    for task in TASKS:
        settings = ExportSettings(
            task=task,
            height=64,
            width=64,
            topk=LOW_THRESHOLDS.topk,
            object_mask_threshold=LOW_THRESHOLDS.object_mask_threshold,
            overlap_threshold=LOW_THRESHOLDS.overlap_threshold,
        )
        export_onnx(model, label_map, settings, folder / f"{task}.onnx", check.to(torch.uint8))
        engines[task] = OnnxEngine(folder / f"{task}.onnx", threads=1)
    return ExportedRunner(engines), model


def test_onnx_runner_tiles(onnx_runner, label_map):
    """Through ONNX Runtime: one window equals the untiled result exactly; 64-pixel windows
    over a 64x176 image (semantic by weighted votes, the graph gives labels) agree with the
    PyTorch model's tiles on most pixels (the PyTorch runner without class scores, so both
    merge the windows' labels by votes)."""
    runner, model = onnx_runner
    rng = np.random.default_rng(2)
    square = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    plain = Predictor(runner, min_size=64, cpu_threads=None).predict([square], TASKS)
    tiled = Predictor(runner, min_size=64, cpu_threads=None, tile="on").predict([square], TASKS)
    _assert_same(tiled[0], plain[0])

    wide = rng.integers(0, 256, (64, 176, 3), dtype=np.uint8)
    from_onnx = run_tiled(runner, wide, TASKS, 64, 16, batch_size=2)
    torch_runner = _Unscored(TorchRunner(model, label_map, LOW_THRESHOLDS))
    from_torch = run_tiled(torch_runner, wide, TASKS, 64, 16, batch_size=2)
    for task, key in (("semantic", "labels"), ("panoptic", "segment_ids")):
        got = getattr(from_onnx[task], key)
        assert got.shape == (64, 176)
        assert (got == getattr(from_torch[task], key)).mean() > 0.9, task
    assert from_onnx["instance"].masks.shape[1:] == (64, 176)
