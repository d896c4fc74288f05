"""Training on a busy machine: steps/s alone and beside one busy process.

    python benchmarks/bench_busy.py                  # both thread settings, three situations
    python benchmarks/bench_busy.py --seconds 20     # longer timing windows

The demo's small OneFormer (EfficientNet-Lite0, 128 px, batch 4) trains on a synthetic dataset.
Three situations, each timed over a window of steps after a warm-up:
- alone: batches prepared beforehand, nothing else started;
- beside a spin process: a pure-Python busy loop running in another process;
- beside a data-loader worker: batches come from a DataLoader with one worker process.
Three thread settings, each in a fresh process (OpenMP reads its settings once, when loaded):
- "torch defaults": as many threads as cores, OpenMP's default spin-waiting (milliseconds);
- "oneseg": threads = cores available minus loader workers, waiting threads spin ~10 us then
  sleep (`quiet_thread_pool`: GOMP_SPINCOUNT=1000), as `oneseg train` does;
- "sleep at once": oneseg's thread count with OMP_WAIT_POLICY=PASSIVE (oneseg's setting
  before the brief spin).
The slowdown is the ratio of steps/s alone to steps/s beside the busy process, within one
setting. Writes benchmarks/results/busy.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("torch defaults", "oneseg", "sleep at once")
SITUATIONS = ("alone", "beside a spin process", "beside a data-loader worker")


def spin() -> None:
    while True:
        pass


def run_setting(setting: str, data: Path, seconds: float, max_steps: int) -> dict:
    """Runs inside the child process of one setting; returns steps/s of each situation."""
    import multiprocessing

    import torch

    from oneseg.cpu_threads import set_intra_op_threads
    from oneseg.data.build import build_dataloader, load_label_map
    from oneseg.data.synth import synthetic_dataset_config
    from oneseg.demo import DEMO_MODEL, IMAGE_SIZE
    from oneseg.model.build import build_model
    from oneseg.model.criterion import build_criterion
    from oneseg.spec import spec_from_dict

    spec = spec_from_dict({"model": DEMO_MODEL})
    config = synthetic_dataset_config(data)
    aug = config.augmentation
    aug.train_min_size, aug.crop_size = [IMAGE_SIZE], [IMAGE_SIZE, IMAGE_SIZE]
    config.batch_size = 4
    label_map = load_label_map(config)
    torch.manual_seed(0)
    model = build_model(spec.model, num_classes=len(label_map)).train()
    criterion = build_criterion(spec.model.loss, len(label_map), spec.model.arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    texts = spec.model.num_queries - spec.model.text_encoder.n_ctx

    def loader(workers: int):
        return build_dataloader(config, "train", label_map, texts, 32, train=True, workers=workers)

    def step(batch) -> None:
        images = model.normalize(batch["images"].float())
        out = model(images, batch["task_tokens"], batch["text_tokens"])
        total = criterion.total(criterion(out, batch["targets"]))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()

    def rate(batches, warmup: int = 2) -> dict:
        for _ in range(warmup):
            step(next(batches))
        start, cpu, steps = time.perf_counter(), time.process_time(), 0
        while steps < max_steps and (steps < 3 or time.perf_counter() - start < seconds):
            step(next(batches))
            steps += 1
        wall = time.perf_counter() - start
        return {
            "steps": steps,
            "steps_per_s": steps / wall,
            "cpu_s_per_step": (time.process_time() - cpu) / steps,
        }

    def cycle(workers: int):
        while True:
            yield from loader(workers)

    result = {}
    prepared = list(loader(0))
    for situation in SITUATIONS:
        workers = 1 if "worker" in situation else 0
        if setting != "torch defaults":
            threads = set_intra_op_threads(0, loader_workers=workers)
        else:
            threads = os.cpu_count() or 1
            torch.set_num_threads(threads)
        spinner = None
        if "spin" in situation:
            spinner = multiprocessing.get_context("spawn").Process(target=spin, daemon=True)
            spinner.start()
        try:
            batches = cycle(1) if workers else iter(prepared * 1000)
            result[situation] = {"threads": threads, **rate(batches)}
        finally:
            if spinner is not None:
                spinner.terminate()
                spinner.join()
        print(json.dumps({situation: result[situation]}), file=sys.stderr, flush=True)
    return result


def markdown(report: dict) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import describe, table

    out = ["# Training beside a busy process (demo model, 128 px, batch 4)", ""]
    out += [f"Machine: {describe(report['machine'])}.", ""]
    rows = []
    for setting in SETTINGS:
        alone = report[setting]["alone"]["steps_per_s"]
        for situation in SITUATIONS:
            r = report[setting][situation]
            slowdown = alone / r["steps_per_s"]
            rows.append([setting, situation, r["threads"], f"{r['steps_per_s']:.2f}",
                         f"{r['cpu_s_per_step']:.2f}", f"{slowdown:.2f}×"])  # fmt: skip
    out.append(table(["threads setting", "situation", "threads", "steps/s",
                      "CPU s/step", "slowdown vs alone"], rows))  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="timing window per case")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--data", type=Path, help="synthetic dataset folder (written if absent)")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data = args.data or Path(tempfile.gettempdir()) / "oneseg-bench-busy"
    if args.child:
        if args.child == "sleep at once":
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        if args.child != "torch defaults":
            from oneseg.cpu_threads import quiet_thread_pool

            quiet_thread_pool()
        result = run_setting(args.child, data, args.seconds, args.max_steps)
        print(json.dumps(result))
        return
    from oneseg.data.synth import write_synthetic_dataset

    if not (data / "label_map.json").is_file():
        write_synthetic_dataset(data, num_train=32, num_val=2, size=(128, 128))
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import machine_line, write_report

    report = {"machine": machine_line()}
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    env = {k: v for k, v in os.environ.items() if k not in keys}
    env.pop("OMP_NUM_THREADS", None)
    for setting in SETTINGS:
        command = [sys.executable, __file__, "--child", setting, "--data", str(data)]
        command += ["--seconds", str(args.seconds), "--max-steps", str(args.max_steps)]
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
        report[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    report["machine"]["omp_wait_policy"] = report["machine"]["gomp_spincount"] = "per setting"
    md_path, _ = write_report("busy", markdown(report), report)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
