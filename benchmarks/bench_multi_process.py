"""`oneseg evaluate` on 1 and on 2 CPU processes (gloo): wall time of the command and of the
scoring alone.

    python benchmarks/bench_multi_process.py                  # 24 images, 1 and 2 processes
    python benchmarks/bench_multi_process.py --images 48 --repeats 2

The demo's model (EfficientNet-Lite0 OneFormer, `oneseg.demo.DEMO_MODEL`) with random weights
scores a synthetic validation set of 128x128 images, all three tasks, batch 1, no loader
workers. Each setting runs the `oneseg evaluate` command in a fresh process tree, the settings
alternated `--repeats` times. Reported per setting (best of the repeats):
- command: wall seconds of the whole command (start-up, model load, scoring, merge, tables);
- scoring: `seconds_per_image` x images from metrics.json (from the first batch to the merged
  metrics, so start-up and model load are left out).
The threads: oneseg's choice (this machine's cores split between the processes). The metrics
of the two settings are checked equal. Writes benchmarks/results/multi_process_IMAGES.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, machine_line, table, write_report  # noqa: E402

from oneseg.checkpoint import make_checkpoint, save_atomic  # noqa: E402
from oneseg.config import ModelConfig  # noqa: E402
from oneseg.data.label_map import LabelMap  # noqa: E402
from oneseg.data.synth import write_synthetic_dataset  # noqa: E402
from oneseg.demo import DEMO_MODEL, IMAGE_SIZE  # noqa: E402
from oneseg.model.build import build_model  # noqa: E402
from oneseg.spec import spec_from_dict  # noqa: E402


def prepare(root: Path, images: int) -> Path:
    """A synthetic validation set, a random-weight checkpoint of the demo model and a spec."""
    data = write_synthetic_dataset(
        root / "data", num_train=1, num_val=images, size=(IMAGE_SIZE, IMAGE_SIZE), seed=0
    )
    label_map = LabelMap.from_json(data["label_map"])
    model_cfg = spec_from_dict({"model": DEMO_MODEL}).model
    assert isinstance(model_cfg, ModelConfig)
    torch.manual_seed(0)
    model = build_model(model_cfg, num_classes=len(label_map))
    checkpoint = root / "model.pth"
    save_atomic(make_checkpoint(model_cfg, label_map, model.state_dict()), checkpoint)
    val = data["val"]
    spec = {
        "dataset": {
            "val": {
                "images": str(val["images"]),
                "annotations": str(val["panoptic_json"]),
                "panoptic": str(val["panoptic"]),
            },
            "label_map": str(data["label_map"]),
            "workers": 0,
            "augmentation": {"eval_min_size": IMAGE_SIZE, "eval_max_size": IMAGE_SIZE * 2},
        },
        "evaluate": {"checkpoint": str(checkpoint), "batch_size": 1},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_once(spec: Path, results: Path, processes: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "oneseg.cli",
        "evaluate",
        "-e",
        str(spec),
        f"results_dir={results}",
        f"evaluate.num_processes_cpu={processes}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "WORLD_SIZE")}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    saved = json.loads((results / "evaluate" / "metrics.json").read_text())
    metrics = saved["metrics"]
    return {
        "command_s": wall,
        "scoring_s": metrics.pop("seconds_per_image") * metrics["num_images"],
        "metrics": metrics,
        "command": " ".join(command[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    machine = machine_line()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        spec = prepare(root, args.images)
        for repeat in range(args.repeats):
            for processes in runs:
                results = root / f"r{processes}_{repeat}"
                runs[processes].append(run_once(spec, results, processes))
                print(f"{processes} process(es): {runs[processes][-1]['command_s']:.1f} s")
    one, two = runs[1][0]["metrics"], runs[2][0]["metrics"]
    differ = [
        k
        for k in one
        if not (one[k] == two[k] or (one[k] is None and two[k] is None))
        and not math.isclose(one[k], two[k], rel_tol=0, abs_tol=1e-9)
    ]
    rows, data = [], {"machine": machine, "images": args.images, "runs": runs}
    for processes, done in runs.items():
        command = min(r["command_s"] for r in done)
        scoring = min(r["scoring_s"] for r in done)
        rows.append([processes, f"{command:.1f}", f"{scoring:.1f}", f"{scoring / args.images:.3f}"])
    markdown = "\n".join(
        [
            f"# oneseg evaluate on 1 and 2 CPU processes ({args.images} images of "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}, demo model, random weights)",
            "",
            describe(machine),
            "",
            table(["processes", "command s", "scoring s", "scoring s/image"], rows),
            "",
            f"metrics equal (1e-9): {'yes' if not differ else 'no: ' + ', '.join(differ)}",
            f"command: `python {runs[2][0]['command']}`",
            "",
        ]
    )
    data["metrics_equal"] = not differ
    md, _ = write_report(f"multi_process_{args.images}", markdown, data)
    print(markdown)
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
