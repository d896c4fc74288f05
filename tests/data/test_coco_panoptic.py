import json

import numpy as np
import pytest
from data_fixtures import CATEGORIES, paint, scene, write_panoptic
from PIL import Image

from oneseg.data.coco_panoptic import CocoPanopticReader
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError
from oneseg.data.transforms import EvalTransform
from oneseg.io import id_to_rgb, rgb_to_id

LABEL_MAP = LabelMap.from_categories(CATEGORIES)


def _reader(paths, contiguous=True, label_map=LABEL_MAP):
    return CocoPanopticReader(
        paths["images"], paths["json"], paths["panoptic"], label_map, contiguous
    )


def _dataset(readers, task="panoptic", **kwargs):
    return SegmentationDataset(
        readers, LABEL_MAP, EvalTransform(0, 0), {task: 1.0}, text_list_len=8, **kwargs
    )


def test_id_colour_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 1000003, 16777215]], dtype=np.int32)
    rgb = id_to_rgb(ids)
    assert tuple(rgb[0, 3]) == (0, 1, 0) and tuple(rgb[1, 1]) == (0, 0, 1)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


def test_reader_gives_ids_classes_and_crowd(panoptic_dataset):
    reader = _reader(panoptic_dataset)
    assert [r.image_id for r in reader.records] == [100, 101]
    assert (reader.records[1].height, reader.records[1].width) == (23, 31)
    annotation = reader.load_annotation(reader.records[0])
    ids, _ = scene()
    np.testing.assert_array_equal(annotation.segment_map, ids)
    by_id = {s.id: s for s in annotation.segments}
    # category ids 3, 7, 21, 40 -> contiguous classes 0, 1, 2, 3
    assert {i: s.class_index for i, s in by_id.items()} == {
        2100: 2,
        4000: 3,
        301: 0,
        302: 0,
        701: 1,
        702: 1,
    }
    assert by_id[301].isthing and not by_id[2100].isthing
    assert by_id[702].iscrowd and not by_id[701].iscrowd
    ignore = annotation.ignore_mask
    np.testing.assert_array_equal(ignore, (ids == 0) | (ids == 702))


def test_contiguous_id_off_takes_ids_as_classes(tmp_path):
    categories = [
        {"id": i, "name": n, "isthing": t} for i, (n, t) in enumerate([("a", 1), ("b", 0)])
    ]
    ids = np.zeros((5, 6), np.int32)
    ids[:, :3] = 5
    ids[:, 3:] = 9
    paths = write_panoptic(
        tmp_path,
        [
            (
                ids,
                [
                    {"id": 5, "category_id": 1, "iscrowd": 0},
                    {"id": 9, "category_id": 0, "iscrowd": 0},
                ],
            )
        ],
        categories,
    )
    label_map = LabelMap.from_categories(categories)
    annotation = _reader(paths, contiguous=False, label_map=label_map).load_annotation(
        _reader(paths, contiguous=False, label_map=label_map).records[0]
    )
    assert [(s.id, s.class_index, s.isthing) for s in annotation.segments] == [
        (5, 1, False),
        (9, 0, True),
    ]


def test_unknown_category_names_file_image_and_segment(tmp_path):
    ids, segments = scene()
    segments[0]["category_id"] = 99
    paths = write_panoptic(tmp_path, [(ids, segments)])
    reader = _reader(paths)
    with pytest.raises(DataError, match=r"panoptic.json: image 100, segment 2100: .*99"):
        reader.load_annotation(reader.records[0])


def test_odd_size_sample_and_grayscale_image(tmp_path):
    ids, segments = scene(23, 31)
    paths = write_panoptic(tmp_path, [(ids, segments)], image_ext=".jpg")
    gray = Image.fromarray(paint(ids)).convert("L")
    gray.save(paths["images"] / "img0.jpg")
    sample = _dataset([_reader(paths)])[0]
    assert sample["image"].shape == (3, 23, 31) and sample["image"].dtype.is_floating_point is False
    assert sample["orig_size"] == (23, 31) == sample["image_size"]
    assert sample["masks"].shape == (5, 23, 31)


def test_exif_rotated_jpeg_aligns_with_its_label(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6; the label is drawn upright."""
    ids = np.full((40, 60), 1, np.int32)
    ids[5:25, 10:30] = 2  # a square, top-left of the upright picture
    segments = [
        {"id": 1, "category_id": 21, "iscrowd": 0},
        {"id": 2, "category_id": 3, "iscrowd": 0},
    ]
    paths = write_panoptic(tmp_path, [(ids, segments)], image_ext=".jpg")
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[ids == 2] = (250, 20, 20)
    upright[ids == 1] = (20, 20, 250)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (40, 60)  # stored 60 high, 40 wide
    stored.save(paths["images"] / "img0.jpg", exif=exif, quality=95)

    sample = _dataset([_reader(paths)])[0]
    image = sample["image"].permute(1, 2, 0).numpy().astype(int)
    assert image.shape == (40, 60, 3)
    square = sample["masks"][sample["labels"] == 0][0].numpy()
    np.testing.assert_array_equal(square, ids == 2)
    inner = np.zeros_like(square)
    inner[7:23, 12:28] = True  # away from the JPEG-blurred border
    assert (image[inner][:, 0] > 200).all() and (image[inner][:, 2] < 60).all()
    assert (image[ids == 1][:, 2] > 150).mean() > 0.95


def test_size_mismatch_raises_naming_file_and_id(panoptic_dataset):
    data = json.loads(panoptic_dataset["json"].read_text())
    data["images"][1]["height"] = 99
    panoptic_dataset["json"].write_text(json.dumps(data))
    dataset = _dataset([_reader(panoptic_dataset)])
    with pytest.raises(DataError, match=r"img1.png: image 101 is 23x31 .* says 99x31"):
        dataset[1]


def test_missing_png_raises_naming_it(panoptic_dataset):
    (panoptic_dataset["panoptic"] / "img0.png").unlink()
    with pytest.raises(DataError, match=r"image 100: .*panoptic/img0.png: file not found"):
        _dataset([_reader(panoptic_dataset)])[0]


def test_several_sources_concatenate(tmp_path):
    a = write_panoptic(tmp_path / "a", [scene()])
    b = write_panoptic(tmp_path / "b", [scene(16, 16), scene(20, 18)])
    dataset = _dataset([_reader(a), _reader(b)])
    assert len(dataset) == 3
    assert [dataset[i]["orig_size"] for i in range(3)] == [(24, 30), (16, 16), (20, 18)]
