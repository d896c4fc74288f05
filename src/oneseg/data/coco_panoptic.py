"""COCO panoptic: images, one PNG of segment colours per image, and one JSON.

The PNG stores each pixel's segment id as its colour, id = R + 256 G + 256^2 B, 0 being void.
The JSON's `annotations` list each image's `segments_info` ({id, category_id, iscrowd, ...});
whether a category is a thing comes from the label map (by default the JSON's `categories`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oneseg.data.image_io import read_label
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
from oneseg.io import rgb_to_id


def default_panoptic_dir(annotation_file: str | Path) -> Path:
    """COCO's layout: `panoptic_val2017.json` sits beside its PNG folder `panoptic_val2017/`."""
    annotation_file = Path(annotation_file)
    return annotation_file.with_suffix("")


class CocoPanopticReader:
    """Records of a COCO panoptic source and their segment maps.

    Arguments:
        images_dir: folder the JSON's image `file_name`s are relative to.
        annotation_file: the panoptic JSON.
        panoptic_dir: folder of the PNGs; '' = the JSON's path without `.json`.
        label_map: the classes; its `isthing` decides things and stuff.
        contiguous_id: category ids map to label-map positions (else they are class indices).
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        panoptic_dir: str | Path,
        label_map: LabelMap,
        contiguous_id: bool = True,
    ):
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        self.panoptic_dir = (
            Path(panoptic_dir) if panoptic_dir else default_panoptic_dir(annotation_file)
        )
        self.label_map = label_map
        self.class_of = category_mapper(label_map, contiguous_id)
        data = load_json(self.annotation_file)
        images = coco_images(self.annotation_file, data)
        if not isinstance(data.get("annotations"), list):
            raise DataError(
                f"{self.annotation_file}: no `annotations` list; a COCO panoptic JSON gives each "
                "image's segments_info there (an instance JSON needs dataset.type: coco)"
            )
        self.records: list[Record] = []
        for ann in data["annotations"]:
            image = images.get(ann.get("image_id"))
            if image is None:
                raise DataError(
                    f"{self.annotation_file}: annotation {ann.get('file_name')} refers to image "
                    f"id {ann.get('image_id')!r}, which `images` does not list"
                )
            if "file_name" not in ann:
                raise DataError(
                    f"{self.annotation_file}: the annotation of image {image['id']!r} has no "
                    "`file_name` (its PNG)"
                )
            self.records.append(
                Record(
                    image_path=self.images_dir / image["file_name"],
                    image_id=image["id"],
                    height=image.get("height"),
                    width=image.get("width"),
                    source=ann,
                )
            )

    def load_annotation(self, record: Record) -> PanopticAnnotation:
        ann = record.source
        png_path = self.panoptic_dir / ann["file_name"]
        values = read_label(png_path)
        if values.ndim == 3:
            segment_map = rgb_to_id(values[..., :3])
        else:  # a single-channel PNG already holds the ids
            segment_map = values.astype(np.int32)
        segments = []
        for info in ann.get("segments_info", []):
            where = f"{self.annotation_file}: image {record.image_id}, segment {info.get('id')}"
            for key in ("id", "category_id"):
                if key not in info:
                    raise DataError(f"{where}: no `{key}`")
            try:
                class_index = self.class_of(info["category_id"])
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"{where}: {err.args[0] if err.args else err}") from None
            if any(s.id == int(info["id"]) for s in segments):
                raise DataError(f"{where}: segment id listed twice in segments_info")
            segments.append(
                Segment(
                    id=int(info["id"]),
                    class_index=class_index,
                    isthing=self.label_map.isthing[class_index],
                    iscrowd=bool(info.get("iscrowd", 0)),
                )
            )
        return PanopticAnnotation(segment_map=segment_map, segments=segments)
