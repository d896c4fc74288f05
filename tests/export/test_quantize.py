"""`oneseg quantize`: a calibrated INT8 QDQ file, its report, what stays float (groups, regions on
the pre-processed graph, infinite calibrated ranges, the measured choice of `quantize.search`),
bad inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from oneseg.cli import main
from oneseg.export.qdq import KEEP_FLOAT, float_nodes, is_network_node, node_regions, quantize_onnx
from oneseg.export.quantize import choose_regions
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


@pytest.fixture(scope="module")
def calibration(synth_data):
    return sorted(synth_data["train"]["images"].iterdir())[:2]


def weight_is_quantized(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    producer = {o: n.op_type for n in graph.node for o in n.output}
    return producer.get(node.input[1]) == "DequantizeLinear"


def test_regions_hold_on_the_preprocessed_graph(tmp_path, panoptic_onnx, calibration):
    """The pre-processing fuses MatMul + Add into Gemm nodes of new names and adds Reshapes
    named after nothing: each still gets its module's region, so a float region keeps every
    weight float and a quantized one quantizes them."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(panoptic_onnx), str(prepared), skip_symbolic_shape=True)
    proto = onnx.load(str(prepared))
    where = node_regions(proto)
    source_names = {n.name for n in onnx.load(str(panoptic_onnx)).graph.node}
    renamed = [n for n in proto.graph.node if n.name not in source_names]
    fused = [n for n in renamed if n.op_type == "Gemm"]
    assert fused and all(n.name.startswith(f"/model/{where[n.name]}/") for n in fused)
    feeding = {i: where[n.name] for n in fused for i in n.input}
    reshapes = [n for n in renamed if n.op_type == "Reshape" and n.output[0] in feeding]
    assert reshapes and all(where[n.name] == feeding[n.output[0]] for n in reshapes)

    target = tmp_path / "int8.onnx"
    regions = {"backbone": "all", "pixel_decoder": "float", "decoder": "float"}
    done = quantize_onnx(panoptic_onnx, target, calibration, regions=regions)
    assert done["regions"] == regions
    graph = onnx.load(str(target)).graph
    where = node_regions(onnx.load(str(target)))
    matrix = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    floats = [n for n in matrix if where[n.name] in ("pixel_decoder", "decoder")]
    assert floats and not any(weight_is_quantized(graph, n) for n in floats)
    backbone = [n for n in matrix if where[n.name] == "backbone"]
    assert backbone and all(weight_is_quantized(graph, n) for n in backbone)


def test_infinite_ranges_stay_float(tmp_path, panoptic_onnx, calibration):
    """Masked attention adds -inf: with every region quantized, the nodes of those tensors
    stay float, the file is recorded so, and its scores are finite."""
    target = tmp_path / "all.onnx"
    regions = {"backbone": "all", "pixel_decoder": "all", "decoder": "all"}
    done = quantize_onnx(panoptic_onnx, target, calibration, regions=regions)
    unbounded = set(done["float_for_infinite_ranges"])
    assert unbounded
    graph = onnx.load(str(target)).graph
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    for node in graph.node:
        if node.name in unbounded:
            assert not set(node.output) & quantized_inputs, node.name
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    outputs = OnnxEngine(target, threads=1).run(image)
    assert np.isfinite(outputs["pred_scores"]).all()


def test_choose_regions_by_gain_within_the_budget():
    rows = [
        {"region": "a", "mode": "all", "gain_ms": 5.0, "drop": 0.8},
        {"region": "a", "mode": "op_types", "gain_ms": 3.0, "drop": 0.1},
        {"region": "b", "mode": "all", "gain_ms": 4.0, "drop": 0.5},
        {"region": "b", "mode": "op_types", "gain_ms": 2.0, "drop": 0.0},
        {"region": "c", "mode": "all", "gain_ms": 0.5, "drop": -0.2},  # under the noise floor
        {"region": "d", "mode": "op_types", "gain_ms": -1.0, "drop": 0.0},  # slower
    ]
    names = ["a", "b", "c", "d"]
    # a/all (0.8) is taken first; b/all would pass the budget, b/op_types fits
    assert choose_regions(rows, names, 1.0, 1.0) == {
        "a": "all",
        "b": "op_types",
        "c": "float",
        "d": "float",
    }
    assert choose_regions(rows, names, 1.5, 1.0)["b"] == "all"
    assert choose_regions(rows, names, 0.0, 1.0) == {
        "a": "float",
        "b": "op_types",
        "c": "float",
        "d": "float",
    }
    assert choose_regions(rows, names, 1.0, 0.1)["c"] == "all"


def test_search_records_its_measurements(tmp_path, synth_data, panoptic_onnx):
    extra = ["quantize.search=true", "quantize.latency_runs=2", "quantize.threads=1"]
    assert main(quantize_args(tmp_path, synth_data, panoptic_onnx, *extra)) == 0
    target = tmp_path / "quantize" / "model_int8.onnx"
    search = read_description(target)["quantization"]["search"]
    report = json.loads((tmp_path / "quantize" / "quantize_report.json").read_text())
    assert report["quantization"]["search"] == search
    measured = {(r["region"], r["mode"]) for r in search["candidates"]}
    regions = {r for r, _ in measured}
    assert {"backbone", "pixel_decoder", "decoder"} <= regions
    assert measured == {(r, m) for r in regions for m in ("op_types", "all")}
    chosen = read_description(target)["quantization"]["regions"]
    assert set(chosen) == regions and set(chosen.values()) <= {"float", "op_types", "all"}
    taken = [r for r in search["candidates"] if chosen[r["region"]] == r["mode"]]
    assert all(r["gain_ms"] > search["min_gain_ms"] for r in taken)
    within = search["float_pq"] - search["chosen_pq"] <= search["max_metric_drop"]
    assert within or set(chosen.values()) == {"float"}


def test_attention_products_stay_float(tmp_path, panoptic_onnx, calibration):
    """`attention_matmul` keeps the products of two computed tensors float where their
    neighbours are float (`op_types` regions): ONNX Runtime then runs none of them as
    QLinearMatMul, as it does without the group."""
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(panoptic_onnx), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    products = {
        n.name for n in graph.node if n.op_type == "MatMul" and not constants & set(n.input)
    }
    assert products

    def integer_products(groups: tuple[str, ...]) -> set[str]:
        target = tmp_path / f"{len(groups)}.onnx"
        quantize_onnx(panoptic_onnx, target, calibration, keep_float=groups, regions={})
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{len(groups)}.opt.onnx")
        ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        optimised = onnx.load(options.optimized_model_filepath).graph.node
        return {n.name for n in optimised if n.op_type == "QLinearMatMul"} & products

    assert not integer_products(KEEP_FLOAT)
    assert integer_products(tuple(g for g in KEEP_FLOAT if g != "attention_matmul"))


def test_histogram_calibration_bins_around_infinite_ranges(tmp_path, panoptic_onnx, calibration):
    """Percentile histograms cannot bin -inf: the masked tensors keep their min-max range and
    stay float, every other tensor is binned, and the file has finite scales only."""
    target = tmp_path / "percentile.onnx"
    regions = {"backbone": "all", "pixel_decoder": "all", "decoder": "all"}
    done = quantize_onnx(panoptic_onnx, target, calibration, regions=regions, method="percentile")
    assert done["calibration_method"] == "percentile" and done["float_for_infinite_ranges"]
    graph = onnx.load(str(target)).graph
    scales = [i for i in graph.initializer if i.name.endswith("_scale")]
    assert scales and all(np.isfinite(onnx.numpy_helper.to_array(s)).all() for s in scales)
