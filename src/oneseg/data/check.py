"""`oneseg data check`: read a whole dataset once and name every problem in it.

Each problem names the file at fault and the id within it. Errors are what would stop or
silently corrupt training or evaluation (a missing or truncated image, a size that disagrees,
a PNG segment the JSON does not describe, an unknown category, a duplicate id, a degenerate
polygon); warnings are what works but deserves a look (an image with no annotations).
Images are decoded in a thread pool: PIL releases the GIL while it decodes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from oneseg.config import DatasetConfig
from oneseg.data.ade_jsonl import AdeJsonlReader
from oneseg.data.build import load_label_map, split_sources
from oneseg.data.coco_panoptic import default_panoptic_dir
from oneseg.data.image_io import ImageReadError, image_size, raw_size, read_label, read_values
from oneseg.data.intensity import LOW_RANGE_SHARE, range_share
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError, category_mapper, load_json
from oneseg.data.report import ERROR, WARNING, Report, print_report
from oneseg.data.semantic import SemanticReader
from oneseg.io import rgb_to_id

__all__ = ["check_dataset", "check_main"]


def _image(report: Report, path: Path, image_id, stated_hw) -> tuple[int, int] | None:
    """Decode an image fully; report a missing, unreadable, truncated or resized one, and one
    of more than 8 bits whose values span a small part of its type's range."""
    try:
        values, kind = read_values(path)
        height, width = image_size(path)
    except ImageReadError as err:
        report.add(ERROR, path, f"image {image_id}", str(err).removeprefix(f"{path}: "))
        return None
    if kind != "8bit" and range_share(values, kind) < LOW_RANGE_SHARE:
        report.add(
            WARNING,
            path,
            f"image {image_id}",
            f"{kind} values {values.min()}-{values.max()} use "
            f"{100 * range_share(values, kind):.1f}% of the type's range: check that "
            "dataset.intensity suits the data (full_range would make it nearly black)",
        )
    if None not in stated_hw and tuple(stated_hw) != (height, width):
        message = (
            f"image is {height}x{width} (HxW) but the annotation says {stated_hw[0]}x{stated_hw[1]}"
        )
        if raw_size(path) == tuple(stated_hw):
            message += " (it matches the image before its EXIF rotation)"
        report.add(ERROR, path, f"image {image_id}", message)
    return height, width


def _duplicates(values) -> list:
    return sorted((v for v, n in Counter(values).items() if n > 1), key=str)


def _check_json_ids(report: Report, json_path: Path, data: dict, what: str) -> dict:
    """Duplicate image and category ids; returns images by id."""
    images = data.get("images", [])
    for dup in _duplicates(img.get("id") for img in images):
        report.add(ERROR, json_path, f"image {dup}", "duplicate image id")
    for dup in _duplicates(c.get("id") for c in data.get("categories", [])):
        report.add(ERROR, json_path, f"category {dup}", "duplicate category id")
    if not data.get("annotations"):
        report.add(ERROR, json_path, "annotations", f"the {what} JSON has no annotations")
    if not images:
        report.add(ERROR, json_path, "images", f"the {what} JSON lists no images")
    return {img.get("id"): img for img in images}


def _count(report: Report, label_map: LabelMap, class_index: int, iscrowd: bool) -> None:
    if iscrowd:
        report.crowd += 1
        return
    report.segments_per_class[label_map.names[class_index]] += 1
    if label_map.isthing[class_index]:
        report.things += 1
    else:
        report.stuff += 1


def _count_category(report: Report, label_map, class_of, json_path, item: dict, what: str):
    """Count a segment or annotation by class; report a missing or unknown category id."""
    where = f"{what} {item.get('id')}"
    if "category_id" not in item:
        report.add(ERROR, json_path, where, "no category_id")
        return
    try:
        _count(report, label_map, class_of(item["category_id"]), item.get("iscrowd", 0))
    except (KeyError, TypeError, ValueError) as err:
        report.add(ERROR, json_path, where, str(err.args[0] if err.args else err))


def _panoptic_pair(
    report: Report,
    label_map: LabelMap,
    class_of,
    json_path: Path,
    images_dir: Path,
    panoptic_dir: Path,
    image: dict,
    ann: dict,
) -> None:
    image_id = image.get("id")
    infos = ann.get("segments_info", [])
    if not infos:
        report.add(WARNING, json_path, f"image {image_id}", "empty segments_info")
    for dup in _duplicates(s.get("id") for s in infos):
        report.add(ERROR, json_path, f"image {image_id} / segment {dup}", "duplicate segment id")
    for info in infos:
        _count_category(report, label_map, class_of, json_path, info, f"image {image_id} / segment")
    if "file_name" not in image:
        report.add(ERROR, json_path, f"image {image_id}", "no file_name")
        size = None
    else:
        size = _image(
            report,
            images_dir / image["file_name"],
            image_id,
            (image.get("height"), image.get("width")),
        )
    if "file_name" not in ann:
        report.add(ERROR, json_path, f"image {image_id}", "its annotation has no file_name (PNG)")
        return
    png_path = panoptic_dir / ann["file_name"]
    try:
        values = read_label(png_path)
    except ImageReadError as err:
        report.add(ERROR, png_path, f"image {image_id}", str(err).removeprefix(f"{png_path}: "))
        return
    ids = rgb_to_id(values[..., :3]) if values.ndim == 3 else values.astype(np.int64)
    if size is not None and ids.shape != size:
        report.add(
            ERROR,
            png_path,
            f"image {image_id}",
            f"PNG is {ids.shape[0]}x{ids.shape[1]} but its image is {size[0]}x{size[1]}",
        )
    in_png = set(np.unique(ids).tolist()) - {0}
    in_json = {s.get("id") for s in infos}
    for seg_id in sorted(in_png - in_json):
        report.add(
            ERROR,
            png_path,
            f"image {image_id} / segment {seg_id}",
            "segment id in the PNG but not in segments_info",
        )
    for seg_id in sorted(in_json - in_png, key=str):
        report.add(
            ERROR,
            json_path,
            f"image {image_id} / segment {seg_id}",
            "segment id in segments_info but not in the PNG",
        )


def _check_panoptic(
    report: Report, source, label_map: LabelMap, contiguous: bool, pool: ThreadPoolExecutor
) -> int:
    json_path = Path(source.annotations)
    data = load_json(json_path)
    images = _check_json_ids(report, json_path, data, "panoptic")
    panoptic_dir = Path(source.panoptic) if source.panoptic else default_panoptic_dir(json_path)
    class_of = category_mapper(label_map, contiguous)
    annotated = Counter(a.get("image_id") for a in data.get("annotations", []))
    for dup in _duplicates(annotated.elements()):
        report.add(ERROR, json_path, f"image {dup}", "more than one annotation for the image")
    for image_id in images:
        if image_id not in annotated:
            report.add(WARNING, json_path, f"image {image_id}", "image has no annotation")
    jobs = []
    for ann in data.get("annotations", []):
        image = images.get(ann.get("image_id"))
        if image is None:
            report.add(
                ERROR,
                json_path,
                f"image {ann.get('image_id')}",
                f"annotation {ann.get('file_name')} refers to an image id not in images",
            )
            continue
        part = Report()
        jobs.append(
            (
                part,
                pool.submit(
                    _panoptic_pair,
                    part,
                    label_map,
                    class_of,
                    json_path,
                    Path(source.images),
                    panoptic_dir,
                    image,
                    ann,
                ),
            )
        )
    for part, job in jobs:
        job.result()
        report.merge(part)
    return len(images)


def _instance_annotation(
    report: Report, label_map: LabelMap, class_of, json_path: Path, image: dict, ann: dict
) -> None:
    where = f"image {ann.get('image_id')} / annotation {ann.get('id')}"
    _count_category(
        report, label_map, class_of, json_path, ann, f"image {ann.get('image_id')} / annotation"
    )
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            report.add(ERROR, json_path, where, "empty segmentation (no polygon)")
        for k, polygon in enumerate(seg):
            if len(polygon) < 6 or len(polygon) % 2:
                report.add(
                    ERROR,
                    json_path,
                    where,
                    f"polygon {k} has {len(polygon) // 2} points; at least 3 needed",
                )
    elif isinstance(seg, dict) and "counts" in seg:
        stated = [image.get("height"), image.get("width")]
        if [int(v) for v in seg.get("size", stated)] != stated:
            report.add(
                ERROR,
                json_path,
                where,
                f"RLE size {seg.get('size')} differs from the image's {stated}",
            )
    else:
        report.add(ERROR, json_path, where, "segmentation is neither polygons nor RLE")


def _check_instance(
    report: Report, source, label_map: LabelMap, contiguous: bool, pool: ThreadPoolExecutor
) -> int:
    json_path = Path(source.annotations)
    data = load_json(json_path)
    images = _check_json_ids(report, json_path, data, "instance")
    anns = data.get("annotations", [])
    for dup in _duplicates(a.get("id") for a in anns):
        report.add(ERROR, json_path, f"annotation {dup}", "duplicate annotation id")
    class_of = category_mapper(label_map, contiguous)
    annotated = set()
    for ann in anns:
        image = images.get(ann.get("image_id"))
        if image is None:
            report.add(
                ERROR,
                json_path,
                f"annotation {ann.get('id')}",
                f"refers to image id {ann.get('image_id')}, which images does not list",
            )
            continue
        annotated.add(ann.get("image_id"))
        _instance_annotation(report, label_map, class_of, json_path, image, ann)
    for image_id in images:
        if image_id not in annotated:
            report.add(WARNING, json_path, f"image {image_id}", "image has no annotations")
    for img in images.values():
        if "file_name" not in img:
            report.add(ERROR, json_path, f"image {img.get('id')}", "no file_name")
    named = [img for img in images.values() if "file_name" in img]
    parts = [Report() for _ in named]
    jobs = [
        pool.submit(
            _image,
            part,
            Path(source.images) / img["file_name"],
            img.get("id"),
            (img.get("height"), img.get("width")),
        )
        for part, img in zip(parts, named)
    ]
    for part, job in zip(parts, jobs):
        job.result()
        report.merge(part)
    return len(images)


def _semantic_pair(report: Report, reader: SemanticReader, record) -> None:
    size = _image(report, record.image_path, record.image_id, (None, None))
    if not Path(record.source).is_file():
        report.add(ERROR, record.source, f"image {record.image_id}", "label PNG not found")
        return
    try:
        annotation = reader.load_annotation(record)
    except DataError as err:
        report.add(
            ERROR,
            record.source,
            f"image {record.image_id}",
            str(err).removeprefix(f"{record.source}: "),
        )
        return
    if size is not None and annotation.segment_map.shape != size:
        h, w = annotation.segment_map.shape
        report.add(
            ERROR,
            record.source,
            f"image {record.image_id}",
            f"label is {h}x{w} but its image is {size[0]}x{size[1]}",
        )
    for segment in annotation.segments:
        _count(report, reader.label_map, segment.class_index, False)


def _check_semantic(
    report: Report,
    source,
    label_map: LabelMap,
    dataset_cfg: DatasetConfig,
    pool: ThreadPoolExecutor,
) -> int:
    if dataset_cfg.type == "ade":
        reader = AdeJsonlReader(
            source.annotations, source.images, label_map, dataset_cfg.contiguous_id
        )
    else:
        reader = SemanticReader(
            source.images,
            source.labels,
            label_map,
            dataset_cfg.ignore_value,
            dataset_cfg.contiguous_id,
        )
    for dup in _duplicates(r.image_id for r in reader.records):
        report.add(ERROR, source.images, f"image {dup}", "several images share this file stem")
    if not reader.records:
        report.add(ERROR, source.images, "images", "no images in the folder")
    parts = [Report() for _ in reader.records]
    jobs = [
        pool.submit(_semantic_pair, part, reader, rec) for part, rec in zip(parts, reader.records)
    ]
    for part, job in zip(parts, jobs):
        job.result()
        report.merge(part)
    return len(reader.records)


def check_dataset(
    dataset_cfg: DatasetConfig, splits=("train", "val"), workers: int | None = None
) -> Report:
    """Check every configured source of `splits`; unset sources are skipped."""
    report = Report()
    try:
        label_map = load_label_map(dataset_cfg)
    except (DataError, ValueError, FileNotFoundError) as err:
        report.add(ERROR, dataset_cfg.label_map or "dataset", "label map", str(err))
        return report
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for split in splits:
            for i, source in enumerate(split_sources(dataset_cfg, split)):
                if not (source.images or source.annotations or source.labels):
                    continue
                try:
                    if dataset_cfg.type == "coco_panoptic":
                        count = _check_panoptic(
                            report, source, label_map, dataset_cfg.contiguous_id, pool
                        )
                    elif dataset_cfg.type == "coco":
                        count = _check_instance(
                            report, source, label_map, dataset_cfg.contiguous_id, pool
                        )
                    else:
                        count = _check_semantic(report, source, label_map, dataset_cfg, pool)
                except DataError as err:
                    where = f"dataset.train[{i}]" if split == "train" else f"dataset.{split}"
                    report.add(ERROR, source.annotations or source.images, where, str(err))
                    continue
                report.images[split] += count
    return report


def check_main(
    dataset_cfg: DatasetConfig, splits=("train", "val"), console=None, as_json: bool = False
) -> int:
    """Check, print the report (tables, plain lines when piped, or JSON) and return the exit
    code (1 if any error)."""
    report = check_dataset(dataset_cfg, splits)
    if as_json:
        print(json.dumps(report.to_dict(), indent=1), file=sys.stdout)
        return report.exit_code
    return print_report(report, console)
