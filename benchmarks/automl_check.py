"""AutoML learning check: does a 12-trial Hyperband search over lr / weight decay / backbone
multiplier, costing about two demo trainings, find a spec at least as good as the demo's
hand-picked one (lr 1e-3, weight decay 0.05, backbone multiplier 0.25)?

On the demo's synthetic dataset (240 training, 32 validation images, 128 px) with the demo model:

1. search: `oneseg automl`, 12 trials of the demo spec shortened to `--search-epochs` epochs
   (validated after each, so Hyperband stops the weak ones after one epoch), ranked by PQ;
2. the demo's hand-picked values on the same short schedule (the search's own yardstick);
3. the best spec found and the demo's values, each trained with the demo's full schedule
   (10 epochs) and validated at its end: the comparison that counts.

Each step appends to `RESULTS/summary.md`, so a stopped run still shows what it reached.

    python benchmarks/automl_check.py                         # results in results/automl_check
    python benchmarks/automl_check.py --skip-full             # steps 1 and 2 only
    python benchmarks/automl_check.py --skip-search           # step 2 only
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

from oneseg.automl.study import run_automl
from oneseg.data.synth import write_synthetic_dataset
from oneseg.demo import IMAGE_SIZE, demo_spec
from oneseg.engine.train import run_train
from oneseg.experiment import ActionRun
from oneseg.spec import load_spec, spec_from_dict

PARAMETERS = ["train.optim.lr", "train.optim.weight_decay", "train.optim.backbone_multiplier"]
FULL_EPOCHS = 10  # the demo's schedule


def shortened(values: dict, epochs: int) -> dict:
    train = dict(values["train"], num_epochs=epochs, validation_interval=1)
    return dict(values, train=dict(train, checkpoint_interval=1, monitor="pq"))


def train_and_measure(spec, label: str, summary: Path) -> dict:
    # a fresh training each time: a rerun would otherwise resume the finished one and measure
    # nothing
    shutil.rmtree(Path(spec.results_dir) / "train", ignore_errors=True)
    start = time.time()
    with ActionRun(spec, "train") as run:
        run_train(spec, run, progress_bar=False)
    row = {
        "run": label,
        "epochs": spec.train.num_epochs,
        **{key.rsplit(".", 1)[-1]: _get(spec, key) for key in PARAMETERS},
        **{k: run.kpis.get(k) for k in ("pq", "miou", "ap")},
        "seconds": round(time.time() - start),
    }
    _append_row(summary, row)
    return row


def run_search(root: Path, demo_values: dict, args, summary: Path) -> tuple[float, dict]:
    """`oneseg automl` on the shortened demo spec; returns its seconds and the best values."""
    search = shortened(demo_values, args.search_epochs)
    search["results_dir"] = str(root / "search")
    search["automl"] = {
        "algorithm": "hyperband",
        "metric": "pq",
        "max_trials": args.trials,
        "parameters": PARAMETERS,
        "seed": args.seed,
    }
    spec = spec_from_dict(search)
    with ActionRun(spec, "automl") as run:
        run_automl(spec, run)
    automl_dir = root / "search" / "automl"
    # the search's cost: the trials' own wall times, whichever process (or rerun) ran them
    with open(automl_dir / "trials.csv") as rows:
        search_s = sum(float(r["seconds"] or 0) for r in csv.DictReader(rows))
    with open(summary, "a") as out:
        out.write(f"## Search: {args.trials} trials, {search_s:.0f} s of trials\n\n")
        out.write((automl_dir / "trials.md").read_text() + "\n## Comparison\n\n")
    best = load_spec(automl_dir / "best_spec.yaml")
    return search_s, {key: _get(best, key) for key in PARAMETERS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="results/automl_check")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--skip-full", action="store_true", help="no 10-epoch comparison")
    parser.add_argument("--skip-search", action="store_true", help="only step 2")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (another to resume)")
    parser.add_argument("--num-train", type=int, default=240, help="fewer for a quick try")
    parser.add_argument("--num-val", type=int, default=32)
    args = parser.parse_args(argv)
    root = Path(args.results_dir).resolve()
    summary = root / "summary.md"
    root.mkdir(parents=True, exist_ok=True)
    data = write_synthetic_dataset(
        root / "data", num_train=args.num_train, num_val=args.num_val, size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    demo_values = demo_spec(root, data, FULL_EPOCHS, args.num_train)
    summary.write_text(f"# AutoML check ({time.strftime('%Y-%m-%d %H:%M')})\n\n")

    # 1. the search
    if not args.skip_search:
        search_s, best_values = run_search(root, demo_values, args, summary)

    # 2. the demo's values on the search's schedule
    short = shortened(demo_values, args.search_epochs)
    short["results_dir"] = str(root / "demo_short")
    train_and_measure(spec_from_dict(short), "demo values (short)", summary)
    if args.skip_full or args.skip_search:
        return 0

    # 3. both on the demo's full schedule
    full_best = dict(demo_values, results_dir=str(root / "best_full"))
    overrides = [f"{key}={value}" for key, value in best_values.items()]
    best_row = train_and_measure(spec_from_dict(full_best, overrides), "best found", summary)
    full_demo = dict(demo_values, results_dir=str(root / "demo_full"))
    demo_row = train_and_measure(spec_from_dict(full_demo), "demo values", summary)
    verdict = "at least as good" if best_row["pq"] >= demo_row["pq"] else "worse"
    with open(summary, "a") as out:
        out.write(
            f"\nSearch time {search_s:.0f} s = {search_s / demo_row['seconds']:.2f} demo "
            f"trainings ({demo_row['seconds']} s). Best found at {FULL_EPOCHS} epochs: "
            f"PQ {best_row['pq']:.1f} vs demo {demo_row['pq']:.1f}: {verdict}.\n"
        )
    print(summary.read_text())
    return 0 if verdict != "worse" else 1


def _get(spec, key: str):
    value = spec
    for name in key.split("."):
        value = getattr(value, name)
    return value


def _append_row(path: Path, row: dict) -> None:
    text = path.read_text()
    if "| run |" not in text:
        text += "| " + " | ".join(row) + " |\n" + "|---" * len(row) + "|\n"
    shown = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
    path.write_text(text + "| " + " | ".join(shown) + " |\n")


if __name__ == "__main__":
    sys.exit(main())
