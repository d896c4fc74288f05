"""Time `OneFormer.predict` on one image for one task and for all three tasks.

The backbone and pixel decoder run once per call whatever the number of tasks; only the
transformer decoder runs once per task. This prints, for each model, the seconds of one task,
of three tasks, and their ratio (what three tasks cost against one).

Models (random weights, nothing downloaded):
    demo    the `oneseg demo` model (EfficientNet-Lite0, 24 queries, 3 decoder layers), 512²
    swin_t  Swin-T, 150 queries, 9 decoder layers, hidden 256 (the published layout), 512²

The two contenders (1 task, 3 tasks) alternate within each round so that a busy machine slows
both alike; the ratio is the median over rounds of the per-round ratios.

    python benchmarks/bench_tasks.py [--rounds 3] [--size 512] [--threads 2] [--models demo swin_t]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.demo import DEMO_MODEL
from oneseg.model.build import build_model
from oneseg.spec import section_from_dict

MODELS = {
    "demo": DEMO_MODEL,
    "swin_t": {"backbone": "swin_tiny", "num_queries": 150},
}


def seconds(model, image: torch.Tensor, tasks) -> float:
    start = time.perf_counter()
    model.predict(image, tasks)
    return time.perf_counter() - start


def bench(name: str, size: int, rounds: int) -> dict:
    cfg = section_from_dict(ModelConfig, {**MODELS[name], "num_classes": 133}, "model")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    seconds(model, image, TASKS)  # warm-up
    one, three = [], []
    for _ in range(rounds):
        one.append(seconds(model, image, ("panoptic",)))
        three.append(seconds(model, image, TASKS))
    ratios = [t / o for o, t in zip(one, three)]
    return {
        "one": statistics.median(one),
        "three": statistics.median(three),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"one {args.size}x{args.size} image, {args.threads} threads, {args.rounds} rounds, CPU")
    for name in args.models:
        r = bench(name, args.size, args.rounds)
        print(
            f"{name:8s} 1 task {r['one']:.3f} s   3 tasks {r['three']:.3f} s   "
            f"ratio {r['ratio']:.2f}x"
        )


if __name__ == "__main__":
    main()
