import numpy as np
import pytest
import torch

from oneseg.data.label_map import LabelMap
from oneseg.visualize import (
    TEXT_BOX_COLOR,
    TEXT_COLOR,
    _interior_point,
    overlay_instances,
    overlay_panoptic,
    overlay_semantic,
)

LABEL_MAP = LabelMap.from_categories(
    [
        {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 7, "name": "car", "isthing": 1, "color": [0, 0, 142]},
        {"id": 21, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    ]
)


def grey_image(height=120, width=160):
    return np.full((height, width, 3), 90, np.uint8)


def box_mask(height, width, top, left, bottom, right):
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def text_pixels_near(picture, point, radius=12):
    x, y = point
    patch = picture[max(y - radius, 0) : y + radius, max(x - radius, 0) : x + radius]
    bright = (patch.astype(int) >= np.array(TEXT_COLOR) - 60).all(-1)
    return int(bright.sum()), int((patch == TEXT_BOX_COLOR).all(-1).sum())


def test_semantic_tints_inside_only_and_names_classes():
    image = grey_image()
    label = np.full((120, 160), 255, np.uint8)
    label[:50] = 2  # sky on top
    label[70:, 20:100] = 0  # person below
    picture = overlay_semantic(image, label, LABEL_MAP, alpha=0.5)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    expected_sky = (0.5 * 90 + 0.5 * np.array([70, 130, 180])).round()
    assert (picture[25, 150] == expected_sky).all()  # inside, away from text and outline
    assert (picture[60, 150] == 90).all()  # ignored pixels unchanged
    assert (picture[110, 150] == 90).all()
    for mask in (label == 2, label == 0):
        text, box = text_pixels_near(picture, _interior_point(mask))
        assert text > 5 and box > 5


def test_instances_overlap_threshold_and_labels():
    image = grey_image()
    masks = torch.zeros(3, 120, 160, dtype=torch.bool)
    masks[0, 10:60, 10:70] = True
    masks[1, 40:100, 50:120] = True  # overlaps the first
    masks[2, 90:110, 130:150] = True  # below the score threshold
    labels = torch.tensor([0, 0, 1])
    scores = torch.tensor([0.9, 0.8, 0.3])
    picture = overlay_instances(image, masks, labels, scores, LABEL_MAP)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    # the two persons get different shades of the person colour
    assert not (picture[15, 15] == picture[95, 115]).all()
    assert (picture[15, 15] != 90).any() and (picture[95, 115] != 90).any()
    assert (picture[100, 140] == 90).all()  # low-score instance not drawn
    assert (picture[5, 150] == 90).all()
    for mask in masks[:2].numpy():
        text, _ = text_pixels_near(picture, _interior_point(mask))
        assert text > 5


def test_panoptic_outlines_and_void():
    image = grey_image()
    segment_ids = np.zeros((120, 160), np.int32)
    segment_ids[:40] = 1
    segment_ids[60:110, 20:80] = 2
    segments = [{"id": 1, "label": 2, "isthing": False}, {"id": 2, "label": 1, "isthing": True}]
    picture = overlay_panoptic(image, segment_ids, segments, LABEL_MAP, alpha=0.3)
    assert (picture[50, 100] == 90).all()  # void
    assert (picture[100, 60] != 90).any()
    edge = picture[60, 50]  # top edge of the car: outline at full colour
    assert np.abs(edge.astype(int) - np.array([0, 0, 142])).max() <= 60
    text, _ = text_pixels_near(picture, _interior_point(segment_ids == 2))
    assert text > 5


def test_interior_point_is_inside_an_l_shape():
    mask = np.zeros((50, 50), bool)
    mask[:, :10] = mask[40:, :] = True  # centroid (about 16, 33) lies outside
    x, y = _interior_point(mask)
    assert mask[y, x]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        overlay_semantic(np.zeros((4, 4, 3)), np.zeros((4, 4), int), LABEL_MAP)
    with pytest.raises(ValueError, match="label value 9"):
        overlay_semantic(grey_image(4, 4), np.full((4, 4), 9), LABEL_MAP)


def test_small_pictures_are_enlarged_by_whole_pixels():
    image = grey_image(60, 80)
    label = np.zeros((60, 80), np.uint8)
    label[:20] = 2
    picture = overlay_semantic(image, label, LABEL_MAP, min_side=240)
    assert picture.shape == (240, 320, 3)
    # away from outlines and names, each source pixel became a 4x4 block of one colour
    assert (picture[200:204, 300:304] == picture[200, 300]).all()
    assert overlay_semantic(image, label, LABEL_MAP).shape == image.shape
