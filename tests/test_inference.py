"""The Predictor and the inference action: inputs of every kind, outputs that other tools read
back, skipping finished images, overwriting, and bad images reported and skipped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from oneseg import cli
from oneseg.data.coco_panoptic import CocoPanopticReader
from oneseg.data.label_map import LabelMap
from oneseg.engine.inference import list_images, output_names, relative_paths, run_inference
from oneseg.experiment import ActionRun
from oneseg.model.postprocess import PostprocessConfig
from oneseg.predictor import Predictor
from oneseg.spec import spec_from_dict

TASKS = ["panoptic", "instance", "semantic"]
# random weights are never confident: let every query take part
LOOSE = {"object_mask_threshold": 0.0, "overlap_threshold": 0.0}
LOOSE_POST = PostprocessConfig(object_mask_threshold=0.0, overlap_threshold=0.0)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(
        tiny_checkpoint, device="cpu", min_size=64, postprocess=LOOSE_POST
    )


@pytest.fixture
def image_folder(tmp_path, synth_data):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(synth_data["val"]["images"].iterdir())[:3]:
        shutil.copy(path, folder / path.name)
    return folder


def _spec(tmp_path, checkpoint, images, **inference):
    return spec_from_dict(
        {
            "results_dir": str(tmp_path / "results"),
            "model": LOOSE,
            "dataset": {"augmentation": {"eval_min_size": 64}},
            "inference": {"checkpoint": str(checkpoint), "images": str(images), **inference},
        }
    )


def _run(spec):
    with ActionRun(spec, "inference") as run:
        run_inference(spec, run)
    return run


def _status(run):
    return [json.loads(line) for line in run.status_file.read_text().splitlines()]


def test_predictor_takes_a_path_a_pil_image_or_an_array(predictor, image_folder):
    path = sorted(image_folder.iterdir())[0]
    array = np.asarray(Image.open(path).convert("RGB"))
    for task in TASKS:
        results = [predictor(source, task=task) for source in (path, Image.open(path), array)]
        for other in results[1:]:
            for name, value in vars(results[0]).items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(value, getattr(other, name), err_msg=name)
                else:
                    assert value == getattr(other, name), name
    panoptic = predictor(array, "panoptic")
    assert panoptic.segment_ids.shape == array.shape[:2] and panoptic.segments
    listed = {s["id"] for s in panoptic.segments}
    assert set(np.unique(panoptic.segment_ids)) - {0} == listed
    label_map = predictor.label_map
    for segment in panoptic.segments:
        assert segment["category_id"] == label_map.category_ids[segment["label"]]
        assert segment["name"] == label_map.names[segment["label"]]
    instance = predictor(array, "instance")
    assert instance.masks.shape[1:] == array.shape[:2] and instance.masks.dtype == bool
    assert all(label_map.isthing[k] for k in instance.labels)
    semantic = predictor(array, "semantic")
    assert semantic.category_map.shape == array.shape[:2]
    assert set(np.unique(semantic.category_map)) <= set(label_map.category_ids)


def test_outputs_read_back_by_coco_tools(tmp_path, tiny_checkpoint, image_folder, predictor):
    from pycocotools.coco import COCO

    run = _run(_spec(tmp_path, tiny_checkpoint, image_folder, tasks=TASKS))
    out = run.dir
    label_map = LabelMap.from_json(out / "panoptic.json")
    reader = CocoPanopticReader(image_folder, out / "panoptic.json", out / "panoptic", label_map)
    assert len(reader.records) == 3
    for record in reader.records:
        annotation = reader.load_annotation(record)
        expected = predictor(record.image_path, "panoptic")
        np.testing.assert_array_equal(annotation.segment_map, expected.segment_ids)
        assert [label_map.category_ids[s.class_index] for s in annotation.segments] == [
            s["category_id"] for s in expected.segments
        ]
        semantic = np.asarray(Image.open(out / "semantic" / f"{record.image_path.stem}.png"))
        np.testing.assert_array_equal(
            semantic, predictor(record.image_path, "semantic").category_map
        )
        for task in TASKS:
            assert (out / "overlays" / task / f"{record.image_path.stem}.png").is_file()
    coco = COCO(str(out / "images.json"))
    detections = coco.loadRes(str(out / "instance.json"))
    assert len(detections.getAnnIds()) > 0
    assert set(detections.getImgIds()) == set(coco.getImgIds())
    first = coco.loadImgs(coco.getImgIds()[0])[0]
    expected = predictor(image_folder / first["file_name"], "instance")
    masks = [
        detections.annToMask(a) for a in detections.loadAnns(detections.getAnnIds(first["id"]))
    ]
    np.testing.assert_array_equal(np.stack(masks).astype(bool), expected.masks)
    assert run.kpis["segmented"] == 3


def test_rerun_skips_finished_images_overwrite_redoes_them(tmp_path, tiny_checkpoint, image_folder):
    spec = _spec(tmp_path, tiny_checkpoint, image_folder, tasks=["panoptic", "instance"])
    first = _run(spec)
    png = first.dir / "panoptic" / "000001.png"
    stamp = png.stat().st_mtime_ns
    panoptic = json.loads((first.dir / "panoptic.json").read_text())
    instances = json.loads((first.dir / "instance.json").read_text())

    again = _run(spec)
    assert again.kpis["segmented"] == 0 and again.kpis["already_done"] == 3
    assert png.stat().st_mtime_ns == stamp

    # a new task is missing for every image: all are done again, earlier results kept
    spec.inference.tasks = ["panoptic", "instance", "semantic"]
    assert _run(spec).kpis["segmented"] == 3
    # overwrite one image (a list file naming it): the others' entries stay as they were
    listing = tmp_path / "one.txt"
    listing.write_text("# one image\nin/000002.jpg\n")
    spec.inference.images, spec.inference.overwrite = str(listing), True
    assert _run(spec).kpis["segmented"] == 1
    assert json.loads((first.dir / "panoptic.json").read_text()) == panoptic
    assert json.loads((first.dir / "instance.json").read_text()) == instances
    images = json.loads((first.dir / "images.json").read_text())["images"]
    assert [(e["id"], e["name"]) for e in images] == [(1, "000001"), (2, "000002"), (3, "000003")]


def test_bad_images_are_reported_and_skipped(tmp_path, tiny_checkpoint, image_folder, capsys):
    good = sorted(image_folder.iterdir())[0].read_bytes()
    (image_folder / "broken.jpg").write_bytes(good[: len(good) // 3])
    (image_folder / "notes.png").write_text("not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(f"in/{p.name}" for p in sorted(image_folder.iterdir())) + "\n")
    listing.write_text(listing.read_text() + "in/missing.jpg\n")
    run = _run(_spec(tmp_path, tiny_checkpoint, listing, tasks=["panoptic"]))
    assert run.kpis["segmented"] == 3 and run.kpis["bad_images"] == 3
    reported = {line.get("bad_image", "").rsplit("/", 1)[-1] for line in _status(run)}
    assert {"broken.jpg", "notes.png", "missing.jpg"} <= reported
    err = capsys.readouterr().err
    for name in ("broken.jpg", "notes.png", "missing.jpg"):
        assert name in err
    annotations = json.loads((run.dir / "panoptic.json").read_text())["annotations"]
    assert len(annotations) == 3
    assert _status(run)[-1]["status"] == "SUCCESS"


def test_cli_inference_and_missing_checkpoint(tmp_path, tiny_checkpoint, image_folder, capsys):
    code = cli.main(
        [
            "inference",
            f"results_dir={tmp_path / 'r'}",
            f"inference.checkpoint={tiny_checkpoint}",
            f"inference.images={image_folder}/*.jpg",
            "inference.overlay=false",
            "dataset.augmentation.eval_min_size=64",
        ]
    )
    assert code == 0
    assert len(list((tmp_path / "r" / "inference" / "panoptic").glob("*.png"))) == 3
    assert not (tmp_path / "r" / "inference" / "overlays").exists()
    assert cli.main(["inference", f"results_dir={tmp_path / 'r2'}", "inference.images=x"]) != 0
    assert "inference.checkpoint is empty" in capsys.readouterr().err


def test_output_names_are_unique_and_stable(tmp_path):
    for rel in ("a/x.jpg", "b/x.jpg", "b/x.png", "c.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    paths, root = list_images(str(tmp_path / "**" / "*.*"))
    assert root == tmp_path
    names = output_names(relative_paths(paths, root))
    assert names == ["a__x", "b__x_jpg", "b__x_png", "c"]
    with pytest.raises(FileNotFoundError, match="names no image"):
        list_images(str(tmp_path / "nothing*.jpg"))


def test_inference_reads_its_checkpoint_once(tmp_path, tiny_checkpoint, monkeypatch):
    """The model, its label map, thresholds and intensity rule come from one read of the file."""
    import torch

    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    code = cli.main(
        [
            "inference",
            f"results_dir={tmp_path / 'r'}",
            f"inference.checkpoint={tiny_checkpoint}",
            f"inference.images={tmp_path / 'a.jpg'}",
            "inference.overlay=false",
            "dataset.augmentation.eval_min_size=64",
        ]
    )
    assert code == 0
    assert reads.count(str(tiny_checkpoint)) == 1, reads
