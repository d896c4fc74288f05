"""An INT8 QDQ copy of an exported ONNX file: calibration and what stays float.

ONNX Runtime's quantizer writes the QDQ graph (per-channel int8 weights, uint8 activations) after
its pre-processing (shape inference, MatMul + Add -> Gemm fusion), calibrated on image files.
What stays in float:

- the `keep_float` groups: `postprocess`, every node of the export wrapper outside the network
  (input normalisation, mask upsampling, softmax / argmax / top-k / the panoptic rules), whose
  class ids, masks and scores meet thresholds (0.5, 0.8) an 8-bit step would move; `softmax`,
  attention softmaxes, whose small probabilities 8 bits cannot resolve; `grid_sample`, the
  deformable sampling of the pixel decoder (its offsets are positions); `attention_matmul`,
  products of two computed tensors (attention scores, their sums over values, mask logits):
  8 bits on both sides, and ONNX Runtime's QLinearMatMul ran such products at 0.67-0.85x of
  float MatMul on this project's AVX-512 VNNI CPU; or an ONNX node name;
- per network region (`backbone`, `pixel_decoder`, `decoder`, ...: the model's top-level
  modules; `model` for the nodes of its own forward), its mode: `float` (nothing quantized),
  `op_types` (only `op_types`, default Conv / MatMul / Gemm: where the arithmetic is) or `all`
  (every op type ONNX Runtime quantizes, so that integer tensors flow from one quantized op to
  the next without a DequantizeLinear / QuantizeLinear pair between them);
- every node reading or writing a tensor whose calibrated range is infinite (the -inf of masked
  attention): 8 bits over an infinite range hold nothing.

A float node whose inputs and outputs are all quantized (inside an `all` region) is still run as
an integer kernel: ONNX Runtime fuses DequantizeLinear -> op -> QuantizeLinear (QLinearSoftmax,
QLinearMatMul). The groups hold where a neighbour is float, as in `op_types` regions.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from oneseg.constants import IMAGE_SUFFIXES
from oneseg.data.image_io import read_image
from oneseg.export.inputs import resized_batch
from oneseg.export.onnx_export import METADATA_KEY
from oneseg.export.runtime import read_description
from oneseg.io import write_json_atomic

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # where the arithmetic is
GROUPS = ("postprocess", "softmax", "grid_sample", "attention_matmul")
KEEP_FLOAT = GROUPS
REGION_MODES = ("float", "op_types", "all")
DEFAULT_REGIONS = {"backbone": "all", "decoder": "float"}


def calibration_images(folder: str, count: int) -> list[Path]:
    """The first `count` images of `folder` (sorted); one clear error when there are none."""
    if not folder:
        raise ValueError(
            "dataset.quant_calibration_dataset.images_dir is empty: name a folder of images to "
            "calibrate on"
        )
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: calibration folder not found")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{path}: calibration folder holds no image")
    return images[:count]


def engine_inputs(description: dict, image: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] uint8 of an [H, W, 3] picture at the exported input size (B = the fixed
    batch, or 1)."""
    spec = description["input"]
    batch = 1 if spec["batch_size"] == -1 else spec["batch_size"]
    return resized_batch(image, spec["height"], spec["width"], batch).numpy()


class ImageReader:
    """onnxruntime's CalibrationDataReader over image files."""

    def __init__(self, paths: list[Path], description: dict):
        self.paths = list(paths)
        self.description = description
        self._next = 0

    def get_next(self):
        if self._next >= len(self.paths):
            return None
        image = read_image(self.paths[self._next])
        self._next += 1
        return {"images": engine_inputs(self.description, image)}

    def rewind(self) -> None:
        self._next = 0


def is_network_node(node: onnx.NodeProto) -> bool:
    """Whether a node belongs to the network (not to the export wrapper around it). The
    TorchScript exporter names nodes by module path (`/model/...`); the dynamo exporter
    records the module classes in the node's metadata."""
    hierarchy = next(
        (p.value for p in node.metadata_props if p.key.endswith("class_hierarchy")), ""
    )
    if hierarchy:
        return "oneseg.model." in hierarchy
    return node.name.startswith("/model/")


def _own_region(node: onnx.NodeProto) -> str | None:
    """The network region a node names (`backbone`, `pixel_decoder`, `decoder`, ...), '' for
    the export wrapper, None for a node an optimiser made (no module path in its name)."""
    scopes = next((p.value for p in node.metadata_props if p.key.endswith("name_scopes")), "")
    if scopes:  # dynamo: ['', 'model', 'backbone', ...]
        parts = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
        return parts[parts.index("model") + 1] if "model" in parts[:-1] else ""
    if node.name.startswith("/model/"):
        parts = node.name.split("/")  # /model/backbone/.../Conv; /model/Cast: the model's own
        return parts[2] if len(parts) > 3 else "model"
    if node.name.startswith("/") or any(
        p.key.endswith("class_hierarchy") for p in node.metadata_props
    ):
        return ""
    return None


def node_regions(proto: onnx.ModelProto) -> dict[str, str]:
    """Node name -> network region ('' = the export wrapper). A node an optimiser made (the
    Gemm of a MatMul + Add fusion keeps its path; the Reshapes around it do not) takes the region
    of the nodes it feeds or, failing that, of those feeding it."""
    nodes = list(proto.graph.node)
    regions = {n.name: _own_region(n) for n in nodes}
    consumers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n.name)
        for name in n.output:
            producer[name] = n.name
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if regions[n.name] is not None:
                continue
            near = [c for o in n.output for c in consumers.get(o, [])]
            near += [producer[i] for i in n.input if i in producer]
            known = [regions[m] for m in near if regions[m] is not None]
            if known:
                regions[n.name] = known[0]
                changed = True
    return {name: region or "" for name, region in regions.items()}


def float_nodes(
    proto: onnx.ModelProto,
    groups: list[str],
    regions: dict[str, str] | None = None,
    op_types: list[str] | tuple[str, ...] = QUANTIZED_OPS,
) -> list[str]:
    """Names of the nodes kept in float: those of the `keep_float` groups (see the module
    docstring) and, per network region, by its mode in `regions` (float: every node; op_types:
    the nodes of other op types than `op_types`, [] = none; all: none; a region not named is
    `op_types`)."""
    regions = dict(regions or {})
    for region, mode in regions.items():
        if mode not in REGION_MODES:
            raise ValueError(f"quantize.regions.{region}: {mode!r} is not one of {REGION_MODES}")
    where = node_regions(proto)
    constants = {i.name for i in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    names = set()
    for node in proto.graph.node:
        region = where[node.name]
        if "postprocess" in groups and not region:
            names.add(node.name)
        if "softmax" in groups and node.op_type == "Softmax":
            names.add(node.name)
        if "grid_sample" in groups and node.op_type == "GridSample":
            names.add(node.name)
        products = node.op_type == "MatMul" and not constants & set(node.input)
        if "attention_matmul" in groups and products:
            names.add(node.name)
        mode = regions.get(region, "op_types")
        if region and mode == "float":
            names.add(node.name)
        if region and mode == "op_types" and op_types and node.op_type not in op_types:
            names.add(node.name)
    known = {n.name for n in proto.graph.node}
    for entry in groups:
        if entry not in GROUPS:
            if entry not in known:
                raise ValueError(f"quantize.keep_float: {entry!r} is no group and no node name")
            names.add(entry)
    return sorted(names)


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _collect(kind, model: Path, images, description, folder: str, skip: set[str], **options):
    """Ranges by one of ONNX Runtime's calibrators over every float tensor but `skip`."""

    class Selected(kind):
        def select_tensors_to_calibrate(self, proto):
            tensors, value_infos = super().select_tensors_to_calibrate(proto)
            return tensors - skip, value_infos

    calibrator = Selected(model, None, str(Path(folder) / f"{kind.__name__}.onnx"), **options)
    calibrator.augment_graph()
    calibrator.execution_providers = ["CPUExecutionProvider"]
    calibrator.create_inference_session()
    calibrator.collect_data(ImageReader(images, description))
    return calibrator.compute_data()


def calibrate(model: Path, images: list[Path], description: dict, method: str, cache: Path) -> None:
    """Activation ranges of every float tensor of `model` over `images`, saved to `cache` (ONNX
    Runtime's calibration cache, read back by `quantize_static`). Histograms (entropy,
    percentile) cannot bin the -inf of attention masks: those tensors keep their min-max range
    (and later stay float), the others are binned."""
    from onnxruntime.quantization.calibrate import (
        EntropyCalibrater,
        MinMaxCalibrater,
        PercentileCalibrater,
        TensorsData,
        save_tensors_data,
    )

    calibration_method(method)  # one clear error for an unknown method
    with tempfile.TemporaryDirectory(dir=cache.parent) as folder:
        ranges = _collect(MinMaxCalibrater, model, images, description, folder, set())
        if method != "minmax":
            infinite = {name for name, data in ranges.data.items() if not _finite(data)}
            kind, options = {
                "entropy": (EntropyCalibrater, {"num_bins": 128, "num_quantized_bins": 128}),
                "percentile": (PercentileCalibrater, {"num_bins": 2048, "symmetric": True}),
            }[method]
            binned = _collect(kind, model, images, description, folder, infinite, **options)
            data = dict(binned.data) | {name: ranges.data[name] for name in infinite}
            ranges = TensorsData(binned.calibration_method, data)
        save_tensors_data(ranges, cache)


def _finite(data) -> bool:
    return bool(np.isfinite(np.asarray(data.range_value, dtype=np.float64)).all())


def finite_ranges(cache: Path, target: Path) -> set[str]:
    """Copy the calibration ranges of `cache` to `target` without the tensors whose range is
    not finite (masked attention scores), and return those: a node that reads or writes one
    stays float, as 8 bits over an infinite range hold nothing."""
    from onnxruntime.quantization.calibrate import (
        TensorsData,
        load_tensors_data,
        save_tensors_data,
    )

    ranges = load_tensors_data(cache)
    infinite = {name for name, data in ranges.data.items() if not _finite(data)}
    kept = {name: data for name, data in ranges.data.items() if name not in infinite}
    save_tensors_data(TensorsData(ranges.calibration_method, kept), target)
    return infinite


def quantize_onnx(
    source: str | Path,
    target: str | Path,
    images: list[Path],
    *,
    keep_float: list[str] | tuple[str, ...] = KEEP_FLOAT,
    per_channel: bool = True,
    method: str = "minmax",
    op_types: list[str] | tuple[str, ...] = QUANTIZED_OPS,
    regions: dict[str, str] | None = None,
    calibration_cache: Path | None = None,
    record: dict | None = None,
) -> dict:
    """Write the INT8 QDQ model of `source` to `target`; returns what was done.

    op_types: the op types quantized in a region of mode `op_types`; [] = every op type ONNX
    Runtime quantizes. regions: region -> float | op_types | all (default DEFAULT_REGIONS).
    calibration_cache: a JSON file of activation ranges, written by the first call and read by
    the next ones (ranges of every tensor, so any choice of regions can use it). record: more
    entries for the file's `quantization` description."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = Path(source), Path(target)
    regions = dict(DEFAULT_REGIONS if regions is None else regions)
    description = read_description(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.int8.onnx")
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer warns once per 1-D weight it skips
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as folder:
            prepared = Path(folder) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            cache = Path(calibration_cache or Path(folder) / "ranges.json")
            if not cache.is_file():
                calibrate(prepared, images, description, method, cache)
            # names after the pre-processing: its MatMul + Add -> Gemm fusion renames nodes
            proto = onnx.load(str(prepared))
            finite = Path(folder) / "finite_ranges.json"
            excluded, unbounded = _float_node_names(
                proto, cache, finite, keep_float, regions, op_types
            )
            quantize_static(
                str(prepared),
                str(tmp),
                None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=sorted(
                    {n.op_type for n in proto.graph.node if n.name not in excluded}
                ),
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(excluded),
                calibrate_method=calibration_method(method),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                calibration_cache_path=finite,
            )
        quantized = onnx.load(str(tmp))
        description = dict(description)
        description["quantization"] = {
            "format": "QDQ",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "uint8",
            "calibration_images": len(images),
            "calibration_method": method,
            "op_types": list(op_types) or "all",
            "regions": regions,
            "keep_float": list(keep_float),
            "float_nodes": len(excluded),
            "float_for_infinite_ranges": sorted(unbounded),
            **(record or {}),
        }
        onnx.helper.set_model_props(quantized, {METADATA_KEY: json.dumps(description)})
        onnx.save(quantized, str(tmp))
        os.replace(tmp, target)
    finally:
        root_logger.setLevel(level)
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".data").unlink(missing_ok=True)

    write_json_atomic(target.with_suffix(".json"), description)
    return description["quantization"]


def _float_node_names(
    proto: onnx.ModelProto, cache: Path, finite: Path, keep_float, regions, op_types
) -> tuple[set[str], set[str]]:
    """(every node left in float, those of them left so for an infinite calibrated range);
    writes the finite ranges of `cache` to `finite` for the quantizer."""
    excluded = set(float_nodes(proto, keep_float, regions, op_types))
    infinite = finite_ranges(cache, finite)
    unbounded = {n.name for n in proto.graph.node if infinite & {*n.input, *n.output}} - excluded
    return excluded | unbounded, unbounded


def calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"quantize.calibration_method: {method!r} is not one of {CALIBRATION_METHODS}"
        )
    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
