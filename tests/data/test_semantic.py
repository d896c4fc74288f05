import json

import numpy as np
import pytest
from PIL import Image

from oneseg.config import DatasetConfig, DataSource
from oneseg.data.build import build_dataset, load_label_map
from oneseg.data.records import DataError

CATEGORIES = [
    {"id": 1, "name": "road", "isthing": 0},
    {"id": 4, "name": "car", "isthing": 1},
    {"id": 300, "name": "sign", "isthing": 1},  # needs a 16-bit label
]


def _label():
    label = np.full((10, 14), 1, np.uint16)
    label[2:6, 3:8] = 4
    label[0, :] = 255  # ignored
    return label


def _config(tmp_path, ignore_value=255):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    (tmp_path / "labels.json").write_text(json.dumps(CATEGORIES))
    return DatasetConfig(
        type="semantic",
        val=DataSource(images=str(tmp_path / "img"), labels=str(tmp_path / "lbl")),
        label_map=str(tmp_path / "labels.json"),
        ignore_value=ignore_value,
    )


def _sample(config, index=0):
    config.augmentation.eval_min_size = 0
    label_map = load_label_map(config)
    return build_dataset(config, "val", label_map, 6, 32, train=False, task="semantic")[index]


def test_palette_label_png(tmp_path):
    config = _config(tmp_path)
    Image.new("RGB", (14, 10)).save(tmp_path / "img" / "a.jpg")
    label = Image.fromarray(_label().astype(np.uint8), mode="P")
    label.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] * 85 + [0, 0, 0])
    label.save(tmp_path / "lbl" / "a.png")
    sample = _sample(config)
    assert sample["image_id"] == "a"
    assert sample["labels"].tolist() == [0, 1]
    np.testing.assert_array_equal(sample["masks"][1].numpy(), _label() == 4)
    np.testing.assert_array_equal(sample["masks"][0].numpy(), _label() == 1)
    np.testing.assert_array_equal(sample["ignore_mask"].numpy(), _label() == 255)


def test_16bit_label_png(tmp_path):
    config = _config(tmp_path, ignore_value=0)
    Image.new("RGB", (14, 10)).save(tmp_path / "img" / "b.png")
    label = _label()
    label[label == 255] = 300
    label[-1, -1] = 0
    Image.fromarray(label).save(tmp_path / "lbl" / "b.png")
    sample = _sample(config)
    assert sample["labels"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(sample["masks"][2].numpy(), label == 300)
    assert sample["ignore_mask"].numpy().sum() == 1


def test_unknown_label_value_and_missing_label(tmp_path):
    config = _config(tmp_path)
    Image.new("RGB", (14, 10)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (14, 10)).save(tmp_path / "img" / "b.png")
    label = _label().astype(np.uint8)
    label[5, 5] = 17
    Image.fromarray(label).save(tmp_path / "lbl" / "a.png")
    with pytest.raises(DataError, match=r"lbl/a.png: image a: unknown label values \[17\]"):
        _sample(config, 0)
    with pytest.raises(DataError, match=r"image b: .*lbl/b.png: file not found"):
        _sample(config, 1)


def test_semantic_folders_need_a_label_map(tmp_path):
    config = _config(tmp_path)
    config.label_map = ""
    with pytest.raises(DataError, match="dataset.label_map"):
        load_label_map(config)
