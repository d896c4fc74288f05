"""Every check of `oneseg data check`, each triggered by a broken fixture."""

import json

import numpy as np
from data_fixtures import CATEGORIES, rle_of, scene, write_panoptic
from PIL import Image
from rich.console import Console

from oneseg.config import DatasetConfig, DataSource
from oneseg.data.check import check_dataset
from oneseg.data.report import ERROR, WARNING, print_report
from oneseg.io import id_to_rgb


def _find(report, severity, file_end, id_, words):
    hits = [
        p
        for p in report.problems
        if p.severity == severity
        and p.file.endswith(file_end)
        and p.id == id_
        and words in p.message
    ]
    assert hits, f"no {severity} {file_end} {id_} '{words}' in:\n" + "\n".join(
        map(str, report.problems)
    )


def _broken_panoptic(tmp_path):
    paths = write_panoptic(tmp_path, [scene() for _ in range(9)])
    images, pngs = paths["images"], paths["panoptic"]
    data = json.loads(paths["json"].read_text())
    (images / "img1.png").unlink()  # missing image
    (images / "img2.png").write_bytes(b"\x89PNG but not really")  # unreadable
    whole = (images / "img3.png").read_bytes()
    (images / "img3.png").write_bytes(whole[: len(whole) // 2])  # truncated
    ids, _ = scene()
    ids[0:2, 0:2] = 999  # a PNG segment the JSON does not list
    Image.fromarray(id_to_rgb(ids)).save(pngs / "img4.png")
    infos5 = data["annotations"][5]["segments_info"]
    infos5.append({"id": 555, "category_id": 3, "iscrowd": 0})  # listed, not in the PNG
    infos5[0]["category_id"] = 99  # unknown category
    data["images"][6]["height"] = 25  # size differs from the image's
    data["annotations"][6]["segments_info"].append(dict(data["annotations"][6]["segments_info"][2]))
    data["annotations"][7]["segments_info"] = []  # empty
    (pngs / "img8.png").unlink()  # missing PNG
    data["images"].append(dict(data["images"][0]))  # duplicate image id 100
    paths["json"].write_text(json.dumps(data))
    return DatasetConfig(
        train=[DataSource(images=str(images), annotations=str(paths["json"]), panoptic=str(pngs))]
    )


def test_panoptic_checks(tmp_path):
    report = check_dataset(_broken_panoptic(tmp_path), splits=("train",))
    _find(report, ERROR, "images/img1.png", "image 101", "file not found")
    _find(report, ERROR, "images/img2.png", "image 102", "not an image")
    _find(report, ERROR, "images/img3.png", "image 103", "truncated")
    _find(
        report,
        ERROR,
        "panoptic/img4.png",
        "image 104 / segment 999",
        "in the PNG but not in segments_info",
    )
    _find(
        report,
        ERROR,
        "panoptic.json",
        "image 105 / segment 555",
        "in segments_info but not in the PNG",
    )
    _find(report, ERROR, "panoptic.json", "image 105 / segment 2100", "unknown category id 99")
    _find(report, ERROR, "images/img6.png", "image 106", "the annotation says 25x30")
    _find(report, ERROR, "panoptic.json", "image 106 / segment 301", "duplicate segment id")
    _find(report, WARNING, "panoptic.json", "image 107", "empty segments_info")
    _find(report, ERROR, "panoptic/img8.png", "image 108", "file not found")
    _find(report, ERROR, "panoptic.json", "image 100", "duplicate image id")
    assert not [p for p in report.problems if p.id.startswith("image 100 ")]
    assert report.exit_code == 1
    assert report.images["train"] == 9
    assert report.segments_per_class["cat"] > 0 and report.crowd > 0


def _instance_json(tmp_path, annotations, images=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (24, 20)).save(tmp_path / "images" / name)
    images = images or [
        {"id": 1, "file_name": "a.png", "height": 20, "width": 24},
        {"id": 2, "file_name": "b.png", "height": 20, "width": 24},
    ]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "cat"}]}
        )
    )
    return DatasetConfig(
        type="coco", train=[DataSource(images=str(tmp_path / "images"), annotations=str(path))]
    )


def test_instance_checks(tmp_path):
    mask = np.zeros((20, 24), bool)
    mask[2:9, 3:11] = True
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]},
        {"id": 1, "image_id": 1, "category_id": 3, "segmentation": rle_of(mask)},  # dup id
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 5, 5]]},  # 2 points
        {"id": 3, "image_id": 1, "category_id": 3, "segmentation": []},  # empty
        {"id": 4, "image_id": 1, "category_id": 8, "segmentation": rle_of(mask)},  # unknown cat
        {"id": 5, "image_id": 9, "category_id": 3, "segmentation": rle_of(mask)},  # no image 9
        {
            "id": 6,
            "image_id": 1,
            "category_id": 3,
            "segmentation": rle_of(np.ones((5, 5), bool)),
        },  # wrong RLE size
    ]
    report = check_dataset(_instance_json(tmp_path, annotations), splits=("train",))
    _find(report, ERROR, "instances.json", "annotation 1", "duplicate annotation id")
    _find(report, ERROR, "instances.json", "image 1 / annotation 2", "polygon 0 has 2 points")
    _find(report, ERROR, "instances.json", "image 1 / annotation 3", "empty segmentation")
    _find(report, ERROR, "instances.json", "image 1 / annotation 4", "unknown category id 8")
    _find(report, ERROR, "instances.json", "annotation 5", "image id 9")
    _find(report, ERROR, "instances.json", "image 1 / annotation 6", "RLE size [5, 5]")
    _find(report, WARNING, "instances.json", "image 2", "no annotations")


def test_empty_annotation_list_and_missing_json(tmp_path):
    report = check_dataset(_instance_json(tmp_path, []), splits=("train",))
    _find(report, ERROR, "instances.json", "annotations", "has no annotations")
    config = DatasetConfig(
        type="coco",
        label_map=str(tmp_path / "instances.json"),
        train=[DataSource(images=".", annotations=str(tmp_path / "no.json"))],
    )
    report = check_dataset(config, splits=("train",))
    _find(report, ERROR, "no.json", "dataset.train[0]", "annotation file not found")


def test_semantic_checks(tmp_path):
    for name in ("img", "lbl"):
        (tmp_path / name).mkdir()
    (tmp_path / "labels.json").write_text(json.dumps(CATEGORIES))
    for stem in ("a", "b", "c"):
        Image.new("RGB", (8, 6)).save(tmp_path / "img" / f"{stem}.png")
    Image.fromarray(np.full((6, 8), 77, np.uint8)).save(tmp_path / "lbl" / "a.png")
    Image.fromarray(np.full((5, 8), 3, np.uint8)).save(tmp_path / "lbl" / "b.png")
    config = DatasetConfig(
        type="semantic",
        label_map=str(tmp_path / "labels.json"),
        train=[DataSource(images=str(tmp_path / "img"), labels=str(tmp_path / "lbl"))],
    )
    report = check_dataset(config, splits=("train",))
    _find(report, ERROR, "lbl/a.png", "image a", "unknown label values [77]")
    _find(report, ERROR, "lbl/b.png", "image b", "label is 5x8 but its image is 6x8")
    _find(report, ERROR, "lbl/c.png", "image c", "label PNG not found")


def test_print_report_names_file_and_id_and_returns_exit_code(tmp_path):
    report = check_dataset(_broken_panoptic(tmp_path), splits=("train",))
    console = Console(record=True, width=250, force_terminal=True)
    assert print_report(report, console) == 1
    text = console.export_text()
    assert "img1.png" in text and "image 101" in text and "FAILED" in text
    good = write_panoptic(tmp_path / "good", [scene()])
    config = DatasetConfig(
        train=[DataSource(images=str(good["images"]), annotations=str(good["json"]))]
    )
    console = Console(record=True, width=200, force_terminal=True)
    assert print_report(check_dataset(config), console) == 0
    assert "OK: 0 errors" in console.export_text()
