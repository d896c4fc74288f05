"""`oneseg export` through the CLI: files, sidecar, refusals, and the errors of bad files."""

from __future__ import annotations

import json

import pytest

from oneseg.cli import main
from oneseg.data.label_map import LabelMap
from oneseg.export import onnx_export
from oneseg.export.runtime import OnnxEngine, read_description, task_files


@pytest.fixture(scope="module")
def exported_all(tmp_path_factory, deploy_checkpoints, synth_data):
    """One fixed-size (batch 1, 64x64) export of every task of the tiny OneFormer."""
    out = tmp_path_factory.mktemp("export")
    code = main(
        [
            "export",
            f"results_dir={out}",
            f"export.checkpoint={deploy_checkpoints['oneformer']}",
            f"export.onnx_file={out / 'tiny.onnx'}",
            "export.task=all",
            "export.batch_size=1",
            "export.input_height=64",
            "export.input_width=64",
            f"dataset.val.images={synth_data['val']['images']}",
        ]
    )
    assert code == 0
    return out


def test_export_all_writes_one_checked_file_per_task(exported_all, deploy_label_map):
    for task in ("semantic", "instance", "panoptic"):
        path = exported_all / f"tiny_{task}.onnx"
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar == read_description(path)  # the file describes itself the same way
        assert sidecar["task"] == task and sidecar["arch"] == "oneformer"
        assert LabelMap.from_categories(sidecar["classes"]).names == deploy_label_map.names
        assert sidecar["input"]["height"] == 64 and sidecar["input"]["dtype"] == "uint8"
        assert sidecar["check_image"].endswith(".png") or sidecar["check_image"].endswith(".jpg")
        assert sidecar["check"], "the ONNX Runtime comparison is recorded"
        # how >8-bit images become the uint8 input, done before the graph as in training
        assert sidecar["intensity"] == {
            "mode": "percentile",
            "low": 1.0,
            "high": 99.8,
            "per": "image",
        }
    files = task_files(exported_all / "tiny_instance.onnx")
    assert sorted(files) == ["instance", "panoptic", "semantic"]


def test_a_file_that_disagrees_is_not_left(tmp_path, deploy_checkpoints, monkeypatch, capsys):
    def disagree(path, graph, images):
        raise onnx_export.ExportError("output semantic_map: 3.00% of the pixels differ")

    monkeypatch.setattr(onnx_export, "check_with_onnxruntime", disagree)
    target = tmp_path / "bad.onnx"
    code = main(
        [
            "export",
            f"results_dir={tmp_path}",
            f"export.checkpoint={deploy_checkpoints['oneformer']}",
            f"export.onnx_file={target}",
            "export.batch_size=1",
            "export.input_height=64",
            "export.input_width=64",
        ]
    )
    assert code == 1
    assert "differ" in capsys.readouterr().err
    assert not target.exists() and not list(tmp_path.glob("*.onnx*"))


def test_size_not_a_multiple_of_the_divisibility_is_refused(tmp_path, deploy_checkpoints, capsys):
    code = main(
        [
            "export",
            f"results_dir={tmp_path}",
            f"export.checkpoint={deploy_checkpoints['oneformer']}",
            "export.batch_size=1",
            "export.input_height=100",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "spec error: export.input_height/input_width: got 100x640, expected multiples" in err


def test_corrupt_onnx_file_is_named(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="broken.onnx: not a readable ONNX model"):
        OnnxEngine(bad)


def test_onnx_of_another_task_or_classes_is_named(exported_all, deploy_label_map):
    path = exported_all / "tiny_panoptic.onnx"
    engine = OnnxEngine(path, threads=1)
    with pytest.raises(ValueError, match="tiny_panoptic.onnx: a panoptic graph; semantic"):
        engine.check(task="semantic")
    fewer = LabelMap.from_categories(deploy_label_map.to_categories()[:3])
    with pytest.raises(ValueError, match="tiny_panoptic.onnx: exported for 5 classes"):
        engine.check(label_map=fewer)
    engine.check(task="panoptic", label_map=deploy_label_map)
