"""A small COCO-panoptic dataset of coloured shapes on textured ground, made from a seed.

Five thing classes differ in shape and colour both (red circles, blue squares, yellow
triangles, magenta stars, orange crosses), so a small model separates them within minutes on a
CPU. They lie on three stuff classes whose layout changes per image: a sky-like gradient, a
grass-like noise and a wall-like brick pattern. Instances may occlude each other partly; now and
then a cluster of small circles is one crowd region. Both COCO formats are written:

    OUT/label_map.json
    OUT/{train,val}/images/*.jpg
    OUT/{train,val}/panoptic/*.png      segment colours, id = R + 256 G + 256^2 B
    OUT/{train,val}/panoptic.json       COCO panoptic
    OUT/{train,val}/instances.json      COCO instance (things; compressed RLE, crowd uncompressed)

The same seed gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.config import DatasetConfig, DataSource
from oneseg.data.synth_draw import (
    STUFF,
    THINGS,
    crowd_mask,
    paint_thing,
    shape_mask,
    stuff_layout,
    stuff_texture,
)
from oneseg.io import id_to_rgb

MIN_VISIBLE = 0.6  # an instance keeps at least this share of its pixels when others cover it
CROWD_PROB = 0.12


def categories() -> list[dict]:
    """Things first (ids 1-5), then stuff (ids 6-8), with their display colours."""
    things = [
        {"id": i + 1, "name": name, "isthing": 1, "color": list(color), "supercategory": "shape"}
        for i, (name, color) in enumerate(THINGS)
    ]
    stuff = [
        {
            "id": len(THINGS) + i + 1,
            "name": name,
            "isthing": 0,
            "color": list(color),
            "supercategory": "ground",
        }
        for i, (name, color) in enumerate(STUFF)
    ]
    return things + stuff


def _place_things(
    rng: np.random.Generator, segment_map: np.ndarray, segments: list[dict], height: int, width: int
) -> None:
    """Add 2-6 instances to `segment_map`, each keeping most of its pixels visible."""
    short = min(height, width)
    counts = np.zeros(len(THINGS), dtype=int)
    for _ in range(int(rng.integers(2, 7))):
        for _attempt in range(20):
            kind = int(rng.integers(len(THINGS)))
            radius = rng.uniform(0.1, 0.2) * short
            cx, cy = (
                rng.uniform(radius * 0.6, width - radius * 0.6),
                rng.uniform(radius * 0.6, height - radius * 0.6),
            )
            mask = shape_mask(THINGS[kind][0], cx, cy, radius, rng.uniform(0, 360), height, width)
            if mask.sum() < 0.5 * np.pi * radius**2 * 0.4:  # mostly outside the image
                continue
            covered = [s for s in segments if s["isthing"] and not s["iscrowd"]]
            if all(
                ((segment_map == s["id"]) & ~mask).sum() >= MIN_VISIBLE * s["full_area"]
                for s in covered
            ):
                break
        else:
            continue
        counts[kind] += 1
        seg_id = (kind + 1) * 10000 + int(counts[kind])
        segment_map[mask] = seg_id
        segments.append(
            {
                "id": seg_id,
                "category_id": kind + 1,
                "iscrowd": 0,
                "isthing": True,
                "full_area": int(mask.sum()),
            }
        )


def render_image(rng: np.random.Generator, height: int, width: int):
    """(image [H, W, 3] uint8, segment map [H, W] int32, segments) of one synthetic picture."""
    stuff_map = stuff_layout(rng, height, width)
    image = np.zeros((height, width, 3), dtype=np.float32)
    segment_map = np.zeros((height, width), dtype=np.int32)
    segments: list[dict] = []
    for k in range(len(STUFF)):
        region = stuff_map == k
        if region.any():
            image[region] = stuff_texture(STUFF[k][0], rng, height, width)[region]
            category = len(THINGS) + k + 1
            segment_map[region] = category * 10000
            segments.append(
                {"id": category * 10000, "category_id": category, "iscrowd": 0, "isthing": False}
            )
    if rng.random() < CROWD_PROB:
        crowd = crowd_mask(rng, height, width)
        segment_map[crowd] = 1 * 10000 + 999
        segments.append({"id": 10999, "category_id": 1, "iscrowd": 1, "isthing": True})
    _place_things(rng, segment_map, segments, height, width)
    for seg in segments:
        if seg["isthing"]:
            mask = segment_map == seg["id"]
            image[mask] = paint_thing(THINGS[seg["category_id"] - 1][1], rng, height, width)[mask]
    image += rng.normal(0, 2.0, image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    present = set(np.unique(segment_map).tolist())
    segments = [s for s in segments if s["id"] in present]
    return image, segment_map, segments


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


def _write_split(
    root: Path, count: int, size: tuple[int, int], seed: int, split_code: int, cats: list[dict]
) -> dict:
    images_dir, panoptic_dir = root / "images", root / "panoptic"
    images_dir.mkdir(parents=True, exist_ok=True)
    panoptic_dir.mkdir(parents=True, exist_ok=True)
    images, pan_anns, inst_anns = [], [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_code, index])
        image, segment_map, segments = render_image(rng, *size)
        image_id = index + 1
        name = f"{image_id:06d}"
        Image.fromarray(image).save(images_dir / f"{name}.jpg", quality=92)
        Image.fromarray(id_to_rgb(segment_map)).save(panoptic_dir / f"{name}.png")
        images.append(
            {"id": image_id, "file_name": f"{name}.jpg", "height": size[0], "width": size[1]}
        )
        infos = []
        for seg in segments:
            mask = segment_map == seg["id"]
            area, bbox = int(mask.sum()), _bbox(mask)
            infos.append(
                {
                    "id": seg["id"],
                    "category_id": seg["category_id"],
                    "iscrowd": seg["iscrowd"],
                    "area": area,
                    "bbox": bbox,
                }
            )
            if seg["isthing"]:
                rle = uncompressed_rle(mask) if seg["iscrowd"] else compressed_rle(mask)
                inst_anns.append(
                    {
                        "id": len(inst_anns) + 1,
                        "image_id": image_id,
                        "category_id": seg["category_id"],
                        "segmentation": rle,
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": seg["iscrowd"],
                    }
                )
        pan_anns.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": infos})
    info = {"description": f"oneseg synthetic shapes, seed {seed}", "version": "1"}
    panoptic_json, instances_json = root / "panoptic.json", root / "instances.json"
    _dump(
        panoptic_json,
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": pan_anns,
            "categories": cats,
        },
    )
    _dump(
        instances_json,
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": inst_anns,
            "categories": [c for c in cats if c["isthing"]],
        },
    )
    return {
        "images": images_dir,
        "panoptic": panoptic_dir,
        "panoptic_json": panoptic_json,
        "instances_json": instances_json,
    }


def _dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")))


def write_synthetic_dataset(
    out_dir: str | Path,
    num_train: int = 200,
    num_val: int = 32,
    size: tuple[int, int] = (160, 160),
    seed: int = 0,
) -> dict:
    """Write the dataset under `out_dir`; returns its paths:
    {"root", "label_map", "train": {"images", "panoptic", "panoptic_json", "instances_json"},
    "val": {...}}."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    height, width = int(size[0]), int(size[1])
    if min(height, width) < 32:
        raise ValueError(f"synthetic images need at least 32x32 pixels, got {height}x{width}")
    cats = categories()
    label_map = root / "label_map.json"
    _dump(label_map, cats)
    return {
        "root": root,
        "label_map": label_map,
        "train": _write_split(root / "train", num_train, (height, width), seed, 0, cats),
        "val": _write_split(root / "val", num_val, (height, width), seed, 1, cats),
    }


def synthetic_paths(root: str | Path) -> dict:
    """The paths `write_synthetic_dataset` returns, for a dataset already on disk."""
    root = Path(root)
    return {
        "root": root,
        "label_map": root / "label_map.json",
        **{
            split: {
                "images": root / split / "images",
                "panoptic": root / split / "panoptic",
                "panoptic_json": root / split / "panoptic.json",
                "instances_json": root / split / "instances.json",
            }
            for split in ("train", "val")
        },
    }


def synthetic_dataset_config(
    paths: dict | str | Path, type: str = "coco_panoptic"
) -> DatasetConfig:
    """A DatasetConfig reading the synthetic dataset (its paths dict or its folder) in either
    COCO format, with augmentation sized for its pictures: shortest-edge resize around the
    image size (x0.8-1.2), crops of the image size, evaluation at the image size."""
    if not isinstance(paths, dict):
        paths = synthetic_paths(paths)

    def source(split: dict) -> DataSource:
        if type == "coco":
            return DataSource(images=str(split["images"]), annotations=str(split["instances_json"]))
        return DataSource(
            images=str(split["images"]),
            annotations=str(split["panoptic_json"]),
            panoptic=str(split["panoptic"]),
        )

    config = DatasetConfig(
        type=type,
        train=[source(paths["train"])],
        val=source(paths["val"]),
        test=source(paths["val"]),
        label_map=str(paths["label_map"]),
    )
    first = json.loads(Path(paths["train"]["panoptic_json"]).read_text())["images"][0]
    short, long = sorted((first["height"], first["width"]))
    aug = config.augmentation
    aug.train_min_size = [int(short * f) for f in (0.8, 0.9, 1.0, 1.1, 1.2)]
    aug.train_max_size = int(long * 1.2) + 1
    aug.crop_size = [first["height"], first["width"]]
    aug.eval_min_size, aug.eval_max_size = short, long
    return config
