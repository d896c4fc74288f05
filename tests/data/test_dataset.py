import logging

import pytest
import torch
from data_fixtures import scene, write_panoptic

from oneseg.config import DatasetConfig, DataSource
from oneseg.data.build import build_dataloader, build_dataset, load_label_map
from oneseg.data.records import DataError


def _config(paths, **kwargs):
    source = DataSource(
        images=str(paths["images"]), annotations=str(paths["json"]), panoptic=str(paths["panoptic"])
    )
    config = DatasetConfig(train=[source], val=source, **kwargs)
    config.augmentation.train_min_size = [24, 32]
    config.augmentation.crop_size = [20, 20]
    config.augmentation.eval_min_size = 24
    return config


def test_sample_keys_shapes_and_types(panoptic_dataset):
    config = _config(panoptic_dataset, task_prob={"semantic": 1})
    dataset = build_dataset(config, "train", load_label_map(config), 7, 32, train=True)
    for sample in (dataset[0], dataset[1]):
        assert sample["task"] == "semantic"
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 20, 20)
        n = len(sample["labels"])
        assert sample["masks"].shape == (n, 20, 20) and sample["masks"].dtype == torch.bool
        assert sample["labels"].dtype == torch.long
        assert sample["ignore_mask"].shape == (20, 20) and sample["ignore_mask"].dtype == torch.bool
        assert sample["task_tokens"].shape == (77,) and sample["text_tokens"].shape == (7, 77)
        assert sample["image_size"] == (20, 20)
        # semantic: at most one mask per class
        assert len(set(sample["labels"].tolist())) == n
    assert dataset[1]["orig_size"] == (23, 31) and dataset[1]["image_id"] == 101


def test_same_torch_seed_same_sample(panoptic_dataset):
    config = _config(panoptic_dataset)
    dataset = build_dataset(config, "train", load_label_map(config), 7, 32, train=True)
    torch.manual_seed(5)
    a = dataset[0]
    torch.manual_seed(5)
    b = dataset[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert a["task"] == b["task"]


def _break_image(paths):
    (paths["images"] / "img0.png").write_bytes(b"broken")


def test_bad_image_raises_naming_file_and_id(panoptic_dataset):
    _break_image(panoptic_dataset)
    config = _config(panoptic_dataset)
    dataset = build_dataset(config, "train", load_label_map(config), 7, 32, train=True)
    with pytest.raises(DataError, match=r"image 100: .*images/img0.png: not an image"):
        dataset[0]


def test_bad_image_skipped_with_warning_and_counted(panoptic_dataset, caplog):
    _break_image(panoptic_dataset)
    config = _config(panoptic_dataset, on_error="skip")
    dataset = build_dataset(config, "train", load_label_map(config), 7, 32, train=True)
    with caplog.at_level(logging.WARNING, logger="oneseg.data.dataset"):
        sample = dataset[0]
    assert sample["image_id"] == 101
    assert dataset.skipped == 1
    assert "img0.png" in caplog.text and "image 100" in caplog.text


def test_loader_with_workers_counts_skips_across_processes(tmp_path):
    paths = write_panoptic(tmp_path, [scene() for _ in range(6)])
    _break_image(paths)
    config = _config(paths, on_error="skip", batch_size=3)
    loader = build_dataloader(config, "train", load_label_map(config), 7, 32, train=True, workers=2)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["images"].shape == (3, 3, 32, 32) and batch["pixel_mask"].shape == (3, 32, 32)
    assert batch["pixel_mask"][:, :20, :20].all() and not batch["pixel_mask"][:, 20:].any()
    assert batch["text_tokens"].shape == (3, 7, 77)
    assert loader.dataset.skipped == 1


def test_eval_split_keeps_order_and_every_image(panoptic_dataset):
    config = _config(panoptic_dataset, batch_size=4)
    loader = build_dataloader(config, "val", load_label_map(config), 7, 32, train=False, workers=0)
    (batch,) = list(loader)
    assert batch["image_ids"] == [100, 101] and batch["tasks"] == ["panoptic", "panoptic"]
    assert batch["image_sizes"] == [(24, 30), (24, 32)]
    assert batch["images"].shape == (2, 3, 32, 32)


def test_unset_source_is_named():
    with pytest.raises(DataError, match=r"dataset.train\[0\].images is empty"):
        build_dataset(DatasetConfig(label_map="x"), "train", None, 7, 32, train=True)
