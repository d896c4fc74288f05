"""Writers of the label formats `oneseg data convert` reads, fed by a COCO panoptic dataset's own
ground truth (the synthetic set), and the polygon tracing they need.

`mask_polygons` traces each outer boundary of a mask along pixel edges, so a polygon format
loses only what a polygon cannot hold (holes; for YOLO also the grouping of an object's parts
and the precision of normalised coordinates)."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.io import read_id_png


def gt_objects(split: dict) -> list[tuple[dict, list[tuple[int, np.ndarray, bool]]]]:
    """(COCO image, [(category id, [H, W] bool mask, iscrowd)]) of each image of a split."""
    data = json.loads(Path(split["panoptic_json"]).read_text())
    by_id = {image["id"]: image for image in data["images"]}
    out = []
    for ann in data["annotations"]:
        ids = read_id_png(Path(split["panoptic"]) / ann["file_name"])
        objects = [
            (s["category_id"], ids == s["id"], bool(s.get("iscrowd"))) for s in ann["segments_info"]
        ]
        out.append((by_id[ann["image_id"]], objects))
    return out


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Flat [x1, y1, ...] polygons along the pixel edges of each outer boundary of `mask`."""
    padded = np.pad(mask.astype(bool), 1)
    edges: dict[tuple, list[tuple]] = defaultdict(list)
    ys, xs = np.nonzero(padded)
    for y, x in zip(ys - 1, xs - 1):  # corner coordinates of the unpadded image
        py, px = y + 1, x + 1
        if not padded[py - 1, px]:
            edges[(x, y)].append((x + 1, y))
        if not padded[py, px + 1]:
            edges[(x + 1, y)].append((x + 1, y + 1))
        if not padded[py + 1, px]:
            edges[(x + 1, y + 1)].append((x, y + 1))
        if not padded[py, px - 1]:
            edges[(x, y + 1)].append((x, y))
    polygons = []
    while edges:
        start = next(iter(edges))
        loop, point = [start], start
        while True:
            nxt = edges[point].pop()
            if not edges[point]:
                del edges[point]
            if nxt == start:
                break
            loop.append(nxt)
            point = nxt
        area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(loop, loop[1:] + loop[:1]))
        if area > 0:  # clockwise on screen: an outer boundary (holes run the other way)
            polygons.append([float(v) for p in _corners(loop) for v in p])
    return polygons


def _corners(loop: list[tuple]) -> list[tuple]:
    """The loop without its collinear points."""
    keep = []
    for i, (x, y) in enumerate(loop):
        (px, py), (nx, ny) = loop[i - 1], loop[(i + 1) % len(loop)]
        if (x - px) * (ny - y) - (y - py) * (nx - x) != 0:
            keep.append((x, y))
    return keep


def _copy_images(split: dict, images, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image, _ in images:
        shutil.copyfile(Path(split["images"]) / image["file_name"], folder / image["file_name"])


def write_masks(split: dict, names: dict[int, str], out: Path) -> None:
    images = gt_objects(split)
    _copy_images(split, images, out / "images")
    for image, objects in images:
        folder = out / "masks" / Path(image["file_name"]).stem
        folder.mkdir(parents=True)
        for k, (cid, mask, _) in enumerate(objects):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{k}_{names[cid]}.png")


def write_labelme(split: dict, names: dict[int, str], out: Path) -> None:
    images = gt_objects(split)
    _copy_images(split, images, out)
    for image, objects in images:
        shapes = [
            {
                "label": names[cid],
                "points": np.reshape(poly, (-1, 2)).tolist(),
                "group_id": k,
                "shape_type": "polygon",
                "flags": {},
            }
            for k, (cid, mask, _) in enumerate(objects)
            for poly in mask_polygons(mask)
        ]
        doc = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": image["file_name"],
            "imageData": None,
            "imageHeight": image["height"],
            "imageWidth": image["width"],
        }
        (out / f"{Path(image['file_name']).stem}.json").write_text(json.dumps(doc))


def write_yolo(split: dict, names: dict[int, str], out: Path) -> None:
    images = gt_objects(split)
    _copy_images(split, images, out / "images")
    order = sorted(names)
    (out / "data.yaml").write_text(json.dumps({"names": [names[c] for c in order]}))
    (out / "labels").mkdir()
    for image, objects in images:
        w, h = image["width"], image["height"]
        lines = []
        for cid, mask, _ in objects:
            for poly in mask_polygons(mask):
                coords = [v / (w if i % 2 == 0 else h) for i, v in enumerate(poly)]
                lines.append(" ".join([str(order.index(cid))] + [f"{c:.6f}" for c in coords]))
        (out / "labels" / f"{Path(image['file_name']).stem}.txt").write_text("\n".join(lines))


def write_ade_jsonl(split: dict, names: dict[int, str], out: Path) -> None:
    images = gt_objects(split)
    _copy_images(split, images, out / "images")
    (out / "labels").mkdir()
    lines = []
    for image, objects in images:
        labels = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        for cid, mask, _ in objects:
            labels[mask] = cid
        stem = Path(image["file_name"]).stem
        Image.fromarray(labels).save(out / "labels" / f"{stem}.png")
        lines.append(
            json.dumps({"img": f"images/{image['file_name']}", "segm": f"labels/{stem}.png"})
        )
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")


WRITERS = {
    "masks": write_masks,
    "labelme": write_labelme,
    "yolo": write_yolo,
    "ade_jsonl": write_ade_jsonl,
}
