import pickle

import numpy as np
import pytest
from data_fixtures import CATEGORIES

from oneseg.data.coco_panoptic import CocoPanopticReader
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.label_map import LabelMap
from oneseg.data.records import RecordStore
from oneseg.data.targets import semantic_label
from oneseg.data.transforms import EvalTransform


def test_round_trip_and_pickles():
    items = [{"id": i, "name": "x" * i, "seg": [[1.0, 2.0] * i]} for i in range(50)]
    store = RecordStore(items)
    assert len(store) == 50 and store[7] == items[7] and store[-1] == items[-1]
    assert list(store) == items
    assert list(pickle.loads(pickle.dumps(store))) == items
    with pytest.raises(IndexError):
        store[50]
    assert list(RecordStore([])) == []


def test_dataset_packs_the_records(panoptic_dataset):
    label_map = LabelMap.from_categories(CATEGORIES)
    reader = CocoPanopticReader(
        panoptic_dataset["images"],
        panoptic_dataset["json"],
        panoptic_dataset["panoptic"],
        label_map,
    )
    dataset = SegmentationDataset([reader], label_map, EvalTransform(0, 0), {"panoptic": 1}, 4)
    assert reader.records == []  # held once, packed, by the dataset
    assert [r.image_id for r in dataset.records] == [100, 101]
    assert dataset.record(1).image_id == 101 and dataset[1]["image_id"] == 101


def test_semantic_label_for_evaluation(panoptic_dataset):
    label_map = LabelMap.from_categories(CATEGORIES)
    reader = CocoPanopticReader(
        panoptic_dataset["images"],
        panoptic_dataset["json"],
        panoptic_dataset["panoptic"],
        label_map,
    )
    annotation = reader.load_annotation(reader.records[0])
    label = semantic_label(annotation.segment_map, annotation.segments, ignore_value=255)
    ids = annotation.segment_map
    want = np.select(
        [ids == 2100, ids == 4000, (ids == 301) | (ids == 302), (ids == 701) | (ids == 702)],
        [2, 3, 0, 1],
        255,
    )
    np.testing.assert_array_equal(label, want)
