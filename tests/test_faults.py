"""Catalogue, third round: faults and hostile inputs. A full disk, a killed run's temporaries,
credentials in a spec, a resumed seeded study, broken study databases, exported files that
are not ours, archives that point outside, pictures that would eat the memory."""

import errno
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import _fails, _spec_file

from oneseg import cli
from oneseg.errors import EXIT_BAD_INPUT, EXIT_FAILED, NoSpace
from oneseg.io import remove_stale_temporaries, temp_path, write_atomic

# one line on stderr is what these tests read: Lightning's log handler must write there too
pytestmark = pytest.mark.usefixtures("lightning_logs_to_this_stderr")


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name or ".oneseg-" in p.name]


# ------------------------------------------------------------------ full disk
def test_write_atomic_on_a_full_disk_names_the_folder_and_leaves_nothing(tmp_path):
    def fill(tmp: Path) -> None:
        tmp.write_bytes(b"x" * (3 << 20))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NoSpace, match=f"no space left on {tmp_path}: 3 MB needed"):
        write_atomic(tmp_path / "big.bin", fill)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_is_one_line_and_no_partial_files(
    tmp_path, data, tiny_model_cfg, capsys, monkeypatch
):
    import lightning as L

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"x" * (1 << 20))  # part of a checkpoint, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", full_disk)
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    folder = tmp_path / "results" / "train"
    line = _fails(["train", "-e", spec], EXIT_FAILED, capsys, f"no space left on {folder}: ")
    assert line.endswith("MB needed")
    assert _leftovers(folder) == [] and not list(folder.glob("*.ckpt"))


# ------------------------------------------------------------------ a killed run's debris
def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".model.onnx.oneseg-{dead}-onnx.tmp"
    stale_dir = tmp_path / f"oneseg-{dead}-abc123"
    ours = temp_path(tmp_path / "model_best.ckpt")
    for path in (stale_file, ours):
        path.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "prepared.onnx").write_text("x")
    (tmp_path / "model.onnx").write_text("kept")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert ours.exists() and f"oneseg-{alive}-" in ours.name
    assert (tmp_path / "model.onnx").read_text() == "kept"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    """A 64x64 semantic export, run where a killed export left its temporaries."""
    folder = tmp_path_factory.mktemp("export")
    dead = _dead_pid()
    planted = [folder / f".model.onnx.oneseg-{dead}-onnx.tmp", folder / f"oneseg-{dead}-q1w2"]
    planted[0].write_bytes(b"half an onnx file")
    planted[1].mkdir()
    argv = ["export", f"results_dir={folder}", f"export.checkpoint={tiny_checkpoint}"]
    argv += [f"export.onnx_file={folder / 'model.onnx'}", "export.batch_size=1"]
    argv += ["export.input_height=64", "export.input_width=64"]
    assert cli.main(argv) == 0
    return folder / "model.onnx", planted


def test_a_rerun_of_export_removes_a_killed_exports_temporaries(exported):
    path, planted = exported
    assert path.is_file() and not any(p.exists() for p in planted)
    assert _leftovers(path.parent) == []


def test_export_overwrite_false_on_an_existing_file_is_bad_input(
    tmp_path, exported, tiny_checkpoint, capsys
):
    path, _ = exported
    argv = ["export", f"results_dir={tmp_path}", f"export.checkpoint={tiny_checkpoint}"]
    argv += [f"export.onnx_file={path}", "export.overwrite=false"]
    _fails(argv, EXIT_BAD_INPUT, capsys, path, "exists", "export.overwrite")


# ------------------------------------------------------------------ exported files not ours
def _broken_metadata(path: Path, tmp_path: Path) -> Path:
    import onnx

    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "oneseg":
            description = json.loads(prop.value)
            del description["classes"]
            prop.value = json.dumps(description)
    out = tmp_path / "broken.onnx"
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p, t: _truncated(p, t), ["not a readable ONNX model"]),
        (lambda p, t: _foreign(t), ["not exported by `oneseg export`"]),
        (_broken_metadata, ["metadata is broken", "'classes'"]),
    ],
)
def test_exported_files_that_are_not_ours_are_bad_input(
    tmp_path, data, tiny_model_cfg, exported, capsys, make, words
):
    bad = make(exported[0], tmp_path)
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["inference", "-e", spec, f"inference.onnx_file={bad}", "inference.tasks=[semantic]"]
    argv += [f"inference.images={data / 'val' / 'images'}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, bad, *words)


def _truncated(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / "truncated.onnx"
    out.write_bytes(path.read_bytes()[:5000])
    return out


def _foreign(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
    graph.output[0].name = "y"
    out = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(out))
    return out


def test_empty_calibration_folder_is_bad_input(tmp_path, exported, capsys):
    empty = tmp_path / "calib"
    empty.mkdir()
    argv = ["quantize", f"results_dir={tmp_path}", f"quantize.onnx_file={exported[0]}"]
    argv += [f"dataset.quant_calibration_dataset.images_dir={empty}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, empty, "holds no image")


# ------------------------------------------------------------------ credentials
def test_storage_password_is_in_no_file_or_line(tmp_path, data, tiny_model_cfg, capsys):
    spec = _spec_file(
        tmp_path,
        data,
        tiny_model_cfg,
        automl={"storage": "postgresql://bob:hunter2@127.0.0.1:1/db", "metric": "loss"},
    )
    assert cli.main(["automl", "-e", str(spec)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "hunter2" not in err and "bob:***@" in err
    for path in (tmp_path / "results").rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path


# ------------------------------------------------------------------ AutoML studies
def test_a_resumed_seeded_study_does_not_search_the_same_point_again(tmp_path):
    from oneseg.automl.space import search_space
    from oneseg.automl.study import load_study, open_storage
    from oneseg.spec import load_spec

    spec = load_spec(None, ["automl.seed=0", "automl.algorithm=random"])
    space = search_space(spec)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = load_study(spec, open_storage(url), space, 1).ask()
    first_value = first.suggest_float("x", 0.0, 1.0)  # the process is then killed
    resumed = load_study(spec, open_storage(url), space, 1).ask()
    assert resumed.suggest_float("x", 0.0, 1.0) != first_value
    # a fresh study with that seed still draws what it drew before: the seed is honoured
    again = load_study(spec, open_storage(f"sqlite:///{tmp_path / 'b.db'}"), space, 1).ask()
    assert again.suggest_float("x", 0.0, 1.0) == first_value


@pytest.mark.parametrize(
    "storage, words",
    [
        ("not a url", ["automl.storage: got 'not a url', not a database URL"]),
        (None, ["study.db: not a usable study database", "move it away"]),
    ],
)
def test_broken_study_storage_is_one_line(tmp_path, data, tiny_model_cfg, capsys, storage, words):
    spec = _spec_file(tmp_path, data, tiny_model_cfg, automl={"metric": "loss"})
    folder = tmp_path / "results" / "automl"
    folder.mkdir(parents=True)
    (folder / "study.db").write_bytes(b"not sqlite " * 400)
    argv = ["automl", "-e", spec] + ([f"automl.storage={storage}"] if storage else [])
    _fails(argv, EXIT_BAD_INPUT, capsys, *words)


# ------------------------------------------------------------------ archives
def _archive_with(tmp_path: Path, add) -> Path:
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        add(tar)
    return archive


def _member(name: str, kind=tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.png"),
        _member("images/link.png", tarfile.SYMTYPE, "/etc/passwd"),
        _member("images/hard.png", tarfile.LNKTYPE, "../../outside"),
        _member("images/dev", tarfile.CHRTYPE),
    ],
)
def test_archive_entries_pointing_outside_are_refused(tmp_path, member):
    from oneseg.data.archive import unpack_archive
    from oneseg.data.records import DataError

    archive = _archive_with(tmp_path, lambda tar: tar.addfile(member))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=f"{archive}: cannot unpack"):
        unpack_archive(archive, cache)
    assert not (tmp_path / "escaped.png").exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_archive_absolute_names_stay_inside_the_cache(tmp_path):
    from oneseg.data.archive import unpack_archive

    outside = tmp_path / "outside.png"
    archive = _archive_with(tmp_path, lambda tar: tar.addfile(_member(str(outside))))
    folder = unpack_archive(archive, tmp_path / "cache")
    assert not outside.exists()
    assert [p.name for p in folder.rglob("outside.png")] == ["outside.png"]


# ------------------------------------------------------------------ pictures
def test_overlay_of_a_thin_strip_stays_bounded():
    from oneseg.data.label_map import LabelMap
    from oneseg.visualize import overlay_semantic

    label_map = LabelMap.from_categories([{"id": 1, "name": "a", "isthing": 0}])
    image = np.zeros((16, 20000, 3), np.uint8)
    picture = overlay_semantic(image, np.zeros((16, 20000), np.int32), label_map, min_side=384)
    assert picture.shape[:2] == (16, 20000)  # not enlarged 24x, to 384 x 480000
    small = overlay_semantic(image[:, :100], np.zeros((16, 100), np.int32), label_map, min_side=384)
    assert small.shape[:2] == (384, 2400)  # a small picture is still enlarged


def test_class_chart_of_ten_thousand_classes_stays_small(tmp_path):
    from PIL import Image

    from oneseg.engine.evaluate import write_class_chart

    per_class = {f"c{i}": {"iou": 50.0, "isthing": i % 2 == 0} for i in range(10_000)}
    write_class_chart(tmp_path / "chart.png", per_class)
    with Image.open(tmp_path / "chart.png") as chart:
        assert chart.height < 4000, chart.size


# ------------------------------------------------------------------ faults during export
def test_full_disk_during_export_is_one_line_and_no_partial_files(
    tmp_path, tiny_checkpoint, capsys, monkeypatch
):
    from oneseg.export import onnx_export

    def full_disk(graph, images, path, settings):
        Path(path).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx_export, "_trace", full_disk)
    out = tmp_path / "out" / "model.onnx"
    argv = ["export", f"results_dir={tmp_path}", f"export.checkpoint={tiny_checkpoint}"]
    argv += [f"export.onnx_file={out}", "export.input_height=64", "export.input_width=64"]
    _fails(argv, EXIT_FAILED, capsys, f"no space left on {out.parent}")
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------------ pickles
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("seed", range(12))
def test_garbage_detectron2_pickle_is_bad_input(tmp_path, seed):
    import random

    from oneseg.convert.safe_load import read_weights_only
    from oneseg.errors import CheckpointError

    garbage = tmp_path / "model_final.pkl"
    garbage.write_bytes(random.Random(seed).randbytes(16 + 41 * seed))
    with pytest.raises(CheckpointError, match="not a detectron2 weights pickle"):
        read_weights_only(garbage)


def test_detectron2_pickle_with_code_is_refused_unrun(tmp_path, data, tiny_model_cfg, capsys):
    import pickle

    marker = tmp_path / "code_ran"
    planted = tmp_path / "model_final.pkl"
    planted.write_bytes(pickle.dumps({"model": {"w": _Payload(marker)}}))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["evaluate", "-e", spec, f"evaluate.checkpoint={planted}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, planted, "has no place in a weights file")
    assert not marker.exists()


def test_a_killed_unpacking_is_removed_by_the_next(tmp_path, data):
    from oneseg.data.archive import unpack_archive

    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(data / "val" / "images", arcname="images")
    cache = tmp_path / "cache"
    stale = cache / f".images-0123.oneseg-{_dead_pid()}-unpack"
    (stale / "images").mkdir(parents=True)
    folder = unpack_archive(archive, cache)
    assert not stale.exists() and len(list(folder.iterdir())) == 4


def test_secrets_in_a_written_spec_are_masked():
    from oneseg.spec import dump_spec, load_spec

    spec = load_spec(None, ["serve.api_key=s3cr3t-key", "automl.storage=mysql://u:pw1@h/db"])
    text = dump_spec(spec)
    assert "s3cr3t-key" not in text and "pw1" not in text
    assert "api_key: '***'" in text and "mysql://u:***@h/db" in text
    assert "api_key: ''" in dump_spec(load_spec(None))  # nothing to hide: left as it is
