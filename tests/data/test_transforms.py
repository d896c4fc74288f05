import numpy as np
from data_fixtures import scene
from scipy.ndimage import binary_erosion

from oneseg.data.records import Segment
from oneseg.data.targets import derive_targets
from oneseg.data.transforms import (
    EvalTransform,
    TrainTransform,
    color_jitter,
    resize,
    resize_window,
    shortest_edge_size,
)

SEGMENTS = [Segment(i, i % 4, True, False) for i in (2100, 4000, 301, 302, 701, 702)]


def colour_of(ids: np.ndarray) -> np.ndarray:
    """Each segment id its own colour: the image is painted by mask id."""
    ids = ids.astype(np.int64)
    return np.stack([ids * 37 % 251, ids * 91 % 241, ids * 53 % 239], -1).astype(np.uint8)


def _assert_aligned(out, erode: int = 0):
    """Every target mask covers pixels of its own segment's colour. After a resize, compare
    inside the mask only: bilinear blends colours up to ~1.5 px past the nearest-neighbour
    boundary of the map (at 2.5x)."""
    h, w = out.image_size
    image = out.image[:h, :w]
    targets = derive_targets(out.segment_map, SEGMENTS, "panoptic")
    assert len(targets.masks) > 0
    for mask in targets.masks:
        mask = mask[:h, :w]
        (seg_id,) = np.unique(out.segment_map[:h, :w][mask])  # one segment per mask
        inner = binary_erosion(mask, np.ones((3, 3)), iterations=erode) if erode else mask
        if inner.any():
            want = colour_of(np.array([seg_id]))[0]
            assert (np.abs(image[inner].astype(int) - want) <= 2).all(), seg_id


def test_crop_and_flip_keep_pixels_exactly_aligned():
    ids, _ = scene()  # 24 x 30
    transform = TrainTransform([24], 1000, crop_size=(16, 20), hflip=1.0, color_jitter=0.0)
    for seed in range(5):
        out = transform(colour_of(ids), ids.copy(), np.random.default_rng(seed))
        assert out.image.shape == (16, 20, 3) and out.image_size == (16, 20)
        np.testing.assert_array_equal(out.image, colour_of(out.segment_map))
        flipped_back = out.segment_map[:, ::-1]
        windows = [ids[t : t + 16, l : l + 20] for t in range(9) for l in range(11)]
        assert any(np.array_equal(flipped_back, w) for w in windows)


def test_resize_keeps_masks_on_their_pixels():
    ids, _ = scene()
    transform = TrainTransform([48, 60], 1000, crop_size=(40, 40), hflip=0.5, color_jitter=0.0)
    for seed in range(6):
        out = transform(colour_of(ids), ids.copy(), np.random.default_rng(seed))
        assert out.image.shape[:2] == out.segment_map.shape == (40, 40)
        _assert_aligned(out, erode=2)


def test_large_scale_jitter_scales_crops_and_pads():
    ids, _ = scene()
    shrink = TrainTransform([], 1000, crop_size=(32, 32), lsj=True, lsj_scale=(0.5, 0.5), hflip=1.0)
    out = shrink(colour_of(ids), ids.copy(), np.random.default_rng(0))
    # 24x30 fit into 16x16 -> 13x16 content, padded to the crop size with void
    assert out.image.shape == (32, 32, 3) and out.image_size == (13, 16)
    assert (out.segment_map[13:] == 0).all() and (out.segment_map[:, 16:] == 0).all()
    assert (out.image[13:] == 0).all()
    _assert_aligned(out, erode=2)
    grow = TrainTransform([], 1000, crop_size=(32, 32), lsj=True, lsj_scale=(2.0, 2.0))
    out = grow(colour_of(ids), ids.copy(), np.random.default_rng(1))
    assert out.image.shape == (32, 32, 3) and out.image_size == (32, 32)
    _assert_aligned(out, erode=2)


def test_color_jitter_changes_the_image_only():
    ids, _ = scene()
    plain = TrainTransform([24], 1000, crop_size=None, hflip=0.0, color_jitter=0.0)
    jitter = TrainTransform([24], 1000, crop_size=None, hflip=0.0, color_jitter=0.4)
    a = plain(colour_of(ids), ids.copy(), np.random.default_rng(3))
    b = jitter(colour_of(ids), ids.copy(), np.random.default_rng(3))
    np.testing.assert_array_equal(a.segment_map, b.segment_map)
    assert not np.array_equal(a.image, b.image) and b.image.dtype == np.uint8


def test_crop_larger_than_image_keeps_it_whole():
    ids, _ = scene()
    out = TrainTransform([24], 1000, crop_size=(64, 64), hflip=0.0)(
        colour_of(ids), ids.copy(), np.random.default_rng(0)
    )
    assert out.image_size == (24, 30)
    np.testing.assert_array_equal(out.segment_map, ids)


def test_eval_resize_and_max_size():
    assert shortest_edge_size(24, 30, 48, 1000) == (48, 60)
    assert shortest_edge_size(24, 30, 48, 50) == (40, 50)
    ids, _ = scene()
    out = EvalTransform(48, 1000)(colour_of(ids), ids.copy())
    assert out.image.shape == (48, 60, 3) and out.image_size == (48, 60)
    _assert_aligned(out, erode=2)


def test_empty_after_crop_is_a_valid_sample():
    ids = np.zeros((40, 40), np.int32)
    ids[:4, :4] = 7
    segments = [Segment(7, 0, True, False)]
    transform = TrainTransform([40], 1000, crop_size=(10, 10), hflip=0.0)
    empties = 0
    for seed in range(20):
        out = transform(colour_of(ids), ids.copy(), np.random.default_rng(seed))
        targets = derive_targets(out.segment_map, segments, "panoptic")
        empties += len(targets.masks) == 0
        assert targets.masks.shape[1:] == (10, 10)
    assert empties > 0


def test_window_resize_equals_resize_then_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ids = rng.integers(0, 50, (48, 64)).astype(np.int32)
    for size in [(96, 128), (30, 40), (61, 81)]:
        full_image, full_ids = resize(image, ids, size)
        part_image, part_ids = resize_window(image, ids, size, (5, 7, 20, 25))
        np.testing.assert_array_equal(part_ids, full_ids[5:25, 7:32])
        assert np.abs(part_image.astype(int) - full_image[5:25, 7:32]).max() <= 1


def test_color_jitter_matches_the_three_steps_applied_in_turn():
    image = np.random.default_rng(1).integers(60, 190, (16, 16, 3), dtype=np.uint8)
    out = color_jitter(image, 0.3, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the same draws, applied step by step
    x = image.astype(np.float64)
    luma = np.array([0.299, 0.587, 0.114])
    for op in rng.permutation(3):
        factor = rng.uniform(0.7, 1.3)
        if op == 0:
            x = x * factor
        elif op == 1:
            mean = (x @ luma).mean()
            x = (x - mean) * factor + mean
        else:
            gray = (x @ luma)[..., None]
            x = (x - gray) * factor + gray
    want = np.clip(np.rint(x), 0, 255)
    assert np.abs(out.astype(int) - want).max() <= 1
