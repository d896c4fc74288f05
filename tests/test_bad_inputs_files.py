"""Catalogue, third round: files and data that were read silently wrong or refused with the
wrong exit code. Each is now one line naming the file (or key) with exit 2; see
docs/reliability.md for the list."""

import json
import tarfile
from pathlib import Path

import pytest
from test_bad_inputs import _fails, _json, _spec_file

from oneseg import cli
from oneseg.errors import EXIT_BAD_INPUT

# one line on stderr is what these tests read: Lightning's log handler must write there too
pytestmark = pytest.mark.usefixtures("lightning_logs_to_this_stderr")


def _edit_label_map(data: Path, edit) -> Path:
    path = data / "label_map.json"
    entries = _json(path)
    edit(entries)
    path.write_text(json.dumps(entries))
    return path


# ------------------------------------------------------------------ label maps
@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda e: e[1].update(id=e[0]["id"]), ["duplicate category ids"]),
        (lambda e: e[1].pop("id"), ["categories[1] has no integer `id`"]),
        (lambda e: e[1].update(color=[1, 2]), ["categories[1]", "`color` is not [R, G, B]"]),
        (lambda e: e[1].update(color=["red", 0, 0]), ["`color` is not [R, G, B]"]),
        (lambda e: e[1].pop("isthing"), ["categories[1]", "has no `isthing`"]),
        (lambda e: e[1].update(id=2**31), ["categories[1]: id 2147483648 is outside"]),
    ],
)
def test_label_map_entries_are_bad_input(tmp_path, data, tiny_model_cfg, capsys, edit, words):
    path = _edit_label_map(data, edit)
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    _fails(["train", "-e", spec], EXIT_BAD_INPUT, capsys, f"label map {path}", *words)


def test_instance_label_map_without_isthing_means_things(tmp_path, data):
    from oneseg.data.label_map import LabelMap

    label_map = LabelMap.from_categories([{"id": 1, "name": "car"}], "x", require_isthing=False)
    assert label_map.isthing == [True]


# ------------------------------------------------------------------ annotations
def test_instance_annotation_without_segmentation_is_refused(
    tmp_path, data, tiny_model_cfg, capsys
):
    from oneseg.config import DataSource
    from oneseg.data.build import build_reader, load_label_map
    from oneseg.data.records import DataError
    from oneseg.spec import load_spec

    panoptic = _json(data / "train" / "panoptic.json")
    image = panoptic["images"][0]
    instance = {
        "images": [image],
        "categories": panoptic["categories"],
        "annotations": [{"id": 7, "image_id": image["id"], "category_id": 1, "bbox": [0, 0, 9, 9]}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instance))
    spec = load_spec(_spec_file(tmp_path, data, tiny_model_cfg), ["dataset.type=coco"])
    source = DataSource(images=str(data / "train" / "images"), annotations=str(path))
    reader = build_reader(spec.dataset, source, load_label_map(spec.dataset), "x")
    with pytest.raises(DataError, match="annotation 7: no `segmentation`"):
        reader.load_annotation(reader.records[0])


def test_panoptic_segment_listed_twice_stops_training(tmp_path, data, tiny_model_cfg, capsys):
    path = data / "train" / "panoptic.json"
    content = _json(path)
    infos = content["annotations"][0]["segments_info"]
    infos.append(dict(infos[0], category_id=infos[-1]["category_id"]))
    path.write_text(json.dumps(content))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    _fails(["train", "-e", spec], EXIT_BAD_INPUT, capsys, path, "segment id listed twice")


def test_batch_size_above_the_data_is_a_spec_error(tmp_path, data, tiny_model_cfg, capsys):
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["train", "-e", spec, "dataset.batch_size=50"]
    _fails(argv, EXIT_BAD_INPUT, capsys, "spec error: dataset.batch_size: got 50")


def test_data_check_reads_an_images_archive(tmp_path, data, tiny_model_cfg, capsys):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data / "val" / "images", arcname="images")
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["data", "check", "-e", str(spec), f"dataset.val.images={archive}", "--json"]
    assert cli.main(argv) == 0, capsys.readouterr().out
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["images"]["val"] == 4


# ------------------------------------------------------------------ image lists
def test_list_file_not_utf8_names_the_file(tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys):
    listing = tmp_path / "images.txt"
    listing.write_bytes(b"a.png\n\xff\xfe.png\n")
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["inference", "-e", spec, f"inference.checkpoint={tiny_checkpoint}"]
    _fails([*argv, f"inference.images={listing}"], EXIT_BAD_INPUT, capsys, listing, "UTF-8")


def test_list_file_of_secrets_is_refused_without_showing_them(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    listing = tmp_path / "environ.txt"
    listing.write_text("HOME=/root\nAWS_SECRET_ACCESS_KEY=abc123\n")
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["inference", "-e", spec, f"inference.checkpoint={tiny_checkpoint}"]
    line = _fails([*argv, f"inference.images={listing}"], EXIT_BAD_INPUT, capsys, listing, "line 1")
    assert "abc123" not in line and "HOME" not in line
    status = tmp_path / "results" / "inference" / "status.json"
    assert "abc123" not in status.read_text()


def test_bad_image_name_with_a_newline_is_shown_whole(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    images = tmp_path / "images"
    images.mkdir()
    (images / "bad\nname.png").write_bytes(b"not a png")
    good = sorted((data / "val" / "images").iterdir())[0]
    (images / good.name).write_bytes(good.read_bytes())
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["inference", "-e", spec, f"inference.checkpoint={tiny_checkpoint}"]
    assert cli.main([str(a) for a in [*argv, f"inference.images={images}"]]) == 0
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if "skipped a bad image" in x]
    assert "bad\\nname.png: " in line


def test_output_names_never_collide():
    from oneseg.engine.inference import output_names, relative_paths

    root = Path("/data")
    files = ["a.jpg", "a.png", "a_jpg.png", "x/y.jpg", "x__y.png", "B.png", "b.png", "c.png"]
    names = output_names(relative_paths([root / f for f in files], root))
    assert len({n.casefold() for n in names}) == len(files), names
    assert names[-1] == "c"  # a stem nobody else has stays as it was
    assert names == output_names(relative_paths([root / f for f in files], root))  # stable


def test_colliding_stems_keep_every_result(tmp_path, data, tiny_model_cfg, tiny_checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((data / "val" / "images").iterdir())
    for name, source in zip(["a.png", "a.jpg", "a_jpg.png"], sources):
        (images / name).write_bytes(source.read_bytes())  # a.jpg holds PNG bytes: PIL reads it
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["inference", "-e", spec, f"inference.checkpoint={tiny_checkpoint}"]
    argv += [f"inference.images={images}", "inference.tasks=[semantic]", "inference.overlay=false"]
    assert cli.main([str(a) for a in argv]) == 0
    written = list((tmp_path / "results" / "inference").rglob("*.png"))
    assert len(written) == 3, written


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.update(model_cfg={}), ["'model_cfg' entry is missing or empty"]),
        (lambda c: c.pop("label_map"), ["'label_map' entry is missing or empty"]),
        (lambda c: c["model_cfg"].update(hidden_dim=10**6), ["model.hidden_dim", "at most"]),
        (lambda c: c["model_cfg"].update(nheads=3), ["model.hidden_dim", "nheads (3)"]),
    ],
)
def test_checkpoint_entries_are_checked_before_building(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys, monkeypatch, change, words
):
    import torch

    from oneseg.model import build

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    change(ckpt)
    planted = tmp_path / "planted.pth"
    torch.save(ckpt, planted)
    monkeypatch.setattr(build, "build_backbone", lambda *a, **k: pytest.fail("model built"))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["evaluate", "-e", spec, f"evaluate.checkpoint={planted}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, planted, *words)
