"""Results as the API returns them: JSON segments with COCO RLE masks, or PNG maps.

Every task answers the same shape, so a client reads them alike:

    {"task": "panoptic", "height": H, "width": W,
     "segments": [{"id", "name", "category_id", "isthing", "score", "area", "bbox",
                   "segmentation": {"size": [H, W], "counts": "..."}}]}

- panoptic: one segment per id of the PNG (`id` is the PNG's id, R + 256 G + 256^2 B).
- instance: one per detection, `id` 1..N in the order of the model's detections.
- semantic: one per class present, `id` its category id, `score` null (a label map has none).

`bbox` is COCO's [x, y, width, height] in pixels, `area` a pixel count. PNGs: panoptic as
COCO panoptic (ids as colours), semantic as category ids (8-bit when all are below 256).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from oneseg.engine.inference_outputs import panoptic_segments_info, segment_areas_and_boxes
from oneseg.io import id_to_rgb
from oneseg.metrics.instance import masks_to_rle
from oneseg.results import InstanceResult, PanopticResult, Result, SemanticResult, coco_instances

PNG_TASKS = ("panoptic", "semantic")


def result_json(result: Result, size: tuple[int, int], png: bool = False) -> dict:
    """The JSON of one task's result on an image of `size` (h, w); `png` adds the task's PNG
    as base64 (panoptic, semantic)."""
    height, width = size
    if isinstance(result, PanopticResult):
        segments = _panoptic_segments(result)
    elif isinstance(result, InstanceResult):
        segments = _instance_segments(result)
    else:
        segments = _semantic_segments(result)
    out = {"task": result.task, "height": int(height), "width": int(width), "segments": segments}
    if png and result.task in PNG_TASKS:
        out["png"] = base64.b64encode(result_png(result)).decode("ascii")
    return out


def result_png(result: PanopticResult | SemanticResult) -> bytes:
    """A panoptic result as a COCO panoptic PNG, a semantic one as a PNG of category ids."""
    if isinstance(result, PanopticResult):
        array = id_to_rgb(result.segment_ids)
    elif isinstance(result, SemanticResult):
        ids = result.category_map
        array = ids.astype(np.uint8 if ids.size == 0 or ids.max() < 256 else np.uint16)
    else:
        raise ValueError(f"{result.task} has no PNG form; ask for JSON")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _rles(segment_map: np.ndarray, values: list[int]) -> list[dict]:
    if not values:
        return []
    # [H, W] == [S, 1, 1] -> [S, H, W]
    masks = segment_map[None] == np.asarray(values, dtype=segment_map.dtype)[:, None, None]
    return masks_to_rle(masks)


def _panoptic_segments(result: PanopticResult) -> list[dict]:
    infos = panoptic_segments_info(
        result.segment_ids, result.segments, result.label_map.category_ids
    )
    rles = _rles(result.segment_ids, [info["id"] for info in infos])
    return [
        {
            "id": info["id"],
            "name": segment.get("name", str(segment["label"])),
            "category_id": info["category_id"],
            "isthing": bool(segment.get("isthing", False)),
            "score": info.get("score"),
            "area": info["area"],
            "bbox": info["bbox"],
            "segmentation": rle,
        }
        for segment, info, rle in zip(result.segments, infos, rles)
    ]


def _instance_segments(result: InstanceResult) -> list[dict]:
    detections = coco_instances(0, result)
    names = result.names
    label_map = result.label_map
    segments = []
    for index, (detection, name, label) in enumerate(zip(detections, names, result.labels)):
        rle = detection["segmentation"]
        area = mask_util.area({**rle, "counts": rle["counts"].encode("ascii")})
        segments.append(
            {
                "id": index + 1,
                "name": name,
                "category_id": detection["category_id"],
                "isthing": bool(label_map.isthing[int(label)]) if label_map else True,
                "score": detection["score"],
                "area": int(area),
                "bbox": detection["bbox"],
                "segmentation": rle,
            }
        )
    return segments


def _semantic_segments(result: SemanticResult) -> list[dict]:
    classes = result.classes
    labels = [c["label"] for c in classes]
    _, boxes = segment_areas_and_boxes(result.labels, labels)
    rles = _rles(result.labels, labels)
    label_map = result.label_map
    return [
        {
            "id": c["category_id"],
            "name": c["name"],
            "category_id": c["category_id"],
            "isthing": bool(label_map.isthing[c["label"]]) if label_map else False,
            "score": None,
            "area": c["area"],
            "bbox": box,
            "segmentation": rle,
        }
        for c, box, rle in zip(classes, boxes, rles)
    ]
