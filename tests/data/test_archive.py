"""Dataset folders given as .tar/.tar.gz archives: unpacked once, with a free-disk check."""

import tarfile
from collections import namedtuple

import pytest

from oneseg.data import archive as archive_module
from oneseg.data.archive import unpack_archive, with_unpacked_archives
from oneseg.data.build import build_dataset
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError
from oneseg.spec import spec_from_dict


def _tar(folder, path, top: str | None):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=top or ".")
    return path


def test_archive_of_the_train_images_is_read_as_the_folder(tmp_path, synth_data):
    images = synth_data["train"]["images"]
    archive = _tar(images, tmp_path / "images.tar.gz", top="train2017")
    spec = spec_from_dict(
        {
            "results_dir": str(tmp_path / "results"),
            "dataset": {
                "train": {
                    "images": str(archive),
                    "annotations": str(synth_data["train"]["panoptic_json"]),
                    "panoptic": str(synth_data["train"]["panoptic"]),
                },
                "label_map": str(synth_data["label_map"]),
            },
        }
    )
    unpacked = with_unpacked_archives(spec).dataset
    folder = unpacked.train[0].images
    assert folder.startswith(str(tmp_path / "results" / "cache")) and folder.endswith("train2017")
    assert sorted(p.name for p in images.iterdir()) == sorted(
        p.name for p in (tmp_path / "results" / "cache").glob("*/train2017/*")
    )
    label_map = LabelMap.from_json(synth_data["label_map"])
    dataset = build_dataset(unpacked, "train", label_map, 4, 32, train=False)
    assert len(dataset) == len(list(images.iterdir()))
    assert dataset[0]["image"].shape[0] == 3


def test_unpacked_once(tmp_path, synth_data, monkeypatch):
    archive = _tar(synth_data["val"]["images"], tmp_path / "val.tar", top=None)
    first = unpack_archive(archive, tmp_path / "cache")
    calls = []
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: calls.append(a))
    assert unpack_archive(archive, tmp_path / "cache") == first
    assert calls == [] and first == tmp_path / "cache" / first.name  # no single top folder
    assert not list((tmp_path / "cache").glob(".*tmp*"))


def test_too_little_disk_is_refused_naming_the_archive(tmp_path, synth_data, monkeypatch):
    archive = _tar(synth_data["val"]["images"], tmp_path / "val.tar.gz", top=None)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    with pytest.raises(DataError, match=r"val.tar.gz: unpacking needs .* GiB, only 0.00 GiB free"):
        unpack_archive(archive, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_broken_archive_is_one_error(tmp_path):
    bad = tmp_path / "images.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="images.tar.gz: cannot unpack"):
        unpack_archive(bad, tmp_path / "cache")
