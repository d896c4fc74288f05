import hashlib
import json

import numpy as np

from oneseg.data.build import build_dataset, load_label_map
from oneseg.data.check import check_dataset
from oneseg.data.synth import synthetic_dataset_config, write_synthetic_dataset


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kwargs = {"num_train": 3, "num_val": 2, "size": (48, 64)}
    write_synthetic_dataset(tmp_path / "a", seed=7, **kwargs)
    write_synthetic_dataset(tmp_path / "b", seed=7, **kwargs)
    write_synthetic_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_digest(tmp_path / k) for k in "abc")
    # the label map; per split two JSONs and an image and a PNG per image
    assert len(a) == 1 + (2 + 2 * 3) + (2 + 2 * 2)
    assert a == b
    assert a.keys() == c.keys() and a["train/images/000001.jpg"] != c["train/images/000001.jpg"]


def test_contents_are_a_valid_panoptic_and_instance_dataset(tmp_path):
    paths = write_synthetic_dataset(tmp_path, num_train=16, num_val=2, size=(64, 80), seed=0)
    assert set(paths["train"]) == {"images", "panoptic", "panoptic_json", "instances_json"}
    categories = json.loads(paths["label_map"].read_text())
    assert [c["name"] for c in categories] == [
        "circle",
        "square",
        "triangle",
        "star",
        "cross",
        "sky",
        "grass",
        "wall",
    ]
    assert [c["isthing"] for c in categories] == [1] * 5 + [0] * 3
    for kind in ("coco_panoptic", "coco"):
        report = check_dataset(synthetic_dataset_config(paths, kind))
        assert report.problems == [], report.problems
        assert report.images == {"train": 16, "val": 2}
        assert report.crowd > 0 and report.things > 16 * 2
        assert len(report.segments_per_class) == (8 if kind == "coco_panoptic" else 5)
    pan = json.loads(paths["train"]["panoptic_json"].read_text())
    stuff_layouts = {
        tuple(sorted(s["category_id"] for s in a["segments_info"] if s["category_id"] > 5))
        for a in pan["annotations"]
    }
    assert len(stuff_layouts) >= 3  # the ground changes from image to image


def test_both_formats_give_the_same_instances(tmp_path):
    paths = write_synthetic_dataset(tmp_path, num_train=4, num_val=1, size=(64, 64), seed=1)
    samples = {}
    for kind in ("coco_panoptic", "coco"):
        config = synthetic_dataset_config(paths, kind)
        config.augmentation.eval_min_size = 0
        dataset = build_dataset(
            config, "train", load_label_map(config), 10, 32, train=False, task="instance"
        )
        samples[kind] = [dataset[i] for i in range(len(dataset))]
    for pan, inst in zip(samples["coco_panoptic"], samples["coco"]):
        assert pan["labels"].tolist() == inst["labels"].tolist()
        assert np.array_equal(pan["masks"].numpy(), inst["masks"].numpy())
        assert pan["labels"].numel() >= 1


def test_cli_command(tmp_path, capsys):
    from PIL import Image

    from oneseg import cli

    argv = ["data", "synth", str(tmp_path / "d"), "--num-train", "2", "--num-val", "1"]
    assert cli.main([*argv, "--size", "40", "48"]) == 0
    assert "data synth: wrote" in capsys.readouterr().out
    images = sorted((tmp_path / "d" / "train").rglob("*.jpg"))
    assert len(images) == 2 and Image.open(images[0]).size == (48, 40)
    assert len(list((tmp_path / "d" / "val" / "images").iterdir())) == 1
    config = synthetic_dataset_config(tmp_path / "d")  # from the folder alone
    assert config.augmentation.crop_size == [40, 48] and config.augmentation.eval_min_size == 40
    assert config.train[0].panoptic.endswith("train/panoptic")
