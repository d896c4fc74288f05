"""The `evaluate` action: PQ, mIoU and mask AP of a checkpoint on `dataset.val` or `.test`.

Writes into the action's folder:
    metrics.json        every number, per class included (NaN written as null)
    per_class.md, .csv  one row per class: PQ, SQ, RQ, IoU, AP   (with evaluate.iou_per_class)
    per_class.png       bar chart of per-class PQ, IoU and AP     (with evaluate.iou_per_class)
and puts the headline numbers into status.json as KPIs.

On several processes (`evaluate.num_gpus`, `num_processes_cpu`, `num_nodes`; see
`oneseg.engine.processes`) each scores every W-th image and rank 0 merges the per-image states
and writes: the metrics are those of one process.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch.utils.data import DataLoader

from oneseg.cpu_threads import set_intra_op_threads
from oneseg.data.archive import with_unpacked_archives
from oneseg.data.build import build_dataloader, load_label_map
from oneseg.data.intensity import choose_intensity
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError
from oneseg.engine.evaluator import Evaluator, evaluate_loader
from oneseg.engine.processes import Processes, launched, open_section_model, plan_processes
from oneseg.errors import RunFailed
from oneseg.io import write_json_atomic

SUMMARY_KEYS = {
    "panoptic": ("pq", "sq", "rq", "pq_th", "pq_st"),
    "semantic": ("miou", "fwiou", "pixel_acc", "mean_acc"),
    "instance": ("ap", "ap50", "ap75", "aps", "apm", "apl"),
}
CLASS_COLUMNS = ("pq", "sq", "rq", "iou", "ap")
LABELS = {
    "pq_th": "PQ things",
    "pq_st": "PQ stuff",
    "miou": "mIoU",
    "fwiou": "fwIoU",
    "pixel_acc": "pixel acc",
    "mean_acc": "mean acc",
    "aps": "AP small",
    "apm": "AP medium",
    "apl": "AP large",
}


def run_evaluate(spec, run) -> None:
    """Score the model on `evaluate.split`, on one process or several (the images split
    between them, merged on rank 0, which alone writes)."""
    spec = with_unpacked_archives(spec)
    cfg = spec.evaluate
    plan = plan_processes(cfg, "evaluate")
    set_intra_op_threads(spec.cpu_threads, spec.dataset.workers, plan.cpu_processes)
    with launched(plan) as processes:
        _evaluate(spec, run, processes)


def _evaluate(spec, run, processes: Processes) -> None:
    cfg = spec.evaluate
    opened = open_section_model(spec, "evaluate", run, processes)
    if opened.dropped:
        run.log("RUNNING", opened.dropped_message("not evaluating"))
    tasks = opened.tasks
    label_map = opened.label_map
    _check_label_map(spec, label_map, run, processes.is_main)
    if spec.dataset.type == "semantic" and tasks != ["semantic"]:
        run.log("RUNNING", "semantic label folders have no instances: evaluating mIoU only")
        tasks = ["semantic"]
    loader = build_dataloader(
        spec.dataset,
        cfg.split,
        label_map,
        text_list_len=0,
        size_divisibility=opened.size_divisibility,
        train=False,
        batch_size=cfg.batch_size,
        intensity=choose_intensity(spec.dataset.intensity, opened.intensity),
        tokens=False,
    )
    dataset = loader.dataset
    loader = shard_loader(loader, processes.shard(len(dataset)))
    evaluator = Evaluator(dataset, label_map, tasks)
    run.log(
        "RUNNING",
        f"evaluating {opened.source} on {len(dataset)} images ({cfg.split}), "
        f"{processes.world_size} process(es)",
    )
    start = time.time()
    log_every = max(1, len(loader) // 10)
    with Progress(transient=True, disable=not processes.is_main) as progress:
        bar = progress.add_task(f"evaluate {cfg.split}", total=len(loader))

        def on_step(step: int, total: int) -> None:
            processes.step(cfg.batch_size)
            progress.advance(bar)
            if step % log_every == 0 and step < total:
                run.log("RUNNING", f"batch {step}/{total}", step=step, total=total)

        if cfg.tile.mode == "off":
            evaluate_loader(opened.runner, loader, evaluator, on_step)
        else:
            indices = processes.shard(len(dataset))
            evaluate_tiled(opened, spec, dataset, indices, evaluator, on_step)
    shards = processes.gather(evaluator.images)
    if not processes.is_main:
        return
    evaluator.images = merge_shards(shards, len(dataset))
    metrics = evaluator.compute(gather=False)
    seconds = time.time() - start
    per_class = metrics.pop("per_class")
    metrics["seconds_per_image"] = seconds / max(1.0, metrics["num_images"])

    folder = Path(run.dir)
    write_metrics_json(folder / "metrics.json", metrics, per_class, opened.source, cfg.split)
    if cfg.iou_per_class:
        write_class_tables(folder, per_class)
        write_class_chart(folder / "per_class.png", per_class)
    run.kpis.update({k: round(v, 4) for k, v in metrics.items() if not math.isnan(v)})
    run.kpis["processes"] = processes.world_size
    print_summary(metrics, tasks, len(dataset), cfg.split)


def shard_loader(loader: DataLoader, indices: list[int]) -> DataLoader:
    """`loader` over the dataset items `indices` only, in that order (same batches, workers
    and collation); the loader itself when they are all of its items."""
    if indices == list(range(len(loader.dataset))):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=indices,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
    )


def merge_shards(shards: list[dict], num_images: int) -> dict:
    """The per-image states of every process as one dict by dataset index; refuses a merge
    where an image is missing or was scored twice (the shards must split the dataset)."""
    merged: dict = {}
    for shard in shards:
        merged.update(shard)
    scored = sum(len(shard) for shard in shards)
    if scored != len(merged) or len(merged) != num_images:
        raise RunFailed(
            f"evaluate: the processes scored {scored} images ({len(merged)} different) of "
            f"{num_images}; every image must be scored once"
        )
    return dict(sorted(merged.items()))


def evaluate_tiled(opened, spec, dataset, indices, evaluator: Evaluator, on_step) -> None:
    """`evaluate.tile` on or auto: each image of `indices` (this process's) read at its own
    size and segmented by a `Predictor` with those tile settings (tiled, or resized as the
    loader does when `auto` leaves it whole), one image at a time."""
    from oneseg.predictor import Predictor

    aug = spec.dataset.augmentation
    predictor = Predictor.from_opened(
        opened,
        min_size=aug.eval_min_size,
        max_size=aug.eval_max_size,
        intensity=dataset.intensity,
        cpu_threads=None,
        tile=spec.evaluate.tile,
    )
    for step, index in enumerate(indices, 1):
        record, image, _ = dataset.load(index)
        results = predictor.predict([image], evaluator.tasks)
        evaluator.update({"image_ids": [record.image_id]}, results)
        on_step(step, len(indices))


def _check_label_map(spec, label_map, run, warn: bool = True) -> None:
    """The checkpoint's classes are the ones scored; say so when the spec names others.

    A 1-class checkpoint on data of several classes needs `dataset.single_class` (the data's
    thing classes merged into its one class, as in training): refused without it."""
    if spec.dataset.single_class:
        return
    if len(label_map) == 1:
        try:
            data_classes = len(load_label_map(spec.dataset))
        except (DataError, OSError, ValueError):
            data_classes = 1  # the readers report what is wrong with the data
        if data_classes > 1:
            raise ValueError(
                f"the checkpoint predicts one class ({label_map.names[0]!r}) and the dataset "
                f"has {data_classes}: set dataset.single_class={label_map.names[0]} to merge "
                "the data's thing classes into it, as in training"
            )
    if not spec.dataset.label_map:
        return
    named = LabelMap.from_json(spec.dataset.label_map)
    if named.category_ids != label_map.category_ids:
        message = (
            f"dataset.label_map lists category ids {named.category_ids[:10]}..., the checkpoint "
            f"{label_map.category_ids[:10]}...: scoring the checkpoint's classes"
        )
        run.log("RUNNING", message)
        if warn:
            print(f"oneseg evaluate: warning: {message}", file=sys.stderr)


def write_metrics_json(path: Path, metrics: dict, per_class: dict, checkpoint: str, split: str):
    write_json_atomic(
        path,
        {
            "checkpoint": checkpoint,
            "split": split,
            "metrics": metrics,
            "per_class": per_class,
        },
    )


def _cell(value) -> str:
    if isinstance(value, bool):
        return "thing" if value else "stuff"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def write_class_tables(folder: Path, per_class: dict) -> None:
    """per_class.md and per_class.csv: class, category id, kind and the metrics evaluated."""
    columns = [c for c in CLASS_COLUMNS if any(c in v for v in per_class.values())]
    header = ["class", "category_id", "kind", *columns]
    rows = [
        [
            name,
            _cell(v["category_id"]),
            _cell(v["isthing"]),
            *(_cell(v.get(c, "")) for c in columns),
        ]
        for name, v in per_class.items()
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    (folder / "per_class.md").write_text("\n".join(lines) + "\n")
    with open(folder / "per_class.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


MAX_CHART_CLASSES = 150  # rows of the per-class chart (ADE20K's 150); the tables hold all


def write_class_chart(path: Path, per_class: dict) -> None:
    """Horizontal bars of per-class PQ, IoU and AP side by side, one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in ("pq", "iou", "ap") if any(c in v for v in per_class.values())]
    if not panels:
        return
    names = list(per_class)[:MAX_CHART_CLASSES]  # the tables list them all
    height = 1.2 + 0.22 * len(names)
    figure, axes = plt.subplots(
        1, len(panels), figsize=(3.2 * len(panels) + 1.5, height), sharey=True, squeeze=False
    )
    for ax, key in zip(axes[0], panels):
        values = [per_class[n].get(key, math.nan) for n in names]
        colors = ["tab:blue" if per_class[n]["isthing"] else "tab:green" for n in names]
        shown = [0.0 if math.isnan(v) else v for v in values]
        ax.barh(range(len(names)), shown, color=colors)
        for row, value in enumerate(values):
            if math.isnan(value):  # absent from ground truth and predictions, or not scored
                ax.text(1, row, "n/a", va="center", fontsize=7, color="gray")
        ax.set_xlim(0, 100)
        ax.set_title({"pq": "PQ", "iou": "IoU", "ap": "AP"}[key])
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), labels=names, fontsize=8)
    axes[0][0].invert_yaxis()
    subset = "" if len(names) == len(per_class) else f"first {len(names)} of {len(per_class)} "
    figure.suptitle(f"per class, % ({subset}blue: things, green: stuff)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_summary(metrics: dict, tasks: list[str], num_images: int, split: str) -> None:
    """One row per number, grouped by task, so it reads in any terminal width."""
    table = Table(title=f"evaluate: {num_images} images of {split}")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    for task in tasks:
        for i, key in enumerate(k for k in SUMMARY_KEYS[task] if k in metrics):
            label = LABELS.get(key, key.upper())
            table.add_row(task if i == 0 else "", label, _cell(metrics[key]) or "-")
    Console().print(table)
