"""The `quantize` action: static INT8 post-training quantization of an exported ONNX file.

ONNX Runtime's quantizer writes a QDQ graph with per-channel weight scales, calibrated on
`dataset.quant_calibration_dataset.images_dir`. What stays in float is chosen by name groups
(`quantize.keep_float`):

- `postprocess`: every node of the export wrapper outside the network (input normalisation,
  mask upsampling, softmax / argmax / top-k / the panoptic rules): its outputs are class ids,
  masks and scores whose thresholds (0.5, 0.8) an 8-bit step would move;
- `softmax`: attention softmaxes, whose small probabilities 8 bits cannot resolve;
- `grid_sample`: the deformable sampling of the pixel decoder (its offsets are positions);
- any other entry: an ONNX node name.

Only the op types of `quantize.op_types` are quantized (default Conv, MatMul, Gemm: where the
arithmetic is); `[]` lets ONNX Runtime quantize every op it can, keep_float apart.

The report (`quantize_report.json`) gives file sizes, latency and the metric of the file's task
(PQ / mIoU / AP) for the float and the INT8 file on `dataset.val`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import onnx

from oneseg.constants import IMAGE_SUFFIXES
from oneseg.data.build import build_dataloader
from oneseg.data.image_io import read_image
from oneseg.data.intensity import choose_intensity
from oneseg.engine.evaluator import Evaluator
from oneseg.export.action import resized_batch
from oneseg.export.onnx_export import METADATA_KEY
from oneseg.export.runtime import OnnxEngine, batch_results, read_description
from oneseg.io import write_json_atomic
from oneseg.model.postprocess import PostprocessConfig

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # where the arithmetic is
METRIC_OF = {"panoptic": "pq", "semantic": "miou", "instance": "ap"}


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


def float_nodes(proto: onnx.ModelProto, groups: list[str]) -> list[str]:
    """Names of the nodes `groups` keep in float (see the module docstring)."""
    names = set()
    for node in proto.graph.node:
        if "postprocess" in groups and not is_network_node(node):
            names.add(node.name)
        if "softmax" in groups and node.op_type == "Softmax":
            names.add(node.name)
        if "grid_sample" in groups and node.op_type == "GridSample":
            names.add(node.name)
    known = {n.name for n in proto.graph.node}
    for entry in groups:
        if entry not in ("postprocess", "softmax", "grid_sample"):
            if entry not in known:
                raise ValueError(f"quantize.keep_float: {entry!r} is no group and no node name")
            names.add(entry)
    return sorted(names)


def quantize_onnx(
    source: str | Path,
    target: str | Path,
    images: list[Path],
    *,
    keep_float: list[str],
    per_channel: bool = True,
    method: str = "minmax",
    op_types: list[str] = QUANTIZED_OPS,
) -> dict:
    """Write the INT8 QDQ model of `source` to `target`; returns what was done.

    op_types: ONNX op types to quantize; empty = every op type ONNX Runtime quantizes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = Path(source), Path(target)
    description = read_description(source)
    proto = onnx.load(str(source))
    excluded = float_nodes(proto, keep_float)
    target.parent.mkdir(parents=True, exist_ok=True)
    prepared = target.with_name(f".{target.stem}.{os.getpid()}.pre.onnx")
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.int8.onnx")
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer warns once per 1-D weight it skips
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(tmp),
            ImageReader(images, description),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) or None,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
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
            "keep_float": keep_float,
            "float_nodes": len(excluded),
        }
        onnx.helper.set_model_props(quantized, {METADATA_KEY: json.dumps(description)})
        onnx.save(quantized, str(tmp))
        os.replace(tmp, target)
    finally:
        root_logger.setLevel(level)
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".data").unlink(missing_ok=True)

    write_json_atomic(target.with_suffix(".json"), description)
    return description["quantization"]


def latency_ms(path: Path, image: np.ndarray, runs: int = 10, threads: int = 0) -> float:
    """Median wall time of one run of the file on `image` at its input size, after a warm-up."""
    engine = OnnxEngine(path, providers=["CPUExecutionProvider"], threads=threads)
    inputs = engine_inputs(engine.description, image)
    engine.run(inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.run(inputs)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def val_metrics(spec, path: Path, max_images: int) -> dict:
    """Metrics of the file's task on `dataset.val` (the first `max_images`, 0 = all)."""
    engine = OnnxEngine(path, providers=["CPUExecutionProvider"])
    loader = build_dataloader(
        spec.dataset,
        "val",
        engine.label_map,
        text_list_len=0,
        size_divisibility=engine.size_divisibility,
        train=False,
        batch_size=1,
        intensity=choose_intensity(spec.dataset.intensity, engine.description.get("intensity")),
        tokens=False,
    )
    evaluator = Evaluator(loader.dataset, engine.label_map, PostprocessConfig(), [engine.task])
    for step, batch in enumerate(loader):
        if max_images and step >= max_images:
            break
        evaluator.add_batch(batch, batch_results({engine.task: engine}, batch))
    metrics = evaluator.compute(gather=False)
    metrics.pop("per_class")
    return metrics


def run_quantize(spec, run) -> None:
    cfg = spec.quantize
    if not cfg.onnx_file:
        raise ValueError("quantize.onnx_file is empty: name the ONNX file of `oneseg export`")
    source = Path(cfg.onnx_file)
    description = read_description(source)
    if "quantization" in description:
        raise ValueError(f"{source}: already quantized")
    target = Path(cfg.output_file or Path(run.dir) / "model_int8.onnx")
    if target.exists() and not cfg.overwrite:
        raise ValueError(f"{target}: exists (set quantize.overwrite=true to replace it)")
    images = calibration_images(
        spec.dataset.quant_calibration_dataset.images_dir, cfg.num_calib_images
    )
    run.log("RUNNING", f"calibrating {source} on {len(images)} images")
    done = quantize_onnx(
        source,
        target,
        images,
        keep_float=list(cfg.keep_float),
        per_channel=cfg.per_channel,
        method=cfg.calibration_method,
        op_types=list(cfg.op_types),
    )
    report = {
        "fp32": {"file": str(source), "mb": round(source.stat().st_size / 2**20, 2)},
        "int8": {"file": str(target), "mb": round(target.stat().st_size / 2**20, 2)},
        "quantization": done,
    }
    if cfg.report:
        picture = read_image(images[0])
        task = description["task"]
        for name, path in (("fp32", source), ("int8", target)):
            report[name]["latency_ms"] = round(latency_ms(path, picture), 2)
            if spec.dataset.val.images:
                metrics = val_metrics(spec, path, cfg.report_images)
                report[name][METRIC_OF[task]] = round(metrics[METRIC_OF[task]], 3)
                report[name]["val_images"] = int(metrics["num_images"])
        report["speedup"] = round(report["fp32"]["latency_ms"] / report["int8"]["latency_ms"], 3)
    write_json_atomic(Path(run.dir) / "quantize_report.json", report)
    run.kpis.update(
        {
            f"{k}_{m}": v
            for k in ("fp32", "int8")
            for m, v in report[k].items()
            if isinstance(v, (int, float))
        }
    )
    print(f"quantize: wrote {target}; report {Path(run.dir) / 'quantize_report.json'}")
    print(json.dumps(report, indent=2))
