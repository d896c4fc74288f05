"""Time panoptic-quality evaluation of COCO-panoptic folders: oneseg against per-segment masks.

    python benchmarks/bench_pq.py                 # 200 synthetic images 640x480, ~30 segments
    python benchmarks/bench_pq.py --data DIR      # DIR/gt.json, DIR/gt/, DIR/pred.json, DIR/pred/

The straightforward implementation reads the same PNGs, builds one boolean mask per segment and
counts the pixels of every (ground truth, prediction) pair with ``np.count_nonzero(a & b)``, as
panopticapi's definition reads. A second variant skips pairs of different categories first. Both
must give the same numbers as oneseg. All of them pay for reading the PNGs, which is timed on its
own as well; the last table times the counting alone on id maps already in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.io import read_id_png
from oneseg.metrics import PanopticQuality, evaluate_coco_panoptic

NUM_THINGS, NUM_STUFF = 80, 53  # as in COCO panoptic


def paint_shape(index, value, cy, cx, ry, rx, ellipse):
    """Paint a rectangle or an ellipse centred at (cy, cx) with radii (ry, rx) into ``index``."""
    h, w = index.shape
    y0, y1, x0, x1 = max(cy - ry, 0), min(cy + ry + 1, h), max(cx - rx, 0), min(cx + rx + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    region = index[y0:y1, x0:x1]
    if ellipse:
        yy, xx = np.ogrid[y0:y1, x0:x1]
        region[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = value
    else:
        region[:] = value


def layout(rng, h, w, stuff_cuts, things, jitter=0):
    """Index map [H, W]: stuff bands cut at ``stuff_cuts``, then thing shapes painted on top."""
    index = np.zeros((h, w), np.int64)
    bounds = [0, *[c + int(rng.integers(-jitter, jitter + 1)) for c in stuff_cuts], h]
    for i in range(len(bounds) - 1):
        index[max(bounds[i], 0) : bounds[i + 1]] = i + 1
    for value, (cy, cx, ry, rx, ellipse) in things:
        dy, dx, dr = rng.integers(-jitter, jitter + 1, size=3)
        paint_shape(index, value, cy + dy, cx + dx, max(ry + dr, 1), max(rx + dr, 1), ellipse)
    return index


def write_png(path, index, segment_ids):
    ids = segment_ids[index].astype(np.uint32)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def synthetic_image(rng, h, w, num_segments):
    """(gt index, gt [(category, iscrowd)], pred index, pred [category]); index 0 = void."""
    num_stuff = 5
    cuts = sorted(rng.integers(h // 8, h - h // 8, size=num_stuff - 1).tolist())
    stuff_cats = rng.choice(NUM_STUFF, num_stuff, replace=False) + 1 + NUM_THINGS
    gt_info = [(int(c), 0) for c in stuff_cats]
    things = []
    for _ in range(num_segments - num_stuff):
        value = len(gt_info) + 1
        shape = (
            int(rng.integers(0, h)),
            int(rng.integers(0, w)),
            int(rng.integers(8, h // 5)),
            int(rng.integers(8, w // 5)),
            bool(rng.random() < 0.5),
        )
        things.append((value, shape))
        gt_info.append((int(rng.integers(1, NUM_THINGS + 1)), int(rng.random() < 0.05)))
    gt = layout(rng, h, w, cuts, things)
    for _ in range(3):  # unlabelled blobs
        paint_shape(gt, 0, rng.integers(0, h), rng.integers(0, w), 20, 30, True)
    # prediction: the same scene with moved borders, some misses, wrong classes, extra segments
    kept = [t for t in things if rng.random() > 0.1]
    extra = len(gt_info) + 1
    for k in range(3):
        kept.append((extra + k, (rng.integers(0, h), rng.integers(0, w), 25, 25, True)))
    pred = layout(rng, h, w, cuts, kept, jitter=6)
    pred_info = [
        c if rng.random() > 0.1 else int(rng.integers(1, NUM_THINGS + 1)) for c, _ in gt_info
    ]
    pred_info += [int(rng.integers(1, NUM_THINGS + 1)) for _ in range(3)]
    return gt, gt_info, pred, pred_info


def write_synthetic_set(folder: Path, num_images, h, w, num_segments, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "gt").mkdir(parents=True)
    (folder / "pred").mkdir()
    gt_anns, pred_anns = [], []
    for image_id in range(num_images):
        gt, gt_info, pred, pred_info = synthetic_image(rng, h, w, num_segments)
        file_name = f"{image_id:012d}.png"
        for index, info, anns, name in (
            (gt, gt_info, gt_anns, "gt"),
            (pred, pred_info, pred_anns, "pred"),
        ):
            segment_ids = rng.choice(2**24 - 1, size=len(info) + 1, replace=False) + 1
            segment_ids[0] = 0
            write_png(folder / name / file_name, index, segment_ids)
            present = np.unique(index)
            segments = []
            for i in present[present > 0].tolist():
                category, iscrowd = info[i - 1] if name == "gt" else (info[i - 1], 0)
                segments.append(
                    {"id": int(segment_ids[i]), "category_id": category, "iscrowd": iscrowd}
                )
            anns.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
    categories = [
        {"id": c, "name": f"class{c}", "isthing": int(c <= NUM_THINGS)}
        for c in range(1, NUM_THINGS + NUM_STUFF + 1)
    ]
    for name, anns in (("gt", gt_anns), ("pred", pred_anns)):
        with open(folder / f"{name}.json", "w") as f:
            json.dump({"annotations": anns, "categories": categories}, f)


def reference_image(stats, gt_ids, gt_segments, pred_ids, pred_segments, same_class_only):
    """Per-segment boolean masks; updates stats[category] = [tp, fp, fn, iou sum]."""
    void = gt_ids == 0
    gt_masks = {g["id"]: gt_ids == g["id"] for g in gt_segments}
    pred_masks = {p["id"]: pred_ids == p["id"] for p in pred_segments}
    inter = {}
    for g in gt_segments:
        for p in pred_segments:
            if same_class_only and g["category_id"] != p["category_id"]:
                continue
            inter[g["id"], p["id"]] = np.count_nonzero(gt_masks[g["id"]] & pred_masks[p["id"]])
    pred_area = {pid: np.count_nonzero(mask) for pid, mask in pred_masks.items()}
    pred_void = {p["id"]: np.count_nonzero(pred_masks[p["id"]] & void) for p in pred_segments}
    matched = set()
    for g in gt_segments:
        gt_area = np.count_nonzero(gt_masks[g["id"]])
        for p in pred_segments:
            if g["iscrowd"] or g["category_id"] != p["category_id"]:
                continue
            i = inter[g["id"], p["id"]]
            iou = i / (gt_area + pred_area[p["id"]] - i - pred_void[p["id"]]) if i else 0.0
            if iou > 0.5:
                stats[g["category_id"]][0] += 1
                stats[g["category_id"]][3] += iou
                matched.update([("gt", g["id"]), ("pred", p["id"])])
        if not g["iscrowd"] and ("gt", g["id"]) not in matched:
            stats[g["category_id"]][2] += 1
    for p in pred_segments:
        if ("pred", p["id"]) in matched:
            continue
        ignored = pred_void[p["id"]] + sum(
            inter[g["id"], p["id"]]
            for g in gt_segments
            if g["iscrowd"] and g["category_id"] == p["category_id"]
        )
        if ignored / pred_area[p["id"]] <= 0.5:
            stats[p["category_id"]][1] += 1


def reference_evaluate(folder: Path, same_class_only: bool) -> PanopticQuality:
    gt, pred = (json.loads((folder / f"{n}.json").read_text()) for n in ("gt", "pred"))
    metric = PanopticQuality.from_coco_categories(gt["categories"])
    stats = _empty_stats(int(c) for c in metric.category_ids)
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    for gt_ann in gt["annotations"]:
        pred_ann = pred_by_image[gt_ann["image_id"]]
        gt_ids = read_id_png(folder / "gt" / gt_ann["file_name"])
        pred_ids = read_id_png(folder / "pred" / pred_ann["file_name"])
        reference_image(
            stats,
            gt_ids,
            gt_ann["segments_info"],
            pred_ids,
            pred_ann["segments_info"],
            same_class_only,
        )
    table = np.array([stats[int(c)] for c in metric.category_ids])
    metric.tp, metric.fp, metric.fn = (table[:, i].astype(np.int64) for i in range(3))
    metric.iou = table[:, 3]
    return metric


def check_equal(ours: PanopticQuality, other: PanopticQuality, label: str) -> None:
    for name in ("tp", "fp", "fn"):
        if not np.array_equal(getattr(ours, name), getattr(other, name)):
            raise SystemExit(f"{label}: {name} differs from oneseg")
    a, b = ours.compute(), other.compute()
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            if abs(a[group][key] - b[group][key]) > 1e-9:
                raise SystemExit(f"{label}: {group} {key} differs from oneseg")


def cpu_time() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def read_all(folder: Path) -> int:
    """Read every PNG of the set, as all implementations do: the floor of their times."""
    for name in ("gt", "pred"):
        for ann in json.loads((folder / f"{name}.json").read_text())["annotations"]:
            read_id_png(folder / name / ann["file_name"])
    return 0


def read_maps(folder: Path, num_images: int) -> list[tuple]:
    """(gt ids, gt segments, pred ids, pred segments) of the first images, read once."""
    gt, pred = (json.loads((folder / f"{n}.json").read_text()) for n in ("gt", "pred"))
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    maps = []
    for gt_ann in gt["annotations"][:num_images]:
        pred_ann = pred_by_image[gt_ann["image_id"]]
        gt_ids = read_id_png(folder / "gt" / gt_ann["file_name"])
        pred_ids = read_id_png(folder / "pred" / pred_ann["file_name"])
        maps.append((gt_ids, gt_ann["segments_info"], pred_ids, pred_ann["segments_info"]))
    return maps


def time_counting(maps: list[tuple], like: PanopticQuality, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` seconds to count ``maps`` for each implementation, reading excluded."""
    categories = {int(c): bool(t) for c, t in zip(like.category_ids, like.isthing)}
    runs = {
        "per-segment masks, all pairs": lambda stats, m: reference_image(stats, *m, False),
        "per-segment masks, same-class pairs": lambda stats, m: reference_image(stats, *m, True),
        "oneseg": lambda metric, m: metric.update(*m),
    }
    seconds = {}
    for label, count in runs.items():
        times = []
        for _ in range(repeat):
            state = PanopticQuality(categories) if label == "oneseg" else _empty_stats(categories)
            start = time.perf_counter()
            for m in maps:
                count(state, m)
            times.append(time.perf_counter() - start)
        seconds[label] = min(times)
    return seconds


def _empty_stats(categories) -> dict[int, list]:
    return {c: [0, 0, 0, 0.0] for c in categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="existing set: gt.json, gt/, pred.json, pred/")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--segments", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument(
        "--counting-images", type=int, default=50, help="images timed without reading"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data
        if folder is None:
            folder = Path(tmp)
            start = time.perf_counter()
            write_synthetic_set(folder, args.images, args.height, args.width, args.segments)
            seconds = time.perf_counter() - start
            print(f"wrote {args.images} image pairs to {folder} in {seconds:.1f} s")
        gt_json, pred_json = folder / "gt.json", folder / "pred.json"
        runs = {
            "per-segment masks, all pairs": lambda: reference_evaluate(folder, False),
            "per-segment masks, same-class pairs": lambda: reference_evaluate(folder, True),
            "oneseg workers=1": lambda: evaluate_coco_panoptic(gt_json, pred_json, workers=1),
            "oneseg workers=2": lambda: evaluate_coco_panoptic(gt_json, pred_json, workers=2),
            "(reading the PNGs only)": lambda: read_all(folder),
        }
        seconds, cpu_seconds, results = {}, {}, {}
        for label, run in runs.items():
            times, cpu_times = [], []
            for _ in range(args.repeat):
                start, cpu_start = time.perf_counter(), cpu_time()
                results[label] = run()
                times.append(time.perf_counter() - start)
                cpu_times.append(cpu_time() - cpu_start)
            seconds[label], cpu_seconds[label] = min(times), min(cpu_times)
        ours = results["oneseg workers=1"]
        for label in list(runs)[:-1]:
            check_equal(ours, results[label], label)
        if ours.compute() != results["oneseg workers=2"].compute():
            raise SystemExit("workers=2 differs from workers=1")
        num_images = len(json.loads(gt_json.read_text())["annotations"])
        maps = read_maps(folder, args.counting_images)
        counting_seconds = time_counting(maps, results["oneseg workers=1"], args.repeat)

    summary = ours.compute()["All"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"PQ {summary['pq']:.4f}  SQ {summary['sq']:.4f}  RQ {summary['rq']:.4f}")
    print("all implementations agree (tp/fp/fn exactly, PQ/SQ/RQ to 1e-9)")
    print(f"best of {args.repeat} runs; speed-up against per-segment masks, all pairs;")
    print("cpu s: CPU time of all processes, which a busy machine inflates less than seconds\n")
    base = seconds["per-segment masks, all pairs"]
    print(f"{'implementation':38s} {'seconds':>8s} {'ms/image':>9s} {'speed-up':>9s} {'cpu s':>7s}")
    for label, t in seconds.items():
        row = f"{label:38s} {t:8.2f} {1000 * t / num_images:9.1f} {base / t:8.1f}x"
        print(f"{row} {cpu_seconds[label]:7.2f}")
    print(f"\ncounting alone, one process, on the first {len(maps)} id maps in memory:")
    base = counting_seconds["per-segment masks, all pairs"]
    for label, t in counting_seconds.items():
        print(f"{label:38s} {t:8.2f} {1000 * t / len(maps):9.1f} {base / t:8.1f}x")


if __name__ == "__main__":
    main()
