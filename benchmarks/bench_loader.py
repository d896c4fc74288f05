"""Throughput of the training data loader: images per second with N worker processes.

    python benchmarks/bench_loader.py [--data DIR] [--workers 0 1 2] [--crop 512] [--lsj]

Without --data a synthetic COCO-panoptic set of 640x480 pictures is written to a temporary
folder first. Also prints where the time of one sample goes, measured in this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from oneseg.data.build import build_dataloader, build_dataset, load_label_map
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.synth import synthetic_dataset_config, write_synthetic_dataset
from oneseg.data.targets import derive_targets, target_texts


def _config(data: Path, crop: int, lsj: bool, batch_size: int):
    config = synthetic_dataset_config(data)
    aug = config.augmentation
    aug.train_min_size = [int(crop * s) for s in (0.75, 0.875, 1.0, 1.125, 1.25)]
    aug.train_max_size = 2048
    aug.crop_size = [crop, crop]
    aug.lsj = lsj
    config.batch_size = batch_size
    return config


def stage_times(dataset: SegmentationDataset, count: int) -> dict[str, float]:
    """Milliseconds per sample of each step, in this process."""
    totals = dict.fromkeys(["read image + label", "transform", "targets", "text tokens"], 0.0)
    rng = np.random.default_rng(0)
    for i in range(count):
        t0 = time.perf_counter()
        _, image, annotation = dataset.load(i % len(dataset))
        t1 = time.perf_counter()
        out = dataset.transform(image, annotation.segment_map, rng)
        t2 = time.perf_counter()
        targets = derive_targets(out.segment_map, annotation.segments, "panoptic")
        t3 = time.perf_counter()
        texts = target_texts(
            targets.labels, dataset.label_map.names, "panoptic", dataset.text_list_len
        )
        dataset.tokens.texts(texts)
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    return {key: 1000 * value / count for key, value in totals.items()}


def loader_rate(config, label_map, workers: int, batches: int, text_list_len: int) -> float:
    """Images per second after the first batch (worker start-up excluded)."""
    loader = build_dataloader(
        config, "train", label_map, text_list_len, 32, train=True, workers=workers
    )
    iterator = iter(loader)
    next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        images += batch["images"].shape[0]
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="synthetic dataset folder (written if absent)")
    parser.add_argument("--num-images", type=int, default=48, help="images to write")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--lsj", action="store_true", help="large-scale jitter")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="batches timed per setting")
    parser.add_argument("--text-list-len", type=int, default=134)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = args.data or Path(tempfile.mkdtemp(prefix="oneseg-bench-"))
    if not (data / "label_map.json").is_file():
        start = time.perf_counter()
        write_synthetic_dataset(data, num_train=args.num_images, num_val=2, size=(480, 640))
        print(
            f"wrote {args.num_images} images of 640x480 to {data} "
            f"in {time.perf_counter() - start:.1f} s"
        )
    config = _config(data, args.crop, args.lsj, args.batch_size)
    label_map = load_label_map(config)
    dataset = build_dataset(config, "train", label_map, args.text_list_len, 32, train=True)
    mode = "large-scale jitter" if args.lsj else "shortest-edge resize"
    print(
        f"{args.crop}x{args.crop} crops, {mode}, batch {args.batch_size}, "
        f"text list {args.text_list_len}"
    )
    stages = stage_times(dataset, min(24, len(dataset)))
    print(
        "per sample, one process: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items())
        + f"; total {sum(stages.values()):.1f} ms"
    )
    for workers in args.workers:
        rate = loader_rate(config, label_map, workers, args.batches, args.text_list_len)
        print(
            f"workers {workers}: {rate:.1f} images/s "
            f"({1000 * args.batch_size / rate:.0f} ms per batch of {args.batch_size})"
        )


if __name__ == "__main__":
    main()
