"""Peak memory of `oneseg inference` on one very large image, for each task.

Writes an 8000x6000 photo-like JPEG and a checkpoint of the demo model (random weights, or
`--checkpoint`), then runs the inference action once per task, each in a fresh process, and
prints its peak resident memory (ru_maxrss). With random weights every query is kept
(`model.object_mask_threshold=0`), the worst case for panoptic and instance memory.

    python benchmarks/inference_memory.py [--size 8000x6000] [--checkpoint CKPT] [--out DIR]
                                       [--tasks semantic,instance,panoptic]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = """
import resource, sys
from oneseg import cli
code = cli.main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "EXIT", code)
"""


def photo(path: Path, width: int, height: int) -> None:
    """A smooth colour field with some discs: compresses like a photo, not like noise."""
    ys, xs = np.mgrid[0:height:8, 0:width:8]
    small = np.stack([xs % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    image.save(path, quality=90)


def demo_checkpoint(path: Path) -> None:
    import torch

    from oneseg.checkpoint import make_checkpoint, save_atomic
    from oneseg.config import ModelConfig
    from oneseg.data.label_map import LabelMap
    from oneseg.data.synth import write_synthetic_dataset
    from oneseg.demo import DEMO_MODEL
    from oneseg.model.build import build_model
    from oneseg.spec import section_from_dict

    data = write_synthetic_dataset(path.parent / "synth", num_train=1, num_val=1, size=(64, 64))
    label_map = LabelMap.from_json(data["label_map"])
    cfg = section_from_dict(ModelConfig, DEMO_MODEL, "model")
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=len(label_map))
    save_atomic(make_checkpoint(cfg, label_map, model.state_dict()), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT")
    parser.add_argument("--checkpoint", default="", help="default: the demo model, random")
    parser.add_argument("--out", default="", help="working folder (default: a temporary one)")
    parser.add_argument("--tasks", default="semantic,instance,panoptic", help="comma-separated")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    root = Path(args.out or tempfile.mkdtemp(prefix="oneseg-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    image = root / "large.jpg"
    photo(image, width, height)
    checkpoint = Path(args.checkpoint) if args.checkpoint else root / "demo.pth"
    if not args.checkpoint:
        demo_checkpoint(checkpoint)
    rows = []
    for task in args.tasks.split(","):
        argv = [
            "inference",
            f"results_dir={root / task}",
            f"inference.checkpoint={checkpoint}",
            f"inference.images={image}",
            f"inference.tasks=[{task}]",
            "dataset.augmentation.eval_min_size=512",
            "model.object_mask_threshold=0.0",
        ]
        start = time.time()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False
        )
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("PEAK_RSS_KB")]
        if done.returncode or not line or not line[0].endswith("EXIT 0"):
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
            return 1
        peak_gb = int(line[0].split()[1]) / 2**20
        rows.append(
            {
                "task": task,
                "peak_rss_gb": round(peak_gb, 2),
                "seconds": round(time.time() - start, 1),
            }
        )
        print(f"{task:9s} {width}x{height}: peak RSS {peak_gb:.2f} GB in {rows[-1]['seconds']} s")
    (root / "memory.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
