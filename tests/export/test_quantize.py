"""`oneseg quantize`: a calibrated INT8 QDQ file, its report, what stays float, bad inputs."""

from __future__ import annotations

import json

import onnx
import pytest

from oneseg.cli import main
from oneseg.export.quantize import float_nodes, is_network_node, quantize_onnx
from oneseg.export.runtime import OnnxEngine, read_description


@pytest.fixture(scope="module")
def panoptic_onnx(tmp_path_factory, synth_data, tiny_checkpoint):
    """A fixed-size (1x3x64x64) panoptic export of the tiny random model of the synth classes."""
    folder = tmp_path_factory.mktemp("quant")
    path = folder / "tiny.onnx"
    args = [
        "export",
        f"results_dir={folder}",
        f"export.checkpoint={tiny_checkpoint}",
        f"export.onnx_file={path}",
        "export.task=panoptic",
        "export.batch_size=1",
        "export.input_height=64",
        "export.input_width=64",
    ]
    assert main(args) == 0
    return path


def quantize_args(tmp_path, synth_data, source, *extra) -> list[str]:
    val = synth_data["val"]
    return [
        "quantize",
        f"results_dir={tmp_path}",
        f"quantize.onnx_file={source}",
        "quantize.num_calib_images=2",
        "quantize.report_images=2",
        f"dataset.quant_calibration_dataset.images_dir={synth_data['train']['images']}",
        f"dataset.val.images={val['images']}",
        f"dataset.val.annotations={val['panoptic_json']}",
        f"dataset.val.panoptic={val['panoptic']}",
        "dataset.augmentation.eval_min_size=64",
        "dataset.workers=0",
        *extra,
    ]


def test_quantize_writes_int8_file_and_report(tmp_path, synth_data, panoptic_onnx):
    assert main(quantize_args(tmp_path, synth_data, panoptic_onnx)) == 0
    target = tmp_path / "quantize" / "model_int8.onnx"
    report = json.loads((tmp_path / "quantize" / "quantize_report.json").read_text())
    assert report["int8"]["mb"] < report["fp32"]["mb"]
    for name in ("fp32", "int8"):
        assert report[name]["latency_ms"] > 0 and report[name]["val_images"] == 2
        assert 0 <= report[name]["pq"] <= 100
    description = read_description(target)
    assert description["task"] == "panoptic"
    assert description["quantization"]["weights"] == "int8 per-channel"
    proto = onnx.load(str(target))
    quantized = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert quantized, "weights and activations of Conv/MatMul/Gemm are quantized"
    engine = OnnxEngine(target, threads=1)
    outputs = engine.run(_image(64))
    assert outputs["panoptic_map"].shape == (1, 64, 64)


def _image(size: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)


def test_keep_float_groups_keep_the_wrapper_float(tmp_path, synth_data, panoptic_onnx):
    """With every op type quantizable, the default groups leave the post-processing, softmax
    and grid sampling without Q/DQ; an empty list quantizes inside the post-processing too."""
    images = sorted(synth_data["train"]["images"].iterdir())[:2]
    proto = onnx.load(str(panoptic_onnx))
    network_inputs = {i for n in proto.graph.node if is_network_node(n) for i in n.input}
    wrapper = {n.name for n in proto.graph.node if not is_network_node(n)}
    assert wrapper and len(wrapper) < len(proto.graph.node)
    kept = float_nodes(proto, ["postprocess", "softmax", "grid_sample"])
    assert wrapper <= set(kept)
    # the normalisation feeds the first convolution, whose input is necessarily quantized
    after = {
        n.name for n in proto.graph.node if n.name in wrapper and not set(n.output) & network_inputs
    }
    assert any(n.op_type == "GridSample" and n.name in kept for n in proto.graph.node)

    def quantized_wrapper_outputs(groups):
        """Post-processing nodes whose results are rounded to 8 bits (feed a QuantizeLinear)."""
        target = tmp_path / f"q{len(groups)}.onnx"
        quantize_onnx(panoptic_onnx, target, images, keep_float=groups, op_types=[])
        graph = onnx.load(str(target)).graph
        q_inputs = {i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input}
        return [n.name for n in graph.node if n.name in after and set(n.output) & q_inputs]

    assert not quantized_wrapper_outputs(["postprocess", "softmax", "grid_sample"])
    assert quantized_wrapper_outputs([])


def test_missing_calibration_folder_is_named(tmp_path, synth_data, panoptic_onnx, capsys):
    args = quantize_args(tmp_path, synth_data, panoptic_onnx)
    args = [a for a in args if "images_dir" not in a]
    assert main([*args, f"dataset.quant_calibration_dataset.images_dir={tmp_path / 'nope'}"]) != 0
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and len(err.strip().splitlines()) == 1
    assert main(args) != 0
    assert "quant_calibration_dataset.images_dir is empty" in capsys.readouterr().err
