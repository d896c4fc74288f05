"""Semantic labels: a folder of images and a folder of label PNGs with the same file stems.

A label pixel holds a category id of the label map, or `ignore_value` for pixels to ignore. The
PNG may be 8-bit grayscale, a palette PNG (the indices count, as in PASCAL VOC) or 16-bit.
Every class present becomes one segment; a semantic label cannot tell instances apart, so
instance targets from such a source are one region per thing class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oneseg.data.image_io import read_label
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError, PanopticAnnotation, Record, Segment, category_mapper

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class SemanticReader:
    """Records of an image folder paired with a label-PNG folder.

    Arguments:
        images_dir: folder of images.
        labels_dir: folder of label PNGs named like the images (`a.jpg` -> `a.png`).
        label_map: the classes; label values are its category ids.
        ignore_value: label value of pixels to ignore (void).
        contiguous_id: values map to label-map positions (else they are class indices).
    """

    def __init__(
        self,
        images_dir: str | Path,
        labels_dir: str | Path,
        label_map: LabelMap,
        ignore_value: int = 255,
        contiguous_id: bool = True,
    ):
        self.images_dir = Path(images_dir)
        self.labels_dir = Path(labels_dir)
        self.label_map = label_map
        self.ignore_value = int(ignore_value)
        self._lookup = self._value_lookup(label_map, contiguous_id)
        self.records: list[Record] = [
            Record(
                image_path=path,
                image_id=path.stem,
                height=None,
                width=None,
                source=self.labels_dir / f"{path.stem}.png",
            )
            for path in list_images(self.images_dir)
        ]

    def _value_lookup(self, label_map: LabelMap, contiguous_id: bool) -> np.ndarray:
        """Label value -> class index + 1 (0 = void), -1 for values the label map lacks."""
        class_of = category_mapper(label_map, contiguous_id)
        values = label_map.category_ids if contiguous_id else range(len(label_map))
        size = max([*values, self.ignore_value, 255]) + 1
        lookup = np.full(size, -1, dtype=np.int32)
        for value in values:
            lookup[value] = class_of(value) + 1
        lookup[self.ignore_value] = 0
        return lookup

    def load_annotation(self, record: Record) -> PanopticAnnotation:
        path = record.source
        values = read_label(path)
        if values.ndim != 2:
            raise DataError(
                f"{path}: label of image {record.image_id} must have one channel, "
                f"found shape {values.shape}"
            )
        values = values.astype(np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) >= len(self._lookup):
            unknown = np.unique(values[(values < 0) | (values >= len(self._lookup))])
            raise DataError(
                f"{path}: image {record.image_id}: unknown label values {unknown[:10].tolist()}"
            )
        segment_map = self._lookup[values]
        if (segment_map < 0).any():
            unknown = np.unique(values[segment_map < 0])
            raise DataError(
                f"{path}: image {record.image_id}: unknown label values {unknown[:10].tolist()}"
            )
        segments = [
            Segment(
                id=int(i),
                class_index=int(i) - 1,
                isthing=self.label_map.isthing[i - 1],
                iscrowd=False,
            )
            for i in np.unique(segment_map)
            if i > 0
        ]
        return PanopticAnnotation(segment_map=segment_map, segments=segments)
