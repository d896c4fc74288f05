"""Learning check: run `oneseg demo` (or read a finished one) and print the loss per epoch, the
wall time of each action and the metrics reached on the synthetic validation split.

    python benchmarks/learning_check.py                # runs the demo into results/learning_check
    python benchmarks/learning_check.py --read results/demo  # only reads a finished run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_status(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read", help="a finished demo folder to read instead of running one")
    parser.add_argument("--results-dir", default="results/learning_check")
    args = parser.parse_args(argv)
    root = Path(args.read or args.results_dir)
    if not args.read:
        from oneseg.demo import run_demo

        run_demo(root)

    lines = read_status(root / "train")
    by_epoch: dict[int, list[float]] = {}
    for line in lines:
        if line.get("loss") is not None and "epoch" in line:
            by_epoch.setdefault(line["epoch"], []).append(line["loss"])
    print("epoch  mean training loss")
    for epoch, losses in sorted(by_epoch.items()):
        print(f"{epoch + 1:5d}  {statistics.mean(losses):8.3f}")
    first, last = statistics.mean(by_epoch[min(by_epoch)]), statistics.mean(by_epoch[max(by_epoch)])
    print(f"loss fell from {first:.2f} to {last:.2f} ({100 * (1 - last / first):.0f}% lower)")

    for action in ("train", "evaluate", "inference"):
        print(f"{action:9s} {read_status(root / action)[-1]['elapsed_s']:7.1f} s")
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())["metrics"]
    for key in ("pq", "pq_th", "pq_st", "miou", "ap", "ap50", "ap75"):
        print(f"{key:6s} {metrics[key]:6.1f}")
    return 0 if last < first else 1


if __name__ == "__main__":
    sys.exit(main())
