"""labelme JSON files (one per image) as `ImageLabels`.

Each file holds `imagePath` (relative to the JSON file), `imageHeight`, `imageWidth` and
`shapes`: `{label, points, shape_type, group_id}`. Polygons, rectangles and circles are
rasterized as COCO rasterizes polygons (pycocotools); shapes with the same label and a
`group_id` form one object (labelme's way of drawing an object in parts). Lines, points and
line strips have no area and are reported as skipped. An image missing on disk but embedded in
the JSON (`imageData`) is written out from it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.data.convert.labels import (
    Classes,
    ConvertReport,
    ImageLabels,
    LabelledObject,
    polygons_to_mask,
)

NO_AREA = ("line", "linestrip", "point", "points")


def _shape_polygon(shape: dict) -> list[float] | None:
    """The flat polygon of a polygon, rectangle or circle shape (None for other types)."""
    kind = shape.get("shape_type") or "polygon"
    points = [(float(x), float(y)) for x, y in shape.get("points", [])]
    if kind == "polygon":
        return [v for point in points for v in point]
    if kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    if kind == "circle" and len(points) == 2:
        (cx, cy), (px, py) = points
        radius = float(np.hypot(px - cx, py - cy))
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return [v for a in angles for v in (cx + radius * np.cos(a), cy + radius * np.sin(a))]
    return None


def _image_of(path: Path, data: dict, out_images: Path) -> Path | None:
    image = path.parent / str(data.get("imagePath") or "")
    if data.get("imagePath") and image.is_file():
        return image
    if data.get("imageData"):
        raw = base64.b64decode(data["imageData"])
        name = Path(data.get("imagePath") or f"{path.stem}.png").name
        target = out_images / ".embedded" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(raw)).save(target)
        return target
    return None


def read_labelme(
    src: Path, classes: Classes, report: ConvertReport, scratch: Path
) -> Iterator[ImageLabels]:
    """Every labelme JSON below `src` (sorted), as the image and its objects."""
    for path in sorted(src.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            height, width = int(data["imageHeight"]), int(data["imageWidth"])
            shapes = list(data["shapes"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            report.skip(path, f"not a labelme file ({type(err).__name__}: {err})")
            continue
        image = _image_of(path, data, scratch)
        if image is None:
            report.skip(path, "image not found (imagePath) and not embedded (imageData)")
            continue
        name = (
            image.name
            if image.parent.name == ".embedded"
            else str(image.relative_to(src) if image.is_relative_to(src) else image.name)
        )
        labels = ImageLabels(image, name, height, width)
        groups: dict[tuple, LabelledObject] = {}
        for i, shape in enumerate(shapes):
            where = f"{path}:shapes[{i}]"
            kind = shape.get("shape_type") or "polygon"
            if kind in NO_AREA:
                report.skip(where, f"a {kind} shape has no area")
                continue
            polygon = _shape_polygon(shape)
            if polygon is None:
                report.skip(where, f"shape_type {kind!r} is not read (polygon, rectangle, circle)")
                continue
            cid = classes.id_of(shape.get("label", ""))
            if cid is None:
                report.skip(where, f"class {shape.get('label')!r} is not in the label map")
                continue
            mask = polygons_to_mask([polygon], height, width)
            if not mask.any():
                report.skip(where, "the shape covers no pixel")
                continue
            group = shape.get("group_id")
            key = (cid, group) if group is not None else (cid, "shape", i)
            if key in groups:
                groups[key].mask |= mask
            else:
                groups[key] = LabelledObject(cid, mask)
        labels.objects = list(groups.values())
        yield labels
