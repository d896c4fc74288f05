"""A catalogue of bad inputs and faults, each as a user meets it through the command line.

Every expected failure is one line on stderr naming the file, key or id and what to do, with
exit code 2 (bad input), 1 (failed) or 143 (stopped by SIGTERM). Each test names its case.
"""

import json
import os
import random
import shutil
import signal
import struct
import warnings
import zlib
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from oneseg import cli
from oneseg.convert.safe_load import read_weights_only
from oneseg.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_STOPPED, CheckpointError

# ------------------------------------------------------------------------------ helpers
# one line on stderr is what these tests read: Lightning's log handler must write there too
pytestmark = pytest.mark.usefixtures("lightning_logs_to_this_stderr")


def _source(root: Path, split: str) -> dict:
    return {
        "images": str(root / split / "images"),
        "annotations": str(root / split / "panoptic.json"),
        "panoptic": str(root / split / "panoptic"),
    }


def _spec_file(tmp_path, data: Path, tiny_model_cfg, **sections) -> Path:
    """A spec of the tiny model on `data`, results in tmp_path/results; sections merged in."""
    values = {
        "results_dir": str(tmp_path / "results"),
        "model": asdict(tiny_model_cfg) | {"loss": {"train_num_points": 64}},
        "dataset": {
            "train": [_source(data, "train")],
            "val": _source(data, "val"),
            "label_map": str(data / "label_map.json"),
            "batch_size": 2,
            "workers": 0,
            "augmentation": {
                "train_min_size": [64],
                "train_max_size": 128,
                "crop_size": [64, 64],
                "eval_min_size": 64,
                "eval_max_size": 128,
            },
        },
        "train": {"num_epochs": 1, "max_steps": 2, "log_every_n_steps": 1},
    }
    for name, section in sections.items():
        if isinstance(section, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **section}
        else:
            values[name] = section
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _fails(argv, code, capsys, *words) -> str:
    """Run the CLI; assert the exit code and that stderr ends in one `oneseg:` line holding
    every word, with no traceback. Returns that line."""
    assert cli.main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("oneseg: ")]
    assert len(lines) == 1, err
    for word in words:
        assert str(word) in lines[0], lines[0]
    return lines[0]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels and that holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------ case 1
def test_1_truncated_image_in_evaluate_names_file_and_image_id(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    image = sorted((data / "val" / "images").iterdir())[1]
    image.write_bytes(image.read_bytes()[:200])
    # two loader workers: the error crosses a process boundary and still reads as one line
    spec = _spec_file(tmp_path, data, tiny_model_cfg, dataset={"workers": 2})
    image_id = next(
        i["id"]
        for i in _json(data / "val" / "panoptic.json")["images"]
        if i["file_name"] == image.name
    )
    argv = ["evaluate", "-e", spec, f"evaluate.checkpoint={tiny_checkpoint}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, image, f"image {image_id}", "cannot decode")


def test_1_checkpoint_of_another_model_is_one_line(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["train", "-e", spec, f"model.pretrained={tiny_checkpoint}", "model.hidden_dim=48"]
    _fails(argv, EXIT_BAD_INPUT, capsys, tiny_checkpoint, "weights of another model", "shape")


def test_1_results_dir_that_is_a_file(tmp_path, data, tiny_model_cfg, capsys):
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    (tmp_path / "afile").write_text("x")
    argv = ["train", "-e", spec, f"results_dir={tmp_path / 'afile'}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, "results_dir", "afile is a file")


def test_1_evaluate_split_without_images(tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys):
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["evaluate", "-e", spec, "evaluate.split=test", f"evaluate.checkpoint={tiny_checkpoint}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, "evaluate.split", "dataset.test names no images")


def test_1_garbage_backbone_weights(tmp_path, data, tiny_model_cfg, capsys):
    garbage = tmp_path / "backbone.pth"
    garbage.write_bytes(random.Random(0).randbytes(300))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["train", "-e", spec, f"train.pretrained_backbone={garbage}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, garbage, "not a weights file")


@pytest.mark.parametrize("seed", range(40))
def test_1_any_garbage_weights_file_is_bad_input(tmp_path, seed):
    # random bytes fail in many places of torch's unpickler (IndexError, EOFError, ...)
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(random.Random(seed).randbytes(16 + 37 * seed))
    with pytest.raises(CheckpointError, match="not a weights file"):
        read_weights_only(garbage)


def test_1_invalid_annotation_json(tmp_path, data, tiny_model_cfg, capsys):
    (data / "train" / "panoptic.json").write_text('{"images": [')
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    _fails(["train", "-e", spec], EXIT_BAD_INPUT, capsys, "panoptic.json", "not valid JSON")


def test_1_debug_shows_the_traceback(tmp_path, data, tiny_model_cfg, capsys):
    (data / "train" / "panoptic.json").write_text('{"images": [')
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    assert cli.main(["--debug", "train", "-e", str(spec)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("oneseg: error:")


# ------------------------------------------------------------------------------ case 2
def test_2_decompression_bomb_is_a_bad_image(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    images = data / "val" / "images"
    bomb = images / sorted(p.name for p in images.iterdir())[0]
    _png_header(bomb, 30000, 30000)
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    # data check: one error row naming the file and the key that raises the limit
    assert cli.main(["data", "check", "-e", str(spec), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [row] = [p for p in report["problems"] if p["file"] == str(bomb)]
    assert "max_image_pixels" in row["message"] and row["severity"] == "error"
    # inference: reported and skipped, the other images done
    argv = [
        "inference",
        "-e",
        spec,
        f"inference.checkpoint={tiny_checkpoint}",
        f"inference.images={images}",
    ]
    assert cli.main([str(a) for a in argv]) == 0
    assert f"skipped a bad image: {bomb}" in capsys.readouterr().err
    status = (tmp_path / "results" / "inference" / "status.json").read_text().splitlines()
    kpi = json.loads(status[-1])["kpi"]
    assert kpi["bad_images"] == 1 and kpi["segmented"] == len(list(images.iterdir())) - 1


def test_2_max_image_pixels_sets_the_limit(tmp_path, data, tiny_model_cfg, capsys):
    spec = _spec_file(tmp_path, data, tiny_model_cfg)  # the images are 64x64 = 4096 pixels
    assert cli.main(["data", "check", "-e", str(spec), "dataset.max_image_pixels=4000"]) == 1
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("error\t")]
    # every image and panoptic PNG of both splits: 6 of each
    assert len(rows) == 12 and all("raise dataset.max_image_pixels" in r for r in rows)
    assert sum("/images/" in r for r in rows) == 6


# ------------------------------------------------------------------------------ case 3
def test_3_segment_without_category_id(tmp_path, data, tiny_model_cfg, capsys):
    path = data / "train" / "panoptic.json"
    content = _json(path)
    segment = content["annotations"][0]["segments_info"][0]
    del segment["category_id"]
    path.write_text(json.dumps(content))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    assert cli.main(["data", "check", "-e", str(spec)]) == 1
    out = capsys.readouterr().out
    image_id = content["annotations"][0]["image_id"]
    assert f"image {image_id} / segment {segment['id']}\tno category_id" in out

    from oneseg.config import DataSource
    from oneseg.data.build import build_reader, load_label_map
    from oneseg.data.records import DataError
    from oneseg.spec import load_spec

    cfg = load_spec(spec).dataset
    reader = build_reader(cfg, DataSource(**_source(data, "train")), load_label_map(cfg), "x")
    with pytest.raises(DataError, match=f"image {image_id}, segment {segment['id']}: no"):
        reader.load_annotation(reader.records[0])


def test_3_image_without_file_name(tmp_path, data, tiny_model_cfg, capsys):
    path = data / "train" / "panoptic.json"
    content = _json(path)
    del content["images"][1]["file_name"]
    path.write_text(json.dumps(content))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    assert cli.main(["data", "check", "-e", str(spec)]) == 1
    image_id = content["images"][1]["id"]
    assert f"image {image_id}\tno file_name" in capsys.readouterr().out
    _fails(["train", "-e", spec], EXIT_BAD_INPUT, capsys, path, "images[1] has no `file_name`")


# ------------------------------------------------------------------------------ case 4
def test_4_duplicate_image_ids_are_refused(tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys):
    path = data / "val" / "panoptic.json"
    content = _json(path)
    content["images"][1]["id"] = content["images"][0]["id"]
    path.write_text(json.dumps(content))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["evaluate", "-e", spec, f"evaluate.checkpoint={tiny_checkpoint}"]
    _fails(argv, EXIT_BAD_INPUT, capsys, path, f"image id {content['images'][0]['id']}", "twice")


# ------------------------------------------------------------------------------ case 5
def test_5_panoptic_json_without_annotations(tmp_path, data, tiny_model_cfg, capsys):
    path = data / "train" / "panoptic.json"
    content = _json(path)
    del content["annotations"]
    path.write_text(json.dumps(content))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    line = _fails(["train", "-e", spec], EXIT_BAD_INPUT, capsys, path, "no `annotations` list")
    assert "batch_size" not in line


# ------------------------------------------------------------------------------ case 7
def test_7_sigterm_during_training_exits_143(tmp_path, data, tiny_model_cfg, capsys, monkeypatch):
    from oneseg.engine import callbacks

    original = callbacks.StatusCallback.on_train_batch_end

    def terminate_after_step_1(self, trainer, module, *args):
        original(self, trainer, module, *args)
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(callbacks.StatusCallback, "on_train_batch_end", terminate_after_step_1)
    spec = _spec_file(tmp_path, data, tiny_model_cfg, train={"max_steps": 50, "num_epochs": 50})
    line = _fails(["train", "-e", spec], EXIT_STOPPED, capsys)
    assert line == "oneseg: stopped (SIGTERM); run the same command to resume"
    folder = tmp_path / "results" / "train"
    last = json.loads((folder / "status.json").read_text().splitlines()[-1])
    assert last["status"] == "FAILURE" and "stopped" in last["message"]
    assert not (folder / "model_crash.ckpt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI put it back


# ------------------------------------------------------------------------------ case 8
def test_8_a_results_folder_in_use_is_refused(tmp_path, data, tiny_model_cfg, capsys):
    from oneseg.experiment import ActionRun
    from oneseg.spec import load_spec

    spec_path = _spec_file(tmp_path, data, tiny_model_cfg)
    with ActionRun(load_spec(spec_path), "inference"):  # another run writing there
        argv = ["inference", "-e", spec_path, f"inference.checkpoint={spec_path}"]
        argv += [f"inference.images={data / 'val' / 'images'}"]
        _fails(argv, EXIT_BAD_INPUT, capsys, "in use by another oneseg inference run", "process")
    # once that run ends the folder is free again
    with ActionRun(load_spec(spec_path), "inference"):
        pass


# ------------------------------------------------------------------------------ case 9
def test_9_override_cannot_replace_a_scalar_section(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"results_dir: {tmp_path}\ntrain: 5\n")
    line = _fails(["train", "-e", spec, "train.seed=1"], EXIT_BAD_INPUT, capsys)
    assert line == "oneseg: spec error: train: got 5, expected a mapping"


# ------------------------------------------------------------------------------ case 10
class _Payload:
    """Unpickling this creates a file: the sign that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    "key",
    [
        "train.resume_training_checkpoint_path",
        "train.pretrained_model",
        "model.pretrained",
        "train.pretrained_backbone",
    ],
)
def test_10_no_user_file_is_unpickled_fully(
    tmp_path, data, tiny_model_cfg, capsys, monkeypatch, key
):
    import torch

    marker = tmp_path / "code_ran"
    planted = tmp_path / "planted.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, planted)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # as torch < 2.6 behaves
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    _fails(["train", "-e", spec, f"{key}={planted}"], EXIT_BAD_INPUT, capsys, planted)
    assert not marker.exists()


def test_10_planted_latest_checkpoint_is_not_unpickled(
    tmp_path, data, tiny_model_cfg, capsys, monkeypatch
):
    import torch

    marker = tmp_path / "code_ran"
    folder = tmp_path / "results" / "train"
    folder.mkdir(parents=True)
    torch.save({"x": _Payload(marker)}, folder / "model_epoch001.ckpt")
    (folder / "model_latest.ckpt").symlink_to("model_epoch001.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    _fails(["train", "-e", spec], EXIT_BAD_INPUT, capsys, "model_epoch001.ckpt")
    assert not marker.exists()


# ------------------------------------------------------------------------------ case 11
def test_11_changed_model_in_a_results_dir_is_refused_before_writing(
    tmp_path, data, tiny_model_cfg, capsys
):
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    folder = tmp_path / "results" / "train"
    folder.mkdir(parents=True)
    from oneseg.spec import dump_spec, load_spec

    earlier = dump_spec(load_spec(spec, ["model.hidden_dim=48"]))
    (folder / "experiment.yaml").write_text(earlier)
    (folder / "model_epoch001.ckpt").write_bytes(b"")
    (folder / "model_latest.ckpt").symlink_to("model_epoch001.ckpt")
    _fails(
        ["train", "-e", spec],
        EXIT_BAD_INPUT,
        capsys,
        "results_dir holds a run of another model",
        "model.hidden_dim: 48 there, 32 now",
        "use a new results_dir",
    )
    assert (folder / "experiment.yaml").read_text() == earlier
    assert not (folder / "status.json").exists()


# ------------------------------------------------------------------------------ case 12
def test_12_label_map_mismatch_in_evaluate_is_printed(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    other = _json(data / "label_map.json")
    other[0]["id"] = 99
    (tmp_path / "other.json").write_text(json.dumps(other))
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["evaluate", "-e", str(spec), f"evaluate.checkpoint={tiny_checkpoint}"]
    argv += [f"dataset.label_map={tmp_path / 'other.json'}", "evaluate.tasks=[semantic]"]
    cli.main(argv)
    err = capsys.readouterr().err
    assert "warning: dataset.label_map lists category ids" in err


def test_12_skips_and_left_out_tensors_are_reported(
    tmp_path, data, tiny_model_cfg, tiny_checkpoint, capsys
):
    image = sorted((data / "train" / "images").iterdir())[0]
    image.write_bytes(b"not an image")
    spec = _spec_file(tmp_path, data, tiny_model_cfg, train={"max_steps": 1})
    argv = ["train", "-e", spec, "dataset.on_error=skip", "model.num_queries=6"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([*map(str, argv), f"train.pretrained_model={tiny_checkpoint}"]) == 0
    err = capsys.readouterr().err
    # Lightning's noise stays out (the run has 1 step per epoch, logging every 10)
    shown = err + "\n".join(str(w.message) for w in caught)
    for noise in ("litlogger", "LeafSpec", "log_every_n_steps", "TPU available"):
        assert noise not in shown, noise
    assert "train.pretrained_model:" in err and "start from initial values" in err
    assert "query" in err  # the query tensors, whose count changed, are named
    status = (tmp_path / "results" / "train" / "status.json").read_text().splitlines()
    assert json.loads(status[-1])["kpi"]["skipped_samples"] >= 1


def test_12_failure_at_step_0_writes_no_crash_checkpoint(
    tmp_path, data, tiny_model_cfg, capsys, monkeypatch
):
    from oneseg.engine.module import SegmentationModule

    def broken(self, batch, batch_idx):
        raise RuntimeError("exploded at the first step")

    monkeypatch.setattr(SegmentationModule, "training_step", broken)
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    line = _fails(["train", "-e", spec], EXIT_FAILED, capsys, "exploded at the first step")
    assert "--debug" in line
    assert not (tmp_path / "results" / "train" / "model_crash.ckpt").exists()


def test_12_data_check_piped_output_and_json(tmp_path, data, tiny_model_cfg, capsys):
    deep = data / ("a_very_long_folder_name_" * 6)
    shutil.move(data / "val", deep)
    spec = _spec_file(tmp_path, data, tiny_model_cfg)
    argv = ["data", "check", "-e", str(spec)]
    argv += [
        f"dataset.val.{k}={v.replace('/val', '/' + deep.name)}"
        for k, v in _source(data, "val").items()
    ]
    (deep / "images" / sorted(p.name for p in (deep / "images").iterdir())[0]).unlink()
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("error\t")]
    assert row.split("\t")[1].startswith(str(deep))  # the whole path on one line
    assert cli.main([*argv, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["errors"] == 1
    assert report["problems"][0]["message"] == "file not found"
