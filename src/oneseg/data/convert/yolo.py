"""YOLO segmentation labels (Ultralytics layout) as `ImageLabels`.

    SRC/images/NAME.jpg
    SRC/labels/NAME.txt       one object per line: CLASS x1 y1 x2 y2 ... (a polygon, each
                              coordinate divided by the image's width or height)
    SRC/data.yaml             `names:` a list or {index: name} mapping (or SRC/classes.txt,
                              one name per line)

CLASS is the 0-based index into `names`. A line of 5 numbers is a detection box, not a
segmentation, and is reported as skipped, as is a polygon of fewer than 3 points.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from oneseg.data.convert.labels import (
    Classes,
    ConvertReport,
    ImageLabels,
    LabelledObject,
    polygons_to_mask,
)
from oneseg.data.convert.masks import image_size, source_images


def class_names(src: Path) -> list[str]:
    """The class names of SRC/data.yaml (`names`) or SRC/classes.txt, by index."""
    for name in ("data.yaml", "dataset.yaml"):
        if (src / name).is_file():
            names = (yaml.safe_load((src / name).read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
    if (src / "classes.txt").is_file():
        return [line.strip() for line in (src / "classes.txt").read_text().splitlines() if line]
    raise FileNotFoundError(f"{src}: no data.yaml with `names` nor classes.txt (the class names)")


def read_yolo(src: Path, classes: Classes, report: ConvertReport) -> Iterator[ImageLabels]:
    """Each image of SRC/images with the polygons of SRC/labels/NAME.txt."""
    names = class_names(src)
    for image in source_images(src, report):
        rel = image.relative_to(src / "images")
        height, width = image_size(image)
        labels = ImageLabels(image, rel.as_posix(), height, width)
        text = src / "labels" / rel.with_suffix(".txt")
        lines = text.read_text().splitlines() if text.is_file() else []
        for number, line in enumerate(lines, start=1):
            where = f"{text}:{number}"
            values = line.split()
            if not values:
                continue
            try:
                index, coords = int(values[0]), [float(v) for v in values[1:]]
            except ValueError:
                report.skip(where, "not numbers")
                continue
            if len(coords) == 4:
                report.skip(where, "a detection box, not a polygon")
                continue
            if len(coords) < 6 or len(coords) % 2:
                report.skip(where, "a polygon needs 3 or more x y pairs")
                continue
            if not 0 <= index < len(names):
                report.skip(where, f"class index {index} is not in the {len(names)} names")
                continue
            cid = classes.id_of(names[index])
            if cid is None:
                report.skip(where, f"class {names[index]!r} is not in the label map")
                continue
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
            mask = polygons_to_mask([polygon], height, width)
            if not mask.any():
                report.skip(where, "the polygon covers no pixel")
                continue
            labels.objects.append(LabelledObject(cid, mask))
        yield labels
