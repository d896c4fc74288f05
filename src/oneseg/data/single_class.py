"""One class for every thing: a binary "object" segmenter trained on a multi-class dataset.

With `dataset.single_class: object`, the model predicts one class of that name. Every thing
category of the data becomes it; stuff segments are left unlabelled (void), so they are neither
targets nor scored. That is what a 1-class instance model (TAO's Mask2Former card: instance
mode, `num_classes: 1`) learns from COCO-style data that names many classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from oneseg.data.label_map import LabelMap, default_color
from oneseg.data.records import PanopticAnnotation, Reader, Record

SINGLE_CLASS_ID = 1  # the category id of the one class in results files


def single_class_label_map(name: str) -> LabelMap:
    """The label map of the one class: id 1, a thing."""
    return LabelMap(
        category_ids=[SINGLE_CLASS_ID], names=[name], isthing=[True], colors=[default_color(0, 1)]
    )


class SingleClassReader:
    """Wraps a reader: its thing segments become class 0, its stuff segments void.

    Takes over the wrapped reader's records (the dataset empties `records` after packing them)."""

    def __init__(self, reader: Reader):
        self.reader = reader
        self.records: list[Record] = reader.records
        reader.records = []

    def load_annotation(self, record: Record) -> PanopticAnnotation:
        annotation = self.reader.load_annotation(record)
        stuff_ids = [s.id for s in annotation.segments if not s.isthing]
        segment_map = annotation.segment_map
        if stuff_ids:
            stuff = np.isin(segment_map, np.asarray(stuff_ids, dtype=segment_map.dtype))
            segment_map = np.where(stuff, 0, segment_map).astype(segment_map.dtype)
        segments = [dataclasses.replace(s, class_index=0) for s in annotation.segments if s.isthing]
        return PanopticAnnotation(segment_map=segment_map, segments=segments)
