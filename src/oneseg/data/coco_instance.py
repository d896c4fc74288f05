"""COCO instance annotations (things only) turned into a segment map.

Each annotation's `segmentation` is a list of polygons, an uncompressed RLE (`counts` a list of
run lengths) or a compressed RLE (`counts` a string); pycocotools decodes all three. Pixels no
annotation covers are void: an instance JSON says nothing about stuff.

Instance masks may overlap, a segment map cannot. Crowd regions are painted first and ordinary
instances over them by decreasing area, so a small object in front of a large one keeps its
pixels; where instances do not overlap (the usual case) every mask is kept exactly.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from oneseg.data.label_map import LabelMap
from oneseg.data.records import (
    DataError,
    PanopticAnnotation,
    Record,
    Segment,
    category_mapper,
    coco_images,
    load_json,
)


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """[H, W] bool mask of a COCO `segmentation` (polygons, RLE or compressed RLE).

    Polygons of fewer than 3 points cover nothing and are left out.
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", [height, width])]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE dict")
    return mask_utils.decode(rle).astype(bool)


class CocoInstanceReader:
    """Records of a COCO instance source and their segment maps.

    Arguments:
        images_dir: folder the JSON's image `file_name`s are relative to.
        annotation_file: the instance JSON.
        label_map: the classes (by default the JSON's categories, all things).
        contiguous_id: category ids map to label-map positions (else they are class indices).
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        label_map: LabelMap,
        contiguous_id: bool = True,
    ):
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        self.label_map = label_map
        self.class_of = category_mapper(label_map, contiguous_id)
        data = load_json(self.annotation_file)
        images = coco_images(self.annotation_file, data)
        by_image: dict = defaultdict(list)
        for ann in data.get("annotations", []):
            by_image[ann.get("image_id")].append(ann)
        self.records: list[Record] = [
            Record(
                image_path=self.images_dir / image["file_name"],
                image_id=image["id"],
                height=image.get("height"),
                width=image.get("width"),
                source=by_image.get(image["id"], []),
            )
            for image in images.values()
        ]

    def load_annotation(self, record: Record) -> PanopticAnnotation:
        if record.height is None or record.width is None:
            raise DataError(
                f"{self.annotation_file}: image {record.image_id} has no height/width, "
                "which polygons need"
            )
        height, width = int(record.height), int(record.width)
        decoded = []  # (paint priority, segment, mask)
        for seg_id, ann in enumerate(record.source, start=1):
            where = f"{self.annotation_file}: image {record.image_id}, annotation {ann.get('id')}"
            try:
                if "category_id" not in ann:
                    raise KeyError("no `category_id`")
                class_index = self.class_of(ann["category_id"])
                if "segmentation" not in ann:
                    raise KeyError("no `segmentation` (a box alone gives no mask to train on)")
                mask = decode_segmentation(ann["segmentation"], height, width)
            except (KeyError, ValueError, TypeError) as err:
                raise DataError(f"{where}: {err.args[0] if err.args else err}") from None
            segment = Segment(
                id=seg_id,
                class_index=class_index,
                isthing=self.label_map.isthing[class_index],
                iscrowd=bool(ann.get("iscrowd", 0)),
            )
            area = int(mask.sum())
            decoded.append(((not segment.iscrowd, -area), segment, mask))
        segment_map = np.zeros((height, width), dtype=np.int32)
        for _, segment, mask in sorted(decoded, key=lambda item: item[0]):
            segment_map[mask] = segment.id
        return PanopticAnnotation(segment_map=segment_map, segments=[s for _, s, _ in decoded])
