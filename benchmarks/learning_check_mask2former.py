"""Learning check of Mask2Former: the demo's model and data, trained as Mask2Former, and its
metrics beside those of the OneFormer demo.

    python benchmarks/learning_check_mask2former.py --variant panoptic   # PQ, mIoU and AP
    python benchmarks/learning_check_mask2former.py --variant one_class  # TAO card: 1 class, AP
    python benchmarks/learning_check_mask2former.py --read results/learning_check_m2f_panoptic \
        --oneformer results/learning_check                            # only reads finished runs

Variants (everything else is `oneseg demo`: 240 synthetic training images of 128 px, 10 epochs,
EfficientNet-Lite0 from ImageNet, hidden 64, 3 decoder layers):
- panoptic: Mask2Former in panoptic mode, 24 queries, evaluated on all three tasks from the one
  panoptic model, as the original Mask2Former reports them;
- one_class: the 1-class instance model of TAO's Mask2Former card (instance mode, 100 queries,
  `num_classes: 1`), every thing class of the data merged into "object"
  (`dataset.single_class`), evaluated by mask AP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

VARIANTS = {
    "panoptic": {"model": {"arch": "mask2former", "mode": "panoptic"}},
    "one_class": {
        "model": {"arch": "mask2former", "mode": "instance", "num_classes": 1, "num_queries": 100},
        "dataset": {"single_class": "object"},
        "evaluate": {"tasks": ["instance"]},
        "inference": {"tasks": ["instance"]},
    },
}
METRICS = ("pq", "pq_th", "pq_st", "miou", "ap", "ap50", "ap75")


def merged(base: dict, extra: dict) -> dict:
    """`base` with the mappings of `extra` merged in, key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def run_variant(root: Path, variant: str) -> None:
    """Synthesize the demo's data, then train, evaluate and segment as `variant` says."""
    from oneseg.data.synth import write_synthetic_dataset
    from oneseg.demo import IMAGE_SIZE, demo_spec
    from oneseg.engine.callbacks import latest_checkpoint
    from oneseg.engine.evaluate import run_evaluate
    from oneseg.engine.inference import run_inference
    from oneseg.engine.train import run_train
    from oneseg.experiment import ActionRun
    from oneseg.spec import dump_spec, spec_from_dict

    num_train, num_val, epochs = 240, 32, 10  # as the demo
    data = write_synthetic_dataset(
        root / "data", num_train=num_train, num_val=num_val, size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    values = merged(demo_spec(root, data, epochs, num_train), VARIANTS[variant])
    spec = spec_from_dict(values)
    (root / "spec.yaml").write_text(dump_spec(spec))
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    checkpoint = latest_checkpoint(root / "train")
    images = sorted(Path(data["val"]["images"]).iterdir())[:4]
    listing = root / "images.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in images))
    spec = spec_from_dict(
        values,
        [
            f"evaluate.checkpoint={checkpoint}",
            f"inference.checkpoint={checkpoint}",
            f"inference.images={listing}",
        ],
    )
    with ActionRun(spec, "evaluate") as run:
        run_evaluate(spec, run)
    with ActionRun(spec, "inference") as run:
        run_inference(spec, run)


def read_status(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]


def epoch_losses(folder: Path) -> list[float]:
    by_epoch: dict[int, list[float]] = {}
    for line in read_status(folder / "train"):
        if line.get("loss") is not None and "epoch" in line:
            by_epoch.setdefault(line["epoch"], []).append(line["loss"])
    return [statistics.mean(by_epoch[e]) for e in sorted(by_epoch)]


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "evaluate" / "metrics.json").read_text())["metrics"]


def report(root: Path, oneformer: Path | None) -> int:
    losses = epoch_losses(root)
    print("epoch  mean training loss")
    for epoch, loss in enumerate(losses, 1):
        print(f"{epoch:5d}  {loss:8.3f}")
    if not losses:
        print("no training loss logged (fewer steps than train.log_every_n_steps)")
        return 1
    print(f"loss fell from {losses[0]:.2f} to {losses[-1]:.2f}")
    for action in ("train", "evaluate", "inference"):
        print(f"{action:9s} {read_status(root / action)[-1]['elapsed_s']:7.1f} s")
    columns = [("mask2former", metrics_of(root))]
    if oneformer is not None:
        columns.append(("oneformer demo", metrics_of(oneformer)))
    print("metric " + "".join(f"{name:>16s}" for name, _ in columns))
    for key in METRICS:
        cells = []
        for _, metrics in columns:
            value = metrics.get(key)
            cells.append(f"{value:16.1f}" if isinstance(value, (int, float)) else f"{'-':>16s}")
        print(f"{key:6s} " + "".join(cells))
    return 0 if losses[-1] < losses[0] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="panoptic")
    parser.add_argument("--read", help="a finished run to read instead of running one")
    parser.add_argument("--results-dir", help="default results/learning_check_m2f_VARIANT")
    parser.add_argument("--oneformer", help="a finished OneFormer demo to print beside it")
    args = parser.parse_args(argv)
    root = Path(args.read or args.results_dir or f"results/learning_check_m2f_{args.variant}")
    if not args.read:
        start = time.time()
        run_variant(root, args.variant)
        print(f"{args.variant}: trained, evaluated and segmented in {time.time() - start:.0f} s")
    return report(root, Path(args.oneformer) if args.oneformer else None)


if __name__ == "__main__":
    sys.exit(main())
