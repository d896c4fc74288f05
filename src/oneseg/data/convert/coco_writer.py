"""`ImageLabels` written as a COCO panoptic or COCO instance dataset.

    OUT/images/NAME             the images, copied
    OUT/panoptic/NAME.png       coco_panoptic: segment ids as colours (id = R + 256 G + 256^2 B)
    OUT/annotations.json        coco_panoptic: segments_info per image; coco: RLE masks
    OUT/label_map.json          the classes ({id, name, isthing, color})
    OUT/convert_report.json     what was skipped and why

A panoptic map holds one segment per pixel. Stuff objects of one class in an image become one
segment; objects are painted stuff first, then things by decreasing area, so a small object in
front of a large one keeps its pixels (as `oneseg.data.coco_instance` reads overlapping masks).
Pixels an object loses that way are counted in the report; an object left with none is skipped.
An instance JSON holds thing classes only: stuff objects are reported as skipped there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from oneseg.data.convert.labels import ConvertReport, ImageLabels, LabelledObject
from oneseg.data.label_map import LabelMap
from oneseg.io import write_atomic, write_id_png, write_json_atomic


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _copy_image(labels: ImageLabels, out: Path) -> None:
    target = out / "images" / labels.name
    if not target.is_file():
        write_atomic(target, lambda tmp: shutil.copyfile(labels.image, tmp))


def _merged_stuff(objects: list[LabelledObject], label_map: LabelMap) -> list[LabelledObject]:
    """Objects with each stuff class's objects merged into one; things unchanged."""
    things = set(label_map.category_ids[i] for i in label_map.thing_classes)
    merged: dict[int, LabelledObject] = {}
    out = []
    for obj in objects:
        if obj.category_id in things:
            out.append(obj)
        elif obj.category_id in merged:
            merged[obj.category_id].mask = merged[obj.category_id].mask | obj.mask
        else:
            merged[obj.category_id] = LabelledObject(obj.category_id, obj.mask.copy())
    return list(merged.values()) + out


def panoptic_image(labels: ImageLabels, label_map: LabelMap, report: ConvertReport, where: str):
    """([H, W] int32 segment ids, segments_info) of one image."""
    things = set(label_map.category_ids[i] for i in label_map.thing_classes)
    objects = _merged_stuff(labels.objects, label_map)
    # stuff first, then things from the largest down: later ones are painted over earlier ones
    order = sorted(objects, key=lambda o: (o.category_id in things, -int(o.mask.sum())))
    ids = np.zeros((labels.height, labels.width), dtype=np.int32)
    for number, obj in enumerate(order, start=1):
        ids[obj.mask] = number
    infos = []
    for number, obj in enumerate(order, start=1):
        kept = ids == number
        lost = int(obj.mask.sum() - kept.sum())
        report.covered_pixels += lost
        if not kept.any():
            name = label_map.names[label_map.class_of(obj.category_id)]
            report.skip(f"{where}:{name}", "an object covered entirely by others")
            continue
        infos.append(
            {
                "id": number,
                "category_id": obj.category_id,
                "iscrowd": int(obj.iscrowd),
                "area": int(kept.sum()),
                "bbox": _bbox(kept),
            }
        )
    return ids, infos


def write_coco_panoptic(items, label_map_of, out: Path, report: ConvertReport) -> None:
    """Every image of `items` (ImageLabels) into OUT as COCO panoptic. `label_map_of()`: the
    label map, asked after the last image (classes may be named as they are met)."""
    images, annotations = [], []
    for image_id, labels in enumerate(items, start=1):
        label_map = label_map_of()
        stem = Path(labels.name).with_suffix("").as_posix()
        ids, infos = panoptic_image(labels, label_map, report, labels.name)
        write_id_png(out / "panoptic" / f"{stem}.png", ids)
        _copy_image(labels, out)
        images.append(
            {
                "id": image_id,
                "file_name": labels.name,
                "height": labels.height,
                "width": labels.width,
            }
        )
        annotations.append(
            {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos}
        )
        report.images += 1
        report.objects += len(infos)
    _finish(out, images, annotations, label_map_of(), report, all_classes=True)


def write_coco_instances(items, label_map_of, out: Path, report: ConvertReport) -> None:
    """Every image of `items` into OUT as a COCO instance JSON (masks as compressed RLE)."""
    images, annotations = [], []
    for image_id, labels in enumerate(items, start=1):
        label_map = label_map_of()
        things = set(label_map.category_ids[i] for i in label_map.thing_classes)
        _copy_image(labels, out)
        images.append(
            {
                "id": image_id,
                "file_name": labels.name,
                "height": labels.height,
                "width": labels.width,
            }
        )
        for obj in labels.objects:
            if obj.category_id not in things:
                name = label_map.names[label_map.class_of(obj.category_id)]
                report.skip(f"{labels.name}:{name}", "a stuff class (use --to coco_panoptic)")
                continue
            rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "segmentation": rle,
                    "area": int(obj.mask.sum()),
                    "bbox": _bbox(obj.mask),
                    "iscrowd": int(obj.iscrowd),
                }
            )
            report.objects += 1
        report.images += 1
    _finish(out, images, annotations, label_map_of(), report, all_classes=False)


def _finish(out, images, annotations, label_map: LabelMap, report, all_classes: bool) -> None:
    categories = [c for c in label_map.to_categories() if all_classes or c["isthing"]]
    write_json_atomic(
        out / "annotations.json",
        {"images": images, "annotations": annotations, "categories": categories},
    )
    write_atomic(
        out / "label_map.json",
        lambda tmp: tmp.write_text(json.dumps(label_map.to_categories(), indent=1)),
    )
    write_atomic(
        out / "convert_report.json",
        lambda tmp: tmp.write_text(json.dumps(report.to_dict(), indent=1)),
    )
