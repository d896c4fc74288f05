"""Small hand-built datasets written into tmp_path, for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.io import id_to_rgb

# Category ids with gaps, things and stuff interleaved, as in COCO.
CATEGORIES = [
    {"id": 3, "name": "cat", "isthing": 1},
    {"id": 7, "name": "dog", "isthing": 1},
    {"id": 21, "name": "sky", "isthing": 0},
    {"id": 40, "name": "grass", "isthing": 0},
]


def scene(height: int = 24, width: int = 30) -> tuple[np.ndarray, list[dict]]:
    """A segment map with sky on top, grass below, two cats, a dog, a crowd of dogs and void."""
    ids = np.full((height, width), 2100, dtype=np.int32)
    ids[height // 2 :] = 4000
    ids[2:8, 2:9] = 301  # cat 1
    ids[14:20, 3:10] = 302  # cat 2
    ids[10:18, 14:22] = 701  # dog
    ids[2:6, 20:28] = 702  # crowd of dogs
    ids[-2:, -3:] = 0  # void corner
    segments = [
        {"id": 2100, "category_id": 21, "iscrowd": 0},
        {"id": 4000, "category_id": 40, "iscrowd": 0},
        {"id": 301, "category_id": 3, "iscrowd": 0},
        {"id": 302, "category_id": 3, "iscrowd": 0},
        {"id": 701, "category_id": 7, "iscrowd": 0},
        {"id": 702, "category_id": 7, "iscrowd": 1},
    ]
    return ids, segments


def paint(ids: np.ndarray) -> np.ndarray:
    """An RGB image whose colour is a function of the segment id, to check alignment."""
    rng = np.random.default_rng(0)
    palette = {i: rng.integers(0, 256, 3) for i in np.unique(ids)}
    image = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for i, color in palette.items():
        image[ids == i] = color
    return image


def write_panoptic(
    root: Path,
    scenes: list[tuple[np.ndarray, list[dict]]],
    categories=CATEGORIES,
    image_ext: str = ".png",
) -> dict:
    """Write a COCO panoptic dataset; returns paths {images, panoptic, json}."""
    images_dir, pan_dir = root / "images", root / "panoptic"
    images_dir.mkdir(parents=True, exist_ok=True)
    pan_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, (ids, segments) in enumerate(scenes):
        image_id = 100 + k
        name = f"img{k}"
        Image.fromarray(paint(ids)).save(images_dir / f"{name}{image_ext}")
        Image.fromarray(id_to_rgb(ids)).save(pan_dir / f"{name}.png")
        images.append(
            {
                "id": image_id,
                "file_name": f"{name}{image_ext}",
                "height": ids.shape[0],
                "width": ids.shape[1],
            }
        )
        anns.append(
            {
                "image_id": image_id,
                "file_name": f"{name}.png",
                "segments_info": [dict(s) for s in segments],
            }
        )
    data = {"images": images, "annotations": anns, "categories": categories}
    json_path = root / "panoptic.json"
    json_path.write_text(json.dumps(data))
    return {"images": images_dir, "panoptic": pan_dir, "json": json_path}


def rle_of(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode()}
