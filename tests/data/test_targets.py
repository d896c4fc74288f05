import numpy as np
import pytest
import torch
from data_fixtures import CATEGORIES, scene, write_panoptic

from oneseg.data.coco_panoptic import CocoPanopticReader
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.label_map import LabelMap
from oneseg.data.records import Segment
from oneseg.data.targets import derive_targets, normalize_task_prob, sample_task, target_texts
from oneseg.data.transforms import EvalTransform
from oneseg.tokenizer import tokenize

NAMES = ["cat", "dog", "sky", "grass"]
# classes: cat 0, dog 1 (things); sky 2, grass 3 (stuff); a segment of cat with no pixels
SEGMENTS = [
    Segment(2100, 2, False, False),
    Segment(4000, 3, False, False),
    Segment(301, 0, True, False),
    Segment(302, 0, True, False),
    Segment(701, 1, True, False),
    Segment(702, 1, True, True),
    Segment(303, 0, True, False),  # listed, but cropped away
]


def _masks(targets):
    return [m for m in targets.masks]


def test_panoptic_targets_one_mask_per_instance_and_stuff():
    ids, _ = scene()
    targets = derive_targets(ids, SEGMENTS, "panoptic")
    assert targets.labels.tolist() == [0, 0, 1, 2, 3]  # class order, then segment order
    for mask, seg_id in zip(_masks(targets), [301, 302, 701, 2100, 4000]):
        np.testing.assert_array_equal(mask, ids == seg_id)
    np.testing.assert_array_equal(targets.ignore_mask, (ids == 0) | (ids == 702))
    # text entry i names mask i
    assert target_texts(targets.labels, NAMES, "panoptic", 6) == [
        "a photo with a cat",
        "a photo with a cat",
        "a photo with a dog",
        "a photo with a sky",
        "a photo with a grass",
        "a panoptic photo",
    ]


def test_instance_targets_things_only():
    ids, _ = scene()
    targets = derive_targets(ids, SEGMENTS, "instance")
    assert targets.labels.tolist() == [0, 0, 1]
    for mask, seg_id in zip(_masks(targets), [301, 302, 701]):
        np.testing.assert_array_equal(mask, ids == seg_id)
    # stuff is "no object" for the instance task, not ignored
    np.testing.assert_array_equal(targets.ignore_mask, (ids == 0) | (ids == 702))


def test_semantic_targets_one_mask_per_class():
    ids, _ = scene()
    targets = derive_targets(ids, SEGMENTS, "semantic")
    assert targets.labels.tolist() == [0, 1, 2, 3]
    expected = [(ids == 301) | (ids == 302), ids == 701, ids == 2100, ids == 4000]
    for mask, want in zip(_masks(targets), expected):
        np.testing.assert_array_equal(mask, want)
    assert targets.masks.dtype == bool and targets.labels.dtype == np.int64


def test_no_segments_gives_empty_targets():
    ids = np.zeros((5, 7), np.int32)
    for task in ("semantic", "instance", "panoptic"):
        targets = derive_targets(ids, [], task)
        assert targets.masks.shape == (0, 5, 7) and targets.labels.shape == (0,)
        assert targets.ignore_mask.all()


def test_text_lists_exact():
    labels = np.array([3, 0, 1, 0])
    assert target_texts(labels, NAMES, "panoptic", 6) == [
        "a photo with a cat",
        "a photo with a cat",
        "a photo with a dog",
        "a photo with a grass",
        "a panoptic photo",
        "a panoptic photo",
    ]
    assert target_texts(np.array([1]), NAMES, "instance", 3) == [
        "a photo with a dog",
        "an instance photo",
        "an instance photo",
    ]
    assert target_texts(np.array([], np.int64), NAMES, "semantic", 2) == [
        "a semantic photo",
        "a semantic photo",
    ]
    assert target_texts(np.array([2, 1, 0]), NAMES, "semantic", 2) == [
        "a photo with a cat",
        "a photo with a dog",
    ]


def test_task_prob_validated_and_normalised():
    assert normalize_task_prob({"semantic": 1}) == {"semantic": 1.0}
    assert normalize_task_prob({"semantic": 1, "panoptic": 3, "instance": 0}) == {
        "semantic": 0.25,
        "panoptic": 0.75,
    }
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['semantics'\]"):
        normalize_task_prob({"semantics": 1.0})
    with pytest.raises(ValueError, match="sum to 0"):
        normalize_task_prob({"semantic": 0})
    rng = np.random.default_rng(0)
    draws = [
        sample_task(normalize_task_prob({"semantic": 1, "instance": 3}), rng) for _ in range(2000)
    ]
    assert set(draws) == {"semantic", "instance"}
    assert 0.7 < draws.count("instance") / 2000 < 0.8


def test_sample_tokens_match_the_texts(tmp_path):
    paths = write_panoptic(tmp_path, [scene()])
    label_map = LabelMap.from_categories(CATEGORIES)
    reader = CocoPanopticReader(paths["images"], paths["json"], paths["panoptic"], label_map)
    dataset = SegmentationDataset(
        [reader], label_map, EvalTransform(0, 0), {"instance": 1}, text_list_len=5
    )
    sample = dataset[0]
    assert sample["task"] == "instance"
    assert torch.equal(sample["task_tokens"], tokenize("the task is instance")[0])
    want = ["a photo with a cat"] * 2 + ["a photo with a dog"] + ["an instance photo"] * 2
    assert torch.equal(sample["text_tokens"], tokenize(want))
    assert sample["text_tokens"].shape == (5, 77) and sample["text_tokens"].dtype == torch.long
