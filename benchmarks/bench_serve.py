"""`oneseg serve` under load: N concurrent clients on 127.0.0.1 against the demo-size model.

    python benchmarks/bench_serve.py                       # PyTorch, ORT FP32, ORT INT8; c 1/4/16
    python benchmarks/bench_serve.py --requests 60 --long 400 --sources pytorch   # smaller

The demo's OneFormer (oneseg.demo.DEMO_MODEL: EfficientNet-Lite0, 24 queries) with random
weights (speed does not depend on training) is saved as a checkpoint, exported to ONNX with a
free batch axis at the demo's 128x128, and quantized to INT8 (`oneseg quantize`). Each source
is served by its own `oneseg serve` process (one model, the batch queue); clients (httpx, one
asyncio task each) post the synthetic validation images for the panoptic task. Per source and
concurrency: a fixed number of requests under a time cap, after a warm-up. Reported:
requests/s, p50/p95/p99 latency, errors, mean batch size (from /metrics), the server's peak
RSS, and for the PyTorch source its RSS after 100 and after `--long` requests (leak check).
Writes benchmarks/results/serve.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from machine import describe, machine_line, table, write_report

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pytorch", "ort_fp32", "ort_int8")
SIZE = 128


def oneseg(*args: str, timeout: float = 1800) -> None:
    command = [sys.executable, "-m", "oneseg.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed: {done.stderr.strip()[-800:]}")


def make_models(folder: Path, sources) -> tuple[dict[str, Path], Path]:
    """source -> model file (of `sources` only), and the folder of validation images."""
    import dataclasses

    import torch

    from oneseg.checkpoint import make_checkpoint, save_atomic
    from oneseg.data.label_map import LabelMap
    from oneseg.data.synth import write_synthetic_dataset
    from oneseg.demo import DEMO_MODEL
    from oneseg.model.build import build_model
    from oneseg.spec import spec_from_dict

    data = write_synthetic_dataset(folder / "data", num_train=2, num_val=16, size=(SIZE, SIZE))
    label_map = LabelMap.from_json(data["label_map"])
    cfg = spec_from_dict({"model": DEMO_MODEL}, []).model
    cfg = dataclasses.replace(cfg, num_classes=len(label_map))
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=len(label_map))
    checkpoint = folder / "demo.pth"
    save_atomic(make_checkpoint(cfg, label_map, model.state_dict()), checkpoint)
    fp32, int8 = folder / "demo.onnx", folder / "demo_int8.onnx"
    if sources == ["pytorch"]:
        return {"pytorch": checkpoint}, data["val"]["images"]
    oneseg(
        "export", f"results_dir={folder}", f"export.checkpoint={checkpoint}",
        f"export.onnx_file={fp32}", "export.task=panoptic", "export.batch_size=-1",
        f"export.input_height={SIZE}", f"export.input_width={SIZE}",
        f"dataset.val.images={data['val']['images']}",
    )  # fmt: skip
    oneseg(
        "quantize", f"results_dir={folder}", f"quantize.onnx_file={fp32}",
        f"quantize.output_file={int8}", "quantize.num_calib_images=8", "quantize.report=false",
        f"dataset.quant_calibration_dataset.images_dir={data['val']['images']}",
    )  # fmt: skip
    return {"pytorch": checkpoint, "ort_fp32": fp32, "ort_int8": int8}, data["val"]["images"]


class Server:
    def __init__(self, model: Path, folder: Path, max_batch: int, max_wait_ms: float):
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "oneseg.cli", "serve", f"results_dir={folder}",
                f"serve.model={model}", "serve.port=0", f"serve.max_batch={max_batch}",
                f"serve.max_wait_ms={max_wait_ms}", "serve.max_queue=256",
                f"dataset.augmentation.eval_min_size={SIZE}", "serve.tasks=[panoptic]",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.process.stdout.readline()
        found = re.search(r"at (http://\S+)", line)
        if not found:
            raise RuntimeError(f"no server: {line} {self.process.stderr.read()[-800:]}")
        self.url = found.group(1).rstrip("/")

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = {k: float(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024

    def batches(self) -> tuple[float, float]:
        text = httpx.get(f"{self.url}/metrics").text
        total = float(re.search(r"^oneseg_batch_size_sum (\S+)", text, re.M).group(1))
        count = float(re.search(r"^oneseg_batch_size_count (\S+)", text, re.M).group(1))
        return total, count

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(120)


async def load(url: str, images: list[bytes], concurrency: int, requests: int, cap_s: float):
    """Latencies (s) of the answered requests, errors, and wall time."""
    latencies, errors, sent = [], [], 0
    start = time.perf_counter()

    async def client(index: int, http: httpx.AsyncClient):
        nonlocal sent
        while sent < requests and time.perf_counter() - start < cap_s:
            body = images[(sent + index) % len(images)]
            sent += 1
            began = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/segment?task=panoptic", content=body)
                if response.status_code != 200:
                    errors.append(response.status_code)
                    continue
            except httpx.HTTPError as err:
                errors.append(type(err).__name__)
                continue
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))] if values else 0


def measure(server: Server, images, concurrency: int, requests: int, cap_s: float) -> dict:
    batch_sum, batch_count = server.batches()
    latencies, errors, wall = asyncio.run(load(server.url, images, concurrency, requests, cap_s))
    batch_sum2, batch_count2 = server.batches()
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + len(errors),
        "rps": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "errors": len(errors),
        "mean_batch": round((batch_sum2 - batch_sum) / max(1.0, batch_count2 - batch_count), 2),
        "peak_rss_mib": round(server.rss_mib()[1]),
    }


def leak_check(server: Server, images, total: int, cap_s: float) -> dict:
    """RSS after 100 requests and after `total` (4 clients)."""
    asyncio.run(load(server.url, images, 4, 100, cap_s))
    after_100 = server.rss_mib()[0]
    latencies, errors, _ = asyncio.run(load(server.url, images, 4, total - 100, cap_s))
    after_all = server.rss_mib()[0]
    return {
        "requests": 100 + len(latencies) + len(errors),
        "errors": len(errors),
        "rss_after_100_mib": round(after_100),
        "rss_after_all_mib": round(after_all),
        "growth_pct": round(100 * (after_all - after_100) / after_100, 1),
    }


def markdown(report: dict) -> str:
    rows = [
        [r["source"], r["concurrency"], r["requests"], r["rps"], r["p50_ms"], r["p95_ms"],
         r["p99_ms"], r["errors"], r["mean_batch"], r["peak_rss_mib"]]
        for r in report["rows"]
    ]  # fmt: skip
    header = ["source", "clients", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
              "mean batch", "peak RSS MiB"]  # fmt: skip
    lines = [
        "# oneseg serve under load", "", describe(report["machine"]), "",
        f"Demo-size OneFormer, panoptic, {SIZE}x{SIZE} PNG uploads, max_batch "
        f"{report['max_batch']}, max_wait_ms {report['max_wait_ms']}.", "",
        table(header, rows), "",
    ]  # fmt: skip
    for name, leak in report["leak"].items():
        lines.append(
            f"RSS ({name}): {leak['rss_after_100_mib']} MiB after 100 requests, "
            f"{leak['rss_after_all_mib']} MiB after {leak['requests']} "
            f"({leak['growth_pct']:+.1f}%), {leak['errors']} errors."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=200, help="per source and concurrency")
    parser.add_argument("--cap", type=float, default=120.0, help="seconds per measurement at most")
    parser.add_argument("--long", type=int, default=2000, help="requests of the RSS check")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    report = {"machine": machine_line(), "rows": [], "leak": {}, "max_batch": args.max_batch,
              "max_wait_ms": args.max_wait_ms}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models, images_dir = make_models(folder, args.sources)
        images = [p.read_bytes() for p in sorted(Path(images_dir).iterdir())]
        for source in args.sources:
            server = Server(models[source], folder / source, args.max_batch, args.max_wait_ms)
            try:
                asyncio.run(load(server.url, images, 2, 10, args.cap))  # warm-up
                for concurrency in args.concurrency:
                    row = measure(server, images, concurrency, args.requests, args.cap)
                    report["rows"].append({"source": source, **row})
                    print(source, row, flush=True)
                if source == "pytorch" and args.long > 100:
                    report["leak"][source] = leak_check(server, images, args.long, 10 * args.cap)
                    print(source, report["leak"][source], flush=True)
            finally:
                server.stop()
    text = markdown(report)
    print(text)
    write_report("serve", text, report)


if __name__ == "__main__":
    main()
