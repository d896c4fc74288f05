"""Inference speed: oneseg against transformers' OneFormer at identical weights, one process.

    python benchmarks/bench_inference.py                          # 512 and 1024 px, batch 1 and 4
    python benchmarks/bench_inference.py --sizes 512 --batches 1  # a subset
    python benchmarks/bench_inference.py --profile 25             # + torch.profiler top ops

Swin-T OneFormer, 150 queries, published decoder sizes, random weights saved as a transformers
folder and converted with oneseg's converter (see contenders.py). For each size and batch the
contenders run alternately after a warm-up, panoptic task, inference mode. Reported: median
forward and post-processing time, images/s, per-part times (backbone, pixel decoder, decoder),
the forward's FLOPs (torch.utils.flop_counter: matmuls, convolutions, attention) and achieved
GFLOP/s as a share of the fp32 matmul peak measured in the same run, and the peak RSS of each
contender alone in a fresh process (load + warm-up + one forward). Writes
benchmarks/results/inference.{md,json}.
"""

from __future__ import annotations

import sys

from oneseg.cpu_threads import keep_freed_memory, quiet_thread_pool

quiet_thread_pool()  # before torch loads OpenMP
keep_freed_memory()  # for every contender of the process alike

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from contenders import (  # noqa: E402
    NUM_LABELS,
    PartTimer,
    hf_parts,
    load_hf,
    load_ours,
    our_parts,
    task_inputs,
    write_hf_folder,
)
from machine import (  # noqa: E402
    describe,
    machine_line,
    matmul_peak_gflops,
    peak_rss_mib,
    table,
    write_report,
)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from oneseg.cpu_threads import set_intra_op_threads  # noqa: E402
from oneseg.model import packed  # noqa: E402
from oneseg.model.postprocess import postprocess  # noqa: E402

CONTENDERS = ("transformers", "oneseg")
ISTHING = [i < NUM_LABELS // 2 for i in range(NUM_LABELS)]


class Runner:
    """One contender: a forward and a panoptic post-processing of its outputs."""

    def __init__(self, name: str, folder: Path):
        self.name = name
        if name == "oneseg":
            self.model, _ = load_ours(folder, training=False)
            self.parts = PartTimer(our_parts(self.model))
        else:
            from transformers import OneFormerImageProcessor
            from transformers.utils import logging

            logging.set_verbosity_error()  # the unused text-branch tensors are expected
            self.model = load_hf(folder, training=False)
            self.processor = OneFormerImageProcessor()
            self.parts = PartTimer(hf_parts(self.model))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, mode=torch.inference_mode):
        with mode():
            if self.name == "oneseg":  # as the predictor runs it: no earlier layers' outputs
                return self.model(images, tokens, aux=False)
            return self.model(pixel_values=images, task_inputs=tokens)

    def postprocess(self, outputs, size: int):
        with torch.inference_mode():
            if self.name == "oneseg":
                batch = outputs["pred_logits"].shape[0]
                return postprocess(
                    outputs, "panoptic", (size, size), [(size, size)] * batch, isthing=ISTHING
                )
            batch = outputs.class_queries_logits.shape[0]
            return self.processor.post_process_panoptic_segmentation(
                outputs, threshold=0.8, target_sizes=[(size, size)] * batch
            )


def inputs(size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(size + batch)
    return torch.randn(batch, 3, size, size, generator=gen), task_inputs(batch)


def forward_flops(runner: Runner, size: int) -> int:
    images, tokens = inputs(size, 1)
    # The flop counter's module tracker fails without grad mode; with grad mode on and every
    # parameter frozen, the forward takes the inference paths (the work that is timed).
    # The prepacked linear kernels are invisible to the counter: count their F.linear twins.
    frozen = [p for p in runner.model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    packing, packed._AVAILABLE = packed._AVAILABLE, False
    try:
        with FlopCounterMode(display=False) as counter:
            runner.forward(images, tokens, mode=contextlib.nullcontext)
    finally:
        packed._AVAILABLE = packing
        for p in frozen:
            p.requires_grad_(True)
    return counter.get_total_flops()


def time_setting(runners, size: int, batch: int, repeats: int) -> dict:
    images, tokens = inputs(size, batch)
    for runner in runners:  # warm-up, not timed
        runner.postprocess(runner.forward(images, tokens), size)
        runner.parts.times = {k: [] for k in runner.parts.times}
    forward = {r.name: [] for r in runners}
    post = {r.name: [] for r in runners}
    for rep in range(repeats):
        order = runners if rep % 2 == 0 else runners[::-1]
        for runner in order:
            start = time.perf_counter()
            outputs = runner.forward(images, tokens)
            middle = time.perf_counter()
            runner.postprocess(outputs, size)
            forward[runner.name].append(middle - start)
            post[runner.name].append(time.perf_counter() - middle)
    # each round's ratio compares runs seconds apart: robust to a load that drifts
    rounds = [
        (a + pa) / (b + pb)
        for a, pa, b, pb in zip(
            forward["transformers"], post["transformers"], forward["oneseg"], post["oneseg"]
        )
    ]
    result = {"speedup_rounds": rounds, "speedup_median_of_rounds": statistics.median(rounds)}
    for runner in runners:
        fwd, pp = statistics.median(forward[runner.name]), statistics.median(post[runner.name])
        result[runner.name] = {
            "forward_s": fwd,
            "forward_all_s": forward[runner.name],
            "postprocess_s": pp,
            "latency_s": fwd + pp,
            "images_per_s": batch / (fwd + pp),
            "parts_s": {**runner.parts.medians(), "post-processing": pp},
        }
    return result


def child_peak_rss(name: str, folder: Path, size: int, batch: int, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads `name` and runs two forwards."""
    command = [sys.executable, __file__, "--child", name, "--weights", str(folder)]
    command += ["--sizes", str(size), "--batches", str(batch), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def run_child(args) -> None:
    runner = Runner(args.child, args.weights)
    images, tokens = inputs(args.sizes[0], args.batches[0])
    for _ in range(2):
        runner.postprocess(runner.forward(images, tokens), args.sizes[0])
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def profile(runners, size: int, rows: int) -> str:
    images, tokens = inputs(size, 1)
    text = []
    for runner in runners:
        runner.forward(images, tokens)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            runner.forward(images, tokens)
        top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
        text.append(f"### {runner.name}, {size}x{size}, batch 1\n\n```\n{top}\n```\n")
    return "\n".join(text)


def markdown(report: dict) -> str:
    out = ["# Inference: oneseg vs transformers OneFormer (Swin-T, 150 queries, same weights)", ""]
    out += [f"Machine: {describe(report['machine'])}.", ""]
    out += [
        f"fp32 matmul peak measured in this run: {report['matmul_peak_gflops']:.0f} GFLOP/s.",
        "",
    ]
    rows, parts_rows = [], []
    for s in report["settings"]:
        ours, ref = s["oneseg"], s["transformers"]
        for name in CONTENDERS:
            r = s[name]
            rows.append([
                f"{s['size']}² ×{s['batch']}", name, f"{r['forward_s']:.2f}",
                f"{r['postprocess_s']:.3f}", f"{r['images_per_s']:.3f}",
                f"{r['gflop']:.0f}", f"{r['gflops_per_s']:.0f} ({100 * r['peak_share']:.0f}%)",
                f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-",
            ])  # fmt: skip
            parts = r["parts_s"]
            parts_rows.append(
                [f"{s['size']}² ×{s['batch']}", name]
                + [f"{parts.get(k, float('nan')):.3f}" for k in PART_NAMES]
            )
        speedup = ours["images_per_s"] / ref["images_per_s"]
        per_round = ", ".join(f"{r:.2f}" for r in s["speedup_rounds"])
        rows.append([f"{s['size']}² ×{s['batch']}",
                     f"**oneseg / transformers {speedup:.2f}×** (medians); per round "
                     f"{per_round}, median {s['speedup_median_of_rounds']:.2f}×"]
                    + [""] * 6)  # fmt: skip
    out.append(table(["input", "contender", "forward s", "post s", "images/s", "GFLOP (batch)",
                      "GFLOP/s (of peak)", "peak RSS MiB"], rows))  # fmt: skip
    out += ["", "Per part, median seconds:", ""]
    out.append(table(["input", "contender", *PART_NAMES], parts_rows))
    if report.get("profile"):
        out += ["", "## torch.profiler, self CPU time", "", report["profile"]]
    return "\n".join(out) + "\n"


PART_NAMES = ["backbone", "pixel decoder", "decoder", "post-processing"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--settings", nargs="+", help="SIZExBATCH pairs instead of every size with every batch"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores available")
    parser.add_argument("--weights", type=Path, help="transformers folder (written if absent)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--profile", type=int, default=0, help="rows of a profiler table")
    parser.add_argument("--name", default="inference", help="results file name")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = set_intra_op_threads(args.threads)
    if args.child:
        return run_child(args)
    folder = write_hf_folder(args.weights or Path(tempfile.gettempdir()) / "oneseg-bench-hf")
    report = {"machine": machine_line(), "matmul_peak_gflops": matmul_peak_gflops()}
    runners = [Runner(name, folder) for name in CONTENDERS]
    report["settings"] = []
    pairs = [(s, b) for s in args.sizes for b in args.batches]
    if args.settings:
        pairs = [tuple(int(v) for v in pair.lower().split("x")) for pair in args.settings]
        args.sizes = sorted({s for s, _ in pairs})
    flops = {(r.name, s): forward_flops(r, s) for r in runners for s in args.sizes}
    for size, batch in pairs:
        setting = {
            "size": size,
            "batch": batch,
            **time_setting(runners, size, batch, args.repeats),
        }
        for runner in runners:
            r = setting[runner.name]
            r["gflop"] = flops[(runner.name, size)] * batch / 1e9
            r["gflops_per_s"] = r["gflop"] / r["forward_s"]
            r["peak_share"] = r["gflops_per_s"] / report["matmul_peak_gflops"]
        report["settings"].append(setting)
        print(json.dumps({k: v for k, v in setting.items()}, default=str)[:600], flush=True)
    # the peak is measured again at the end; the better of the two stands (a busy machine)
    report["matmul_peak_gflops"] = max(report["matmul_peak_gflops"], matmul_peak_gflops())
    for setting in report["settings"]:
        for name in CONTENDERS:
            r = setting[name]
            r["peak_share"] = r["gflops_per_s"] / report["matmul_peak_gflops"]
            if not args.no_rss:
                r["peak_rss_mib"] = child_peak_rss(
                    name, folder, setting["size"], setting["batch"], threads
                )
    if args.profile:
        report["profile"] = profile(runners, args.sizes[0], args.profile)
    md_path, _ = write_report(args.name, markdown(report), report)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
