"""Deployment speed: PyTorch eager, ONNX Runtime FP32 and INT8, and transformers' eager OneFormer.

Two models, each at one input size, batch 1, panoptic task:
- the demo model (`oneseg demo`'s checkpoint) at its image size: PyTorch eager and ONNX Runtime
  FP32 / INT8 (transformers' OneFormer has no EfficientNet backbone), and PQ of the FP32 and
  INT8 files on the demo's validation images;
- a Swin-T 150-query OneFormer at 512x512 with random weights, built by transformers and
  converted, so that transformers' eager model and ours hold the same numbers.

What one call times, for every contender: a uint8 image in, a panoptic result out.
- PyTorch eager: oneseg's `Predictor` (normalisation, network, `postprocess`), as in Python;
- ORT FP32 / INT8: the exported file / its quantized copy in an ONNX Runtime session;
- transformers: normalisation, `OneFormerForUniversalSegmentation` and the image processor's
  `post_process_panoptic_segmentation`; also its forward alone.
The contenders alternate within each round (the machine is shared: ratios are the result), and
each row gives the median of the rounds after a warm-up.

    flock /tmp/oneseg-heavy.lock python benchmarks/bench_deploy.py --demo-dir results/demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from oneseg.cpu_threads import keep_freed_memory, quiet_thread_pool

quiet_thread_pool()  # before torch loads OpenMP, as the oneseg command does
keep_freed_memory()  # for every contender of the process alike

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import load_hf, load_ours, task_inputs, write_hf_folder  # noqa: E402

from oneseg.data.image_io import read_image  # noqa: E402
from oneseg.export.action import resized_batch  # noqa: E402
from oneseg.export.onnx_export import ExportSettings, export_onnx  # noqa: E402
from oneseg.export.qdq import quantize_onnx  # noqa: E402
from oneseg.export.quantize import val_metrics  # noqa: E402
from oneseg.export.runtime import OnnxEngine  # noqa: E402


def timed(call, rounds: list[float]) -> None:
    start = time.perf_counter()
    call()
    rounds.append(time.perf_counter() - start)


def bench(contenders: dict, runs: int, warmup: int = 2) -> dict:
    """name -> median seconds of one call, the contenders alternating within each round."""
    for call in contenders.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, call in contenders.items():
            timed(call, times[name])
    return {name: statistics.median(t) for name, t in times.items()}


def onnx_pair(model, label_map, folder: Path, size: int, calibration, picture, threshold):
    """FP32 and INT8 files of the panoptic graph of `model` at size x size, batch 1."""
    settings = ExportSettings(
        task="panoptic",
        height=size,
        width=size,
        batch_size=1,
        object_mask_threshold=threshold,
    )
    fp32 = folder / "model_fp32.onnx"
    int8 = folder / "model_int8.onnx"
    check = resized_batch(picture, size, size, 1)
    export_onnx(model, label_map, settings, fp32, check)
    quantize_onnx(fp32, int8, calibration)  # the defaults of `oneseg quantize`
    return fp32, int8


def eager_call(model, label_map, size: int, picture, threshold: float):
    """oneseg in PyTorch as a user runs it: `Predictor` (model.predict + postprocess)."""
    from oneseg.model.postprocess import PostprocessConfig
    from oneseg.predictor import Predictor

    predictor = Predictor(
        model,
        label_map,
        min_size=size,
        max_size=size,
        postprocess=PostprocessConfig(object_mask_threshold=threshold),
        device="cpu",
        cpu_threads=None,  # the benchmark's thread count stays
    )
    image = resized_batch(picture, size, size, 1)[0].permute(1, 2, 0).numpy()

    def call():
        predictor(image, "panoptic")

    return call


def ort_call(path: Path, picture, threads: int):
    engine = OnnxEngine(path, providers=["CPUExecutionProvider"], threads=threads)
    spec = engine.description["input"]
    images = resized_batch(picture, spec["height"], spec["width"], 1).numpy()
    return lambda: engine.run(images)


def demo_rows(args, threads: int) -> dict:
    from oneseg.checkpoint import load_model
    from oneseg.spec import load_spec

    demo = Path(args.demo_dir)
    checkpoint = demo / "train" / "model_best.ckpt"
    if not checkpoint.is_file():
        checkpoint = demo / "train" / "model_latest.ckpt"
    spec = load_spec(demo / "train" / "experiment.yaml")
    model, label_map, _ = load_model(checkpoint)
    size = spec.dataset.augmentation.eval_min_size
    train_images = sorted(Path(spec.dataset.train[0].images).iterdir())
    picture = read_image(sorted(Path(spec.dataset.val.images).iterdir())[0])
    folder = Path(args.out) / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    threshold = spec.model.object_mask_threshold
    fp32, int8 = onnx_pair(model, label_map, folder, size, train_images[:32], picture, threshold)
    seconds = bench(
        {
            "PyTorch eager": eager_call(model, label_map, size, picture, threshold),
            "ORT FP32": ort_call(fp32, picture, threads),
            "ORT INT8": ort_call(int8, picture, threads),
        },
        args.runs,
    )
    pq = {name: val_metrics(spec, path, 0)["pq"] for name, path in (("fp32", fp32), ("int8", int8))}
    return {
        "model": f"demo ({spec.model.backbone}, {spec.model.num_queries} queries)",
        "size": size,
        "seconds": seconds,
        "pq": pq,
        "mb": {"fp32": fp32.stat().st_size / 2**20, "int8": int8.stat().st_size / 2**20},
    }


def swin_rows(args, threads: int, calibration: list[Path], picture) -> dict:
    from transformers import OneFormerImageProcessor
    from transformers.utils import logging

    from oneseg.data.label_map import LabelMap

    logging.set_verbosity_error()
    size = 512
    folder = Path(args.out) / "swin_t"
    hf_folder = write_hf_folder(folder / "hf")
    ours, _ = load_ours(hf_folder, training=False)
    categories = [{"id": i, "name": f"class{i}", "isthing": int(i < 75)} for i in range(150)]
    label_map = LabelMap.from_categories(categories)
    fp32, int8 = onnx_pair(ours, label_map, folder, size, calibration, picture, 0.8)
    hf = load_hf(hf_folder, training=False)
    processor = OneFormerImageProcessor()
    images = resized_batch(picture, size, size, 1)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    tokens = task_inputs(1)

    def hf_forward():
        with torch.inference_mode():
            return hf(pixel_values=(images.float() - mean) / std, task_inputs=tokens)

    def hf_full():
        outputs = hf_forward()
        with torch.inference_mode():
            processor.post_process_panoptic_segmentation(
                outputs, threshold=0.8, target_sizes=[(size, size)]
            )

    seconds = bench(
        {
            "transformers eager (+ its post-processing)": hf_full,
            "transformers eager (forward only)": hf_forward,
            "PyTorch eager": eager_call(ours, label_map, size, picture, 0.8),
            "ORT FP32": ort_call(fp32, picture, threads),
            "ORT INT8": ort_call(int8, picture, threads),
        },
        args.runs,
    )
    return {
        "model": "Swin-T OneFormer, 150 queries, random weights",
        "size": size,
        "seconds": seconds,
        "mb": {"fp32": fp32.stat().st_size / 2**20, "int8": int8.stat().st_size / 2**20},
    }


def markdown(results: list[dict], threads: int) -> str:
    lines = [
        "| model | input | contender | ms / image | images/s | vs ORT FP32 |",
        "|---|---|---|---:|---:|---:|",
    ]
    for result in results:
        base = result["seconds"]["ORT FP32"]
        for name, seconds in result["seconds"].items():
            lines.append(
                f"| {result['model']} | {result['size']}² | {name} | {seconds * 1000:.1f} | "
                f"{1 / seconds:.2f} | {base / seconds:.2f}x |"
            )
    lines.append(f"\nbatch 1, panoptic, {threads} threads; medians of alternating rounds.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default="results/demo", help="results_dir of oneseg demo")
    parser.add_argument("--out", default="results/bench_deploy", help="files and report")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds after the warm-up")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and ONNX Runtime threads (1: fair on a busy machine)",
    )
    parser.add_argument("--skip-swin", action="store_true", help="only the demo model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    results = [demo_rows(args, args.threads)]
    from oneseg.spec import load_spec

    spec = load_spec(Path(args.demo_dir) / "train" / "experiment.yaml")
    calibration = sorted(Path(spec.dataset.train[0].images).iterdir())[:8]
    picture = read_image(sorted(Path(spec.dataset.val.images).iterdir())[0])
    if not args.skip_swin:
        results.append(swin_rows(args, args.threads, calibration, picture))
    report = markdown(results, args.threads)
    demo = results[0]
    report += (
        f"\n\nDemo model PQ on its validation images: ORT FP32 {demo['pq']['fp32']:.2f}, "
        f"ORT INT8 {demo['pq']['int8']:.2f}; files {demo['mb']['fp32']:.1f} MB / "
        f"{demo['mb']['int8']:.1f} MB."
    )
    print(report)
    (Path(args.out) / "bench_deploy.md").write_text(report + "\n")
    (Path(args.out) / "bench_deploy.json").write_text(
        json.dumps(
            results, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)
        )
    )


if __name__ == "__main__":
    main()
