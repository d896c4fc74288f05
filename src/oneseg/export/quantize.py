"""The `quantize` action: static INT8 post-training quantization of an exported ONNX file.

The INT8 file (`oneseg.export.qdq`) is calibrated on `dataset.quant_calibration_dataset.images_dir`.
What stays float is set by `quantize.keep_float` and, per network region, `quantize.regions`
(float | op_types | all); with `quantize.search=true` the regions' modes are chosen by measuring:

1. each region alone in each mode (`op_types`, `all`), the other regions float: its latency,
   alternated in one process (medians of `quantize.latency_runs`) with the float graph as the
   quantizer pre-processes it (a few % faster than the exported file, whatever is quantized),
   and the metric of the file's task (PQ / mIoU / AP) on `dataset.val`;
2. regions join, largest time saved first, in the mode that saves most while the summed metric
   drops stay within `quantize.max_metric_drop`; a mode saving less than 2 % of the float time,
   or than twice the difference between two timings of the same float graph, is noise;
3. the chosen combination is measured; while it loses more than the budget, the region that saved
   least goes back to float.

The measurements and the choice go into the INT8 file's description (`quantization.search`) and
the report. The report (`quantize_report.json`) gives file sizes, latency (alternated) and the
metric for the float and the INT8 file on `dataset.val`.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from oneseg.data.build import build_dataloader
from oneseg.data.image_io import read_image
from oneseg.data.intensity import choose_intensity
from oneseg.engine.evaluator import Evaluator, evaluate_loader
from oneseg.export.qdq import (
    QUANTIZED_OPS,
    calibration_images,
    engine_inputs,
    node_regions,
    quantize_onnx,
)
from oneseg.export.runtime import OnnxEngine, read_description
from oneseg.io import write_json_atomic
from oneseg.runner import ExportedRunner

METRIC_OF = {"panoptic": "pq", "semantic": "miou", "instance": "ap"}
NOISE = 0.02  # a mode saving less than this share of the float time is not taken (identical
# files timed alternately on a busy machine differ by about that much)


def latencies(paths: list[Path], image: np.ndarray, runs: int, threads: int = 0) -> list[float]:
    """Median ms of one run of each file on `image`, the files alternated within each round (one
    process, so that a busy machine slows them alike), the order rotated between rounds."""
    engines = [OnnxEngine(p, providers=["CPUExecutionProvider"], threads=threads) for p in paths]
    inputs = [engine_inputs(e.description, image) for e in engines]
    for engine, x in zip(engines, inputs):
        engine.run(x)  # warm-up
    times: list[list[float]] = [[] for _ in engines]
    for step in range(runs):
        for k in range(len(engines)):
            i = (k + step) % len(engines)
            start = time.perf_counter()
            engines[i].run(inputs[i])
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t) * 1000) for t in times]


def val_metrics(spec, path: Path, max_images: int) -> dict:
    """Metrics of the file's task on `dataset.val` (the first `max_images`, 0 = all)."""
    engine = OnnxEngine(path, providers=["CPUExecutionProvider"])
    runner = ExportedRunner({engine.task: engine})
    loader = build_dataloader(
        spec.dataset,
        "val",
        runner.label_map,
        text_list_len=0,
        size_divisibility=runner.size_divisibility,
        train=False,
        batch_size=1,
        intensity=choose_intensity(spec.dataset.intensity, runner.description.get("intensity")),
        tokens=False,
    )
    evaluator = Evaluator(loader.dataset, runner.label_map, list(runner.tasks))
    batches = itertools.islice(loader, max_images) if max_images else loader
    evaluate_loader(runner, batches, evaluator)
    metrics = evaluator.compute(gather=False)
    metrics.pop("per_class")
    return metrics


def choose_regions(rows: list[dict], names: list[str], budget: float, min_gain: float) -> dict:
    """region -> mode from the measured rows (region, mode, gain_ms, drop): regions join by time
    saved, largest first, while the summed drops (a gain counts as 0) stay within `budget`."""
    chosen: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: -r["gain_ms"]):
        spent = sum(max(r["drop"], 0.0) for r in chosen.values())
        if row["gain_ms"] <= min_gain or row["region"] in chosen:
            continue
        if spent + max(row["drop"], 0.0) <= budget:
            chosen[row["region"]] = row
    return {name: chosen[name]["mode"] if name in chosen else "float" for name in names}


def spec_settings(cfg) -> dict:
    """The `quantize_onnx` arguments the spec's quantize section sets."""
    return {
        "keep_float": list(cfg.keep_float),
        "per_channel": cfg.per_channel,
        "method": cfg.calibration_method,
        "op_types": list(cfg.op_types),
    }


def search_regions(spec, source: Path, images: list[Path], folder: Path) -> dict:
    """The measured choice of `quantize.regions` (module docstring); returns the measurements,
    `regions` (the choice) and `cache` (the calibration ranges, for the final file)."""
    cfg = spec.quantize
    if not spec.dataset.val.images:
        raise ValueError("quantize.search measures the metric on dataset.val: set dataset.val")
    metric = METRIC_OF[read_description(source)["task"]]
    proto = onnx.load(str(source), load_external_data=False)
    where = node_regions(proto)  # searched: the regions holding a matrix op
    names = sorted({where[n.name] for n in proto.graph.node if n.op_type in QUANTIZED_OPS} - {""})
    cache = folder / "ranges.json"

    def build(regions: dict, path: Path) -> Path:
        quantize_onnx(
            source,
            path,
            images,
            **spec_settings(cfg),
            regions=regions,
            calibration_cache=cache,
        )
        return path

    def score(path: Path) -> float:
        return float(val_metrics(spec, path, cfg.report_images)[metric])

    candidates = [(name, mode) for name in names for mode in ("op_types", "all")]
    paths = [
        build({r: mode if r == name else "float" for r in names}, folder / f"{name}_{mode}.onnx")
        for name, mode in candidates
    ]
    picture = read_image(images[0])
    # gains are counted from the pre-processed float graph (every region float): ONNX Runtime's
    # pre-processing alone makes the exported file a few % faster, and that is no region's doing;
    # timed twice, the difference of its two medians is the noise of a measurement
    baseline = build({r: "float" for r in names}, folder / "float.onnx")
    first, second, source_ms, *times = latencies(
        [baseline, baseline, source, *paths], picture, cfg.latency_runs, cfg.threads
    )
    base_ms, noise = (first + second) / 2, abs(first - second)
    base = score(source)
    rows = []
    for (name, mode), path, ms in zip(candidates, paths, times):
        value = score(path)
        rows.append(
            {"region": name, "mode": mode, "ms": round(ms, 3), metric: round(value, 3)}
            | {"gain_ms": round(base_ms - ms, 3), "drop": round(base - value, 3)}
        )
    min_gain = max(NOISE * base_ms, 2 * noise)
    regions = choose_regions(rows, names, cfg.max_metric_drop, min_gain)
    gains = {r["region"]: r["gain_ms"] for r in rows if regions[r["region"]] == r["mode"]}
    while True:
        value = score(build(regions, folder / "chosen.onnx"))
        if base - value <= cfg.max_metric_drop or not gains:
            break
        least = min(gains, key=gains.get)
        regions[least] = "float"
        gains.pop(least)
    return {
        "float_ms": round(source_ms, 3),
        "preprocessed_float_ms": round(base_ms, 3),
        "min_gain_ms": round(min_gain, 3),
        f"float_{metric}": round(base, 3),
        "candidates": rows,
        "regions": regions,
        f"chosen_{metric}": round(value, 3),
        "max_metric_drop": cfg.max_metric_drop,
        "cache": cache,
    }


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
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        search, regions, cache = None, dict(cfg.regions), None
        if cfg.search:
            run.log("RUNNING", f"measuring the regions of {source}")
            search = search_regions(spec, source, images, Path(folder))
            regions, cache = search.pop("regions"), search.pop("cache")
        run.log("RUNNING", f"calibrating {source} on {len(images)} images")
        done = quantize_onnx(
            source,
            target,
            images,
            **spec_settings(cfg),
            regions=regions,
            calibration_cache=cache,
            record={"search": search} if search else None,
        )
    write_report(spec, run, source, target, images, done)


def write_report(spec, run, source: Path, target: Path, images: list[Path], done: dict) -> None:
    cfg = spec.quantize
    report = {
        "fp32": {"file": str(source), "mb": round(source.stat().st_size / 2**20, 2)},
        "int8": {"file": str(target), "mb": round(target.stat().st_size / 2**20, 2)},
        "quantization": done,
    }
    if cfg.report:
        picture = read_image(images[0])
        metric = METRIC_OF[read_description(source)["task"]]
        speeds = latencies([source, target], picture, cfg.latency_runs, cfg.threads)
        for name, path, ms in zip(("fp32", "int8"), (source, target), speeds):
            report[name]["latency_ms"] = round(ms, 2)
            if spec.dataset.val.images:
                metrics = val_metrics(spec, path, cfg.report_images)
                report[name][metric] = round(metrics[metric], 3)
                report[name]["val_images"] = int(metrics["num_images"])
        report["speedup"] = round(speeds[0] / speeds[1], 3)
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
