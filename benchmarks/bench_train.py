"""Training speed: one step (forward, loss, backward, optimizer) of oneseg against transformers'
OneFormer, same weights, same batch and targets, one process.

    python benchmarks/bench_train.py                 # batch 2, 256 px crops, 4 timed steps each
    python benchmarks/bench_train.py --size 384 --steps 6

Swin-T OneFormer at the published sizes (see contenders.py), text branch on, panoptic targets
(six random rectangles of random classes per image, with their text lists), AdamW lr 1e-4, the
gradient clipped to norm 0.01 in both. The contenders alternate after one warm-up step each.
Peak RSS is measured for each in a fresh process (load + two steps). Writes
benchmarks/results/train.{md,json}.
"""

from __future__ import annotations

import sys

from oneseg.cpu_threads import keep_freed_memory, quiet_thread_pool

quiet_thread_pool()  # before torch loads OpenMP
keep_freed_memory()  # for every contender of the process alike

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from contenders import (  # noqa: E402
    PartTimer,
    load_hf,
    load_ours,
    training_targets,
    write_hf_folder,
)
from machine import describe, machine_line, peak_rss_mib, table, write_report  # noqa: E402

from oneseg.cpu_threads import set_intra_op_threads  # noqa: E402

CONTENDERS = ("transformers", "oneseg")
PARTS = ("network forward", "loss", "backward", "optimizer")


class Trainer:
    """One contender's model, loss and optimizer; `step` runs one training step."""

    def __init__(self, name: str, folder: Path):
        self.name = name
        if name == "oneseg":
            from oneseg.model.criterion import build_criterion

            self.model, cfg = load_ours(folder, training=True)
            self.criterion = build_criterion(cfg.loss, cfg.num_classes, cfg.arch)
        else:
            from transformers.utils import logging

            logging.set_verbosity_error()
            self.model = load_hf(folder, training=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.times: dict[str, list[float]] = {k: [] for k in PARTS}
        self.hooks = None if name == "oneseg" else PartTimer({"loss": self.model.criterion})

    def _loss(self, batch: dict) -> torch.Tensor:
        if self.name == "oneseg":
            start = time.perf_counter()
            out = self.model(batch["images"], batch["task_tokens"], batch["texts"])
            middle = time.perf_counter()
            targets = [{"labels": c, "masks": m} for c, m in zip(batch["labels"], batch["masks"])]
            total = self.criterion.total(self.criterion(out, targets))
            self.times["network forward"].append(middle - start)
            self.times["loss"].append(time.perf_counter() - middle)
            return total
        start = time.perf_counter()
        out = self.model(
            pixel_values=batch["images"],
            task_inputs=batch["task_tokens"],
            text_inputs=batch["texts"],
            mask_labels=batch["masks"],
            class_labels=batch["labels"],
        )
        loss = self.hooks.times["loss"][-1]
        self.times["loss"].append(loss)
        self.times["network forward"].append(time.perf_counter() - start - loss)
        return out.loss

    def step(self, batch: dict) -> float:
        start = time.perf_counter()
        total = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        middle = time.perf_counter()
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.01)
        after_backward = time.perf_counter()
        self.optimizer.step()
        end = time.perf_counter()
        self.times["backward"].append(after_backward - middle)
        self.times["optimizer"].append(end - after_backward)
        return end - start

    def reset(self) -> None:
        self.times = {k: [] for k in PARTS}


def child_peak_rss(name: str, folder: Path, args) -> float:
    command = [sys.executable, __file__, "--child", name, "--weights", str(folder)]
    command += ["--size", str(args.size), "--batch", str(args.batch)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def markdown(report: dict) -> str:
    out = ["# Training step: oneseg vs transformers OneFormer (Swin-T, same weights, targets)", ""]
    out += [f"Machine: {describe(report['machine'])}.", ""]
    out += [f"Batch {report['batch']}, {report['size']}×{report['size']} crops, panoptic "
            "targets with text lists, AdamW, gradient clip 0.01.", ""]  # fmt: skip
    rows = []
    for name in CONTENDERS:
        r = report[name]
        rows.append([name, f"{r['step_s']:.2f}", f"{report['batch'] / r['step_s']:.2f}"]
                    + [f"{r['parts_s'][k]:.2f}" for k in PARTS]
                    + [f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-"])  # fmt: skip
    out.append(table(["contender", "s/step", "images/s", *(f"{p} s" for p in PARTS),
                      "peak RSS MiB"], rows))  # fmt: skip
    speedup = report["transformers"]["step_s"] / report["oneseg"]["step_s"]
    out += ["", f"oneseg / transformers speed: **{speedup:.2f}×**"]
    if report["oneseg"].get("peak_rss_mib") and report["transformers"].get("peak_rss_mib"):
        ratio = report["oneseg"]["peak_rss_mib"] / report["transformers"]["peak_rss_mib"]
        out += [f"oneseg / transformers peak RSS: **{ratio:.2f}**"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per contender")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores available")
    parser.add_argument("--weights", type=Path, help="transformers folder (written if absent)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_intra_op_threads(args.threads)
    folder = write_hf_folder(args.weights or Path(tempfile.gettempdir()) / "oneseg-bench-hf")
    batch = training_targets(args.batch, args.size)
    if args.child:
        trainer = Trainer(args.child, folder)
        for _ in range(2):  # the optimizer's state exists from the first step on
            trainer.step(batch)
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
        return
    report = {"machine": machine_line(), "size": args.size, "batch": args.batch}
    trainers = [Trainer(name, folder) for name in CONTENDERS]
    for trainer in trainers:
        trainer.step(batch)  # warm-up
        trainer.reset()
    steps = {t.name: [] for t in trainers}
    for rep in range(args.steps):
        for trainer in trainers if rep % 2 == 0 else trainers[::-1]:
            steps[trainer.name].append(trainer.step(batch))
    for trainer in trainers:
        report[trainer.name] = {
            "step_s": statistics.median(steps[trainer.name]),
            "steps_s": steps[trainer.name],
            "parts_s": {k: statistics.median(v) for k, v in trainer.times.items()},
        }
    if not args.no_rss:
        for name in CONTENDERS:
            report[name]["peak_rss_mib"] = child_peak_rss(name, folder, args)
    md_path, _ = write_report("train", markdown(report), report)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
