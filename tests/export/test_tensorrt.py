"""`gen_trt_engine` up to the TensorRT calls: the plan, the sidecar, the version check, and one
clear line when TensorRT or a GPU is missing."""

from __future__ import annotations

import json

import onnx
import pytest

from oneseg.cli import main
from oneseg.config import ExperimentConfig
from oneseg.export.engines import load_engines
from oneseg.export.qdq import is_network_node
from oneseg.export.runtime import read_description
from oneseg.export.tensorrt import (
    build_plan,
    engine_description,
    engine_task_files,
    read_engine_description,
)

HAS_TENSORRT = False
try:  # noqa: SIM105 - the tests below take either branch
    import tensorrt  # noqa: F401

    HAS_TENSORRT = True
except ImportError:
    pass


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("trt")
    path = folder / "tiny_semantic.onnx"
    args = [
        "export",
        f"results_dir={folder}",
        f"export.checkpoint={tiny_checkpoint}",
        f"export.onnx_file={path}",
        "export.batch_size=1",
        "export.input_height=64",
        "export.input_width=64",
    ]
    assert main(args) == 0
    return path


def spec_for(onnx_file, **tensorrt) -> ExperimentConfig:
    spec = ExperimentConfig()
    spec.gen_trt_engine.onnx_file = str(onnx_file)
    for key, value in tensorrt.items():
        setattr(spec.gen_trt_engine.tensorrt, key, value)
    return spec


def test_fp16_plan_keeps_overflowing_and_postprocessing_layers_fp32(onnx_file, tmp_path):
    plan = build_plan(spec_for(onnx_file, data_type="fp16"), tmp_path)
    assert plan.min_shape == plan.opt_shape == plan.max_shape == (1, 3, 64, 64)
    assert plan.engine_file == tmp_path / "model.engine"
    proto = onnx.load(str(onnx_file))
    by_name = {n.name: n for n in proto.graph.node}
    kept = set(plan.fp32_layers)
    assert {n.name for n in proto.graph.node if not is_network_node(n)} <= kept
    assert any(by_name[name].op_type == "LayerNormalization" for name in kept)
    assert not any(by_name[name].op_type == "Conv" for name in kept)
    assert build_plan(spec_for(onnx_file, data_type="fp32"), tmp_path).fp32_layers == []


def test_plan_refuses_batches_the_file_cannot_take(onnx_file, tmp_path):
    with pytest.raises(ValueError, match="exported for batches of 1"):
        build_plan(spec_for(onnx_file, max_batch_size=4), tmp_path)
    with pytest.raises(ValueError, match="min_batch_size <= opt_batch_size"):
        build_plan(spec_for(onnx_file, min_batch_size=2, opt_batch_size=1), tmp_path)


def test_int8_plan_needs_calibration_images(onnx_file, tmp_path, synth_data):
    spec = spec_for(onnx_file, data_type="int8", calibration_images=2)
    spec.dataset.quant_calibration_dataset.images_dir = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing: calibration folder not found"):
        build_plan(spec, tmp_path)
    spec.dataset.quant_calibration_dataset.images_dir = str(synth_data["train"]["images"])
    assert len(build_plan(spec, tmp_path).calibration_images) == 2
    cache = tmp_path / "calib.cache"
    cache.write_bytes(b"cache")
    spec.gen_trt_engine.tensorrt.calibration_cache = str(cache)
    spec.dataset.quant_calibration_dataset.images_dir = ""
    assert build_plan(spec, tmp_path).calibration_images == []  # the cache serves


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given without TensorRT")
def test_without_tensorrt_one_line_names_what_is_missing(onnx_file, tmp_path, capsys):
    code = main(
        ["gen_trt_engine", f"results_dir={tmp_path}", f"gen_trt_engine.onnx_file={onnx_file}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "TensorRT is not installed" in err[0] and "tensorrt" in err[0]
    assert not (tmp_path / "gen_trt_engine" / "model.engine").exists()


def fake_engine(folder, onnx_file, version: str):
    """An engine file and sidecar as gen_trt_engine writes them (the engine bytes are not read
    before the version check)."""
    plan = build_plan(spec_for(onnx_file), folder)
    plan.engine_file.parent.mkdir(parents=True, exist_ok=True)
    plan.engine_file = folder / "tiny_semantic.engine"
    plan.engine_file.write_bytes(b"not an engine")
    description = engine_description(read_description(onnx_file), plan, version)
    (folder / "tiny_semantic.json").write_text(json.dumps(description))
    return plan.engine_file


def test_engine_of_another_tensorrt_version_is_named(onnx_file, tmp_path):
    engine = fake_engine(tmp_path, onnx_file, "8.6.1")
    description = read_engine_description(engine, None)
    assert description["tensorrt"]["version"] == "8.6.1" and description["task"] == "semantic"
    assert engine_task_files(engine) == {"semantic": engine}
    with pytest.raises(
        ValueError, match="tiny_semantic.engine: built with TensorRT 8.6.1, this is"
    ):
        read_engine_description(engine, "10.13.0")
    (tmp_path / "other.engine").write_bytes(b"x")
    with pytest.raises(ValueError, match="other.engine: no other.json beside it"):
        read_engine_description(tmp_path / "other.engine", None)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message given without TensorRT")
def test_evaluate_with_an_engine_needs_tensorrt(onnx_file, tmp_path):
    engine = fake_engine(tmp_path, onnx_file, "10.13.0")
    with pytest.raises(ValueError, match="TensorRT is not installed"):
        load_engines(engine, ["semantic"], "evaluate.trt_engine")
