"""`oneseg data convert`: the synthetic set's own ground truth written as labelme JSON, mask PNGs,
YOLO text and ADE JSON lines, converted back, and compared with the original (PQ of the
converted set as a prediction against the original as ground truth, oneseg's PQ)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from label_formats import WRITERS, gt_objects, mask_polygons

from oneseg.cli import main
from oneseg.config import DatasetConfig, DataSource
from oneseg.data.check import check_dataset
from oneseg.data.convert.labels import polygons_to_mask
from oneseg.io import read_id_png
from oneseg.metrics.panoptic_quality import evaluate_coco_panoptic

# lowest PQ (in %) of the converted set against the original, per format, as measured on this
# set: 100 where the format holds what a panoptic map holds. YOLO has no way to group the parts
# of an object that another one splits (each polygon line is an object): 92.61 measured here.
# ADE labels are semantic: stuff stays whole (100), things of one class merge (PQ things
# measured 58.92 here, PQ 74.32).
PQ_BOUND = {"masks": 100.0, "labelme": 100.0, "yolo": 92.6, "ade_jsonl": 100.0}


def _names(label_map: Path) -> dict[int, str]:
    return {c["id"]: c["name"] for c in json.loads(label_map.read_text())}


def _convert(fmt, target, synth_data, tmp_path, capsys) -> Path:
    src, out = tmp_path / fmt, tmp_path / f"{fmt}-{target}"
    src.mkdir()
    WRITERS[fmt](synth_data["val"], _names(synth_data["label_map"]), src)
    label_map = str(synth_data["label_map"])
    code = main(
        [
            "data",
            "convert",
            "--from",
            fmt,
            str(src),
            "--to",
            target,
            str(out),
            "--label-map",
            label_map,
        ]
    )
    assert code == 0, capsys.readouterr().err
    return out


def _pq_against_original(out: Path, original: dict) -> dict:
    """PQ (in %) of the converted set as a prediction of the original ground truth."""
    gt = json.loads(Path(original["panoptic_json"]).read_text())
    converted = json.loads((out / "annotations.json").read_text())
    ids = {image["file_name"]: image["id"] for image in gt["images"]}
    names = {image["id"]: image["file_name"] for image in converted["images"]}
    pred = {
        "annotations": [
            {**ann, "image_id": ids[names[ann["image_id"]]]} for ann in converted["annotations"]
        ]
    }
    result = evaluate_coco_panoptic(gt, pred, original["panoptic"], out / "panoptic").compute()
    return {k: 100 * result[k]["pq"] for k in ("All", "Things", "Stuff")}


def _semantic_equal(out: Path, original: dict) -> float:
    """Share of the original's labelled pixels whose category the converted set keeps."""
    same = total = 0
    converted = json.loads((out / "annotations.json").read_text())
    by_name = {image["file_name"]: image["id"] for image in converted["images"]}
    anns = {ann["image_id"]: ann for ann in converted["annotations"]}
    for image, objects in gt_objects(original):
        ann = anns[by_name[image["file_name"]]]
        ids = read_id_png(out / "panoptic" / ann["file_name"])
        cats = np.zeros_like(ids)
        for seg in ann["segments_info"]:
            cats[ids == seg["id"]] = seg["category_id"]
        for cid, mask, _ in objects:
            same += int((cats[mask] == cid).sum())
            total += int(mask.sum())
    return same / total


def _check_clean(out: Path, kind: str) -> None:
    source = DataSource(images=str(out / "images"), annotations=str(out / "annotations.json"))
    if kind == "coco_panoptic":
        source.panoptic = str(out / "panoptic")
    cfg = DatasetConfig(type=kind, train=[source], label_map=str(out / "label_map.json"))
    report = check_dataset(cfg, splits=("train",), workers=1)
    assert report.problems == [], report.problems
    assert report.images["train"] == 4


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_converted_labels_match_the_original(fmt, synth_data, tmp_path, capsys):
    out = _convert(fmt, "coco_panoptic", synth_data, tmp_path, capsys)
    _check_clean(out, "coco_panoptic")
    pq = _pq_against_original(out, synth_data["val"])
    print(f"{fmt}: PQ {pq}")
    assert _semantic_equal(out, synth_data["val"]) == 1.0  # every pixel keeps its class
    if fmt == "ade_jsonl":
        assert pq["Stuff"] == pytest.approx(100.0, abs=1e-9)
        assert 58.9 <= pq["Things"] < 100.0  # objects of one class merge into one segment
    else:
        assert pq["All"] >= PQ_BOUND[fmt] - 1e-9
    report = json.loads((out / "convert_report.json").read_text())
    assert report["images"] == 4 and report["skipped"] == []


def test_masks_to_coco_instances_keeps_every_thing_mask(synth_data, tmp_path, capsys):
    out = _convert("masks", "coco", synth_data, tmp_path, capsys)
    _check_clean(out, "coco")
    from oneseg.data.coco_instance import decode_segmentation

    things = {c["id"] for c in json.loads(synth_data["label_map"].read_text()) if c["isthing"]}
    data = json.loads((out / "annotations.json").read_text())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    got = sorted(
        (
            names[a["image_id"]],
            a["category_id"],
            decode_segmentation(a["segmentation"], 64, 64).tobytes(),
        )
        for a in data["annotations"]
    )
    want = sorted(
        (image["file_name"], cid, mask.tobytes())
        for image, objects in gt_objects(synth_data["val"])
        for cid, mask, _ in objects
        if cid in things
    )
    assert got == want
    report = json.loads((out / "convert_report.json").read_text())
    stuff = [s for s in report["skipped"] if "stuff class" in s["reason"]]
    assert stuff and len(stuff) == len(report["skipped"])


def test_traced_polygons_rasterize_to_the_mask_without_its_holes():
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:9, 2:10] = True
    mask[4:6, 4:6] = False  # a hole
    mask[10, 0] = mask[11, 1] = True  # two pixels touching at a corner
    polygons = mask_polygons(mask)
    filled = mask.copy()
    filled[4:6, 4:6] = True
    assert np.array_equal(polygons_to_mask(polygons, 12, 12), filled)


def test_what_cannot_be_read_is_reported(synth_data, tmp_path, capsys):
    src = tmp_path / "yolo"
    src.mkdir()
    WRITERS["yolo"](synth_data["val"], _names(synth_data["label_map"]), src)
    first = sorted((src / "labels").iterdir())[0]
    first.write_text(first.read_text() + "\n0 0.5 0.5 0.2 0.2\n99 0.1 0.1 0.2 0.1 0.2 0.2\n1 0.3")
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "yolo",
                str(src),
                "--to",
                "coco_panoptic",
                str(out),
                "--label-map",
                str(synth_data["label_map"]),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for reason in (
        "a detection box, not a polygon",
        "class index 99 is not in the 8 names",
        "a polygon needs 3 or more x y pairs",
    ):
        assert f"skipped 1x: {reason} (first: {first}:" in printed
    _check_clean(out, "coco_panoptic")


def test_a_class_missing_from_the_label_map_is_skipped(synth_data, tmp_path, capsys):
    src = tmp_path / "labelme"
    src.mkdir()
    names = _names(synth_data["label_map"])
    WRITERS["labelme"](synth_data["val"], {**names, 1: "unicorn"}, src)
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "labelme",
                str(src),
                "--to",
                "coco_panoptic",
                str(out),
                "--label-map",
                str(synth_data["label_map"]),
            ]
        )
        == 0
    )
    report = json.loads((out / "convert_report.json").read_text())
    assert {s["reason"] for s in report["skipped"]} == {"class 'unicorn' is not in the label map"}
    _check_clean(out, "coco_panoptic")


def test_without_a_label_map_classes_are_numbered_as_met(synth_data, tmp_path, capsys):
    src = tmp_path / "masks"
    src.mkdir()
    names = _names(synth_data["label_map"])
    WRITERS["masks"](synth_data["val"], names, src)
    out = tmp_path / "out"
    assert (
        main(["data", "convert", "--from", "masks", str(src), "--to", "coco_panoptic", str(out)])
        == 0
    )
    assert "note: no --label-map: classes numbered 1.. as met" in capsys.readouterr().out
    made = json.loads((out / "label_map.json").read_text())
    assert [c["id"] for c in made] == list(range(1, len(made) + 1))
    assert sorted(c["name"] for c in made) == sorted(
        {names[c] for _, objs in gt_objects(synth_data["val"]) for c, _, _ in objs}
    )
    assert all(c["isthing"] for c in made)
    _check_clean(out, "coco_panoptic")


def test_a_missing_source_is_one_line(tmp_path, capsys):
    code = main(
        [
            "data",
            "convert",
            "--from",
            "yolo",
            str(tmp_path / "none"),
            "--to",
            "coco",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"oneseg: error: {tmp_path / 'none'}: no such file or folder"
    )


def test_an_unknown_format_is_one_line(tmp_path, capsys):
    code = main(["data", "convert", "--from", "voc", str(tmp_path), "--to", "coco", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "oneseg: error: --from: got 'voc', expected one of labelme, masks, yolo, ade_jsonl"
    )
