"""Tiled inference on mosaics of demo scenes at their own scale, against resizing as before.

    python benchmarks/bench_tiles.py --checkpoint results/demo/train/last.ckpt
    python benchmarks/bench_tiles.py --checkpoint CKPT --grids 8 --sizes 128 256   # a subset

The demo model (`oneseg demo`: trained on 128x128 synthetic scenes) segments scenes it has not
seen (`write_synthetic_dataset` with another seed), one by one: the per-scene PQ. The same
scenes are laid side by side into a mosaic (8 x 8 scenes -> 1024 x 1024; 32 x 32 -> 4096 x 4096,
the 64 scenes repeated under the four flips), whose ground truth is the scenes' segments
(stuff of one class is one segment, as in one image). The mosaic is segmented (a) tiled:
windows of `size` at the scenes' own scale, and (b) resized as without tiles: shortest edge to
the evaluation size (128). Reported per run: PQ / PQ things / PQ stuff against the mosaic's
ground truth; of the ground-truth things that cross a seam between two windows' cells, how
many are split or duplicated (2 or more predicted segments each cover at least 10% of it), and
the same count for the other things (splits the model makes on its own); peak RSS of the
process (segmentation only, model included); seconds to segment. Each run is its own process.
With --no-join the seam joining is switched off, to show what the split count sees.
Writes benchmarks/results/tiles.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import describe, machine_line, peak_rss_mib, table, write_report
from scipy import ndimage

SCENE = 128  # the demo's image and evaluation size
NUM_SCENES = 64


def scenes(folder: Path):
    """The 64 unseen scenes: dataset, label map (written once under `folder`)."""
    import dataclasses

    from oneseg.data.build import build_dataset
    from oneseg.data.label_map import LabelMap
    from oneseg.data.synth import synthetic_dataset_config, synthetic_paths, write_synthetic_dataset

    if (folder / "label_map.json").is_file():
        data = synthetic_paths(folder)
    else:
        data = write_synthetic_dataset(folder, 1, NUM_SCENES, (SCENE, SCENE), seed=101)
    cfg = synthetic_dataset_config(data)
    cfg.augmentation = dataclasses.replace(cfg.augmentation, eval_min_size=SCENE)
    label_map = LabelMap.from_json(data["label_map"])
    return build_dataset(cfg, "val", label_map, 0, 32, train=False), label_map


def mosaic(dataset, label_map, grid: int):
    """[H, W, 3] image, [H, W] int32 ground-truth ids, their segments (id, category_id,
    iscrowd, isthing) for grid x grid scenes."""
    size = grid * SCENE
    image = np.zeros((size, size, 3), np.uint8)
    truth = np.zeros((size, size), np.int32)
    segments, stuff = [], {}
    loaded = [dataset.load(i) for i in range(len(dataset))]
    category_ids = label_map.category_ids
    for place in range(grid * grid):
        _, scene, annotation = loaded[place % len(loaded)]
        flip = (place // len(loaded)) % 4
        ids = annotation.segment_map
        if flip & 1:
            scene, ids = scene[:, ::-1], ids[:, ::-1]
        if flip & 2:
            scene, ids = scene[::-1], ids[::-1]
        y, x = SCENE * (place // grid), SCENE * (place % grid)
        image[y : y + SCENE, x : x + SCENE] = scene
        for s in annotation.segments:
            if s.isthing or s.iscrowd:
                new = len(segments) + 1
                segments.append(
                    {
                        "id": new,
                        "category_id": category_ids[s.class_index],
                        "iscrowd": int(s.iscrowd),
                        "isthing": bool(s.isthing),
                    }
                )
            elif s.class_index in stuff:
                new = stuff[s.class_index]
            else:
                new = stuff[s.class_index] = len(segments) + 1
                segments.append(
                    {"id": new, "category_id": category_ids[s.class_index], "isthing": False}
                )
            truth[y : y + SCENE, x : x + SCENE][ids == s.id] = new
    return image, truth, segments


def split_counts(truth, segments, pred_ids, pred_segments, cells, alone=None) -> dict:
    """Things crossing a seam (their pixels in 2+ windows' cells) and those split or duplicated
    (2+ predicted thing segments each cover >= 10% of it), and the same for the others. With
    `alone` (the per-scene predictions laid out as the mosaic: ids, segments), also the seam
    things the model finds on their own scene (a thing segment there with IoU > 0.5) that come
    back split: the splits the seams make, not the model's own mistakes."""
    row_cell, col_cell = cells
    things = {s["id"] for s in segments if s["isthing"] and not s["iscrowd"]}
    pred_things = {s["id"] for s in pred_segments if s["isthing"]}
    alone_things = {s["id"] for s in alone[1] if s["isthing"]} if alone else set()
    counts = {"seam_things": 0, "split_at_seams": 0, "other_things": 0, "split_elsewhere": 0}
    if alone:
        counts.update(seam_things_found_alone=0, split_at_seams_found_alone=0)
    for gid, box in enumerate(ndimage.find_objects(truth), 1):
        if box is None or gid not in things:
            continue
        inside = truth[box] == gid
        rows, cols = np.nonzero(inside)
        crossing = len(set(zip(row_cell[box[0]][rows], col_cell[box[1]][cols]))) > 1
        covering = np.bincount(pred_ids[box][inside])
        pieces = [p for p in np.flatnonzero(covering >= 0.1 * inside.sum()) if p in pred_things]
        kind = "seam_things" if crossing else "other_things"
        counts[kind] += 1
        if len(pieces) > 1:
            counts["split_at_seams" if crossing else "split_elsewhere"] += 1
        if alone and crossing and _found(alone[0], alone_things, truth == gid):
            counts["seam_things_found_alone"] += 1
            counts["split_at_seams_found_alone"] += len(pieces) > 1
    counts["merged"] = merged_segments(truth, things, pred_ids, pred_things)
    return counts


def _found(pred_ids, pred_things, mask) -> bool:
    """A predicted thing segment matches the mask (IoU > 0.5)."""
    ids, inter = np.unique(pred_ids[mask], return_counts=True)
    for pid, n in zip(ids, inter):
        if pid in pred_things and n / (mask.sum() + (pred_ids == pid).sum() - n) > 0.5:
            return True
    return False


def alone_predictions(predictor, image, truth, truth_segments, grid: int):
    """Each scene of the mosaic segmented on its own: laid out as the mosaic (ids, segments),
    and (truth, segments, result) of each scene, for the per-scene PQ of this mosaic's scenes
    (flips included)."""
    ids = np.zeros(image.shape[:2], np.int32)
    segments, seen, pairs = [], {}, []
    for place in range(grid * grid):
        y, x = SCENE * (place // grid), SCENE * (place % grid)
        crop = image[y : y + SCENE, x : x + SCENE]
        key = crop.tobytes()
        if key not in seen:
            seen[key] = predictor(np.ascontiguousarray(crop), "panoptic")
        result = seen[key]
        offset = len(segments)
        ids[y : y + SCENE, x : x + SCENE] = np.where(
            result.segment_ids > 0, result.segment_ids + offset, 0
        )
        segments += [{**s, "id": s["id"] + offset} for s in result.segments]
        scene_truth = truth[y : y + SCENE, x : x + SCENE]
        present = set(np.unique(scene_truth).tolist())
        pairs.append((scene_truth, [t for t in truth_segments if t["id"] in present], result))
    return ids, segments, pairs


def merged_segments(truth, things, pred_ids, pred_things) -> int:
    """Predicted thing segments that hold the bulk (>= 50%) of two or more ground-truth things:
    objects wrongly put together, by the model or by joining across seams."""
    areas = np.bincount(truth.ravel())
    merged = 0
    for pid, box in enumerate(ndimage.find_objects(pred_ids), 1):
        if box is None or pid not in pred_things:
            continue
        held = np.bincount(truth[box][pred_ids[box] == pid], minlength=len(areas))
        bulk = [g for g in np.flatnonzero(held >= 0.5 * areas) if g in things]
        merged += len(bulk) > 1
    return merged


def pq_of(label_map, pairs) -> dict:
    from oneseg.metrics.panoptic_quality import PanopticQuality

    pq = PanopticQuality(dict(zip(label_map.category_ids, label_map.isthing)))
    for truth, segments, result in pairs:
        predicted = [
            {"id": s["id"], "category_id": label_map.category_ids[s["label"]]}
            for s in result.segments
        ]
        pq.update(truth, segments, result.segment_ids, predicted)
    out = pq.compute()
    return {
        k: round(100 * out[g]["pq"], 2)
        for k, g in (("pq", "All"), ("pq_th", "Things"), ("pq_st", "Stuff"))
    }


def child(args) -> dict:
    """One run, in this process: per-scene PQ, or one mosaic tiled or resized."""
    from oneseg.predictor import Predictor
    from oneseg.tiling import plan_windows, tile_settings

    dataset, label_map = scenes(Path(args.scenes))
    tile = None
    if args.size:
        tile = {"size": args.size, "overlap": args.overlap, "join": not args.no_join}
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        device="cpu",
        min_size=SCENE,
        max_size=2 * SCENE,
        tile=tile,
        cpu_threads=args.threads,
    )
    if args.grid == 0:  # each scene on its own
        start = time.time()
        pairs = []
        for i in range(len(dataset)):
            _, image, annotation = dataset.load(i)
            result = predictor(image, "panoptic")
            segments = [
                {
                    "id": s.id,
                    "category_id": label_map.category_ids[s.class_index],
                    "iscrowd": int(s.iscrowd),
                }
                for s in annotation.segments
            ]
            pairs.append((annotation.segment_map, segments, result))
        return {
            "seconds": time.time() - start,
            "rss_mib": peak_rss_mib(),
            **pq_of(label_map, pairs),
        }
    image, truth, segments = mosaic(dataset, label_map, args.grid)
    start = time.time()
    result = predictor(image, "panoptic")
    seconds, rss = time.time() - start, peak_rss_mib()
    plan = plan_windows(*truth.shape, args.size or SCENE, args.overlap or SCENE // 2)  # seams
    row_cell = np.repeat(np.arange(len(plan)), [r[0].cell[1] - r[0].cell[0] for r in plan])
    col_cell = np.repeat(np.arange(len(plan[0])), [w.cell[3] - w.cell[2] for w in plan[0]])
    out = {"seconds": seconds, "rss_mib": rss, "windows": len(plan) * len(plan[0])}
    out.update(pq_of(label_map, [(truth, segments, result)]))
    alone = None
    if args.size:
        predictor.tile = tile_settings("off", SCENE)  # scenes one by one, as per scene
        *alone, pairs = alone_predictions(predictor, image, truth, segments, args.grid)
        out["pq_per_scene"] = pq_of(label_map, pairs)["pq"]
    cells = (row_cell, col_cell)
    out.update(split_counts(truth, segments, result.segment_ids, result.segments, cells, alone))
    return out


def run_child(args, grid: int, size: int, overlap: int, no_join: bool = False) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--checkpoint",
        args.checkpoint,
        "--scenes",
        args.scenes,
        "--grid",
        str(grid),
        "--size",
        str(size),
        "--overlap",
        str(overlap),
        "--threads",
        str(args.threads),
    ]
    command += ["--no-join"] if no_join else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the demo model (oneseg demo)")
    parser.add_argument("--scenes", default="benchmarks/results/tile_scenes")
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="window sides")
    parser.add_argument("--overlap", type=float, default=0.5, help="share of the window")
    parser.add_argument("--no-join", action="store_true", help="also run without joining")
    parser.add_argument("--report", default="tiles", help="benchmarks/results/REPORT.{md,json}")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: a busy shared machine)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.overlap = int(args.overlap)
        print(json.dumps(child(args)))
        return
    machine = machine_line()
    runs = [
        {"mosaic": "scenes one by one", "path": "resized (= own size)", **run_child(args, 0, 0, 0)}
    ]
    print(runs[-1], flush=True)
    for grid in args.grids:
        for size in args.sizes[: 1 if grid > 8 else None]:
            overlap = int(size * args.overlap)
            for no_join in (False, True) if args.no_join and grid == 8 else (False,):
                path = f"tiled {size}/{overlap}" + (" no join" if no_join else "")
                runs.append(
                    {
                        "mosaic": f"{grid * SCENE}²",
                        "path": path,
                        **run_child(args, grid, size, overlap, no_join),
                    }
                )
                print(runs[-1], flush=True)
        runs.append(
            {"mosaic": f"{grid * SCENE}²", "path": "resized to 128", **run_child(args, grid, 0, 0)}
        )
        print(runs[-1], flush=True)
    keys = [
        "pq",
        "pq_per_scene",
        "pq_th",
        "pq_st",
        "seam_things",
        "split_at_seams",
        "other_things",
        "split_elsewhere",
        "seam_things_found_alone",
        "split_at_seams_found_alone",
        "merged",
        "windows",
        "rss_mib",
        "seconds",
    ]
    rows = [[r["mosaic"], r["path"], *(_cell(r.get(k)) for k in keys)] for r in runs]
    markdown = f"{describe(machine)}\n\n" + table(["mosaic", "path", *keys], rows) + "\n"
    print(markdown)
    write_report(
        args.report, markdown, {"machine": machine, "checkpoint": args.checkpoint, "runs": runs}
    )


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
