"""What every label reader of `oneseg data convert` yields, and what the conversion reports.

A reader turns its format into `ImageLabels`: an image file and its objects, each an [H, W]
boolean mask with a class (a name or a category id, resolved by `Classes`). Whatever it cannot
take (a file that does not parse, a class missing from the label map, a line or shape with no
area) it hands to the `ConvertReport`, with the file and the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from oneseg.data.label_map import LabelMap, default_color


@dataclass
class LabelledObject:
    """One object of an image: its class (category id) and pixels."""

    category_id: int
    mask: np.ndarray  # [H, W] bool
    iscrowd: bool = False


@dataclass
class ImageLabels:
    """An image and its objects. `name`: the image's path below the output's images folder."""

    image: Path
    name: str
    height: int
    width: int
    objects: list[LabelledObject] = field(default_factory=list)


@dataclass
class ConvertReport:
    """Images converted, objects written, and everything left out with the reason."""

    images: int = 0
    objects: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or file:item, reason)
    notes: list[str] = field(default_factory=list)  # what the conversion changed, once each
    covered_pixels: int = 0  # object pixels painted over by another object (panoptic maps)

    def skip(self, where, reason: str) -> None:
        self.skipped.append((str(where), reason))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def reasons(self) -> Counter:
        return Counter(reason for _, reason in self.skipped)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "objects": self.objects,
            "skipped": [{"where": w, "reason": r} for w, r in self.skipped],
            "notes": self.notes,
            "covered_pixels": self.covered_pixels,
        }

    def lines(self) -> list[str]:
        """A human summary: counts, then each reason with how often and a first example."""
        out = [f"{self.images} image(s), {self.objects} object(s) written"]
        firsts: dict[str, str] = {}
        for where, reason in self.skipped:
            firsts.setdefault(reason, where)
        for reason, count in self.reasons().most_common():
            out.append(f"skipped {count}x: {reason} (first: {firsts[reason]})")
        if self.covered_pixels:
            out.append(
                f"{self.covered_pixels} object pixel(s) covered by another object: a panoptic "
                "map holds one segment per pixel (the smaller thing keeps them)"
            )
        out += [f"note: {n}" for n in self.notes]
        return out


class Classes:
    """Class names or ids of a source resolved to category ids of a label map.

    With a label map, a name (or id) it does not hold is refused (the object is skipped and
    reported). Without one, each new name gets the next id (1, 2, ...), in the order met, as a
    thing class: the label map written beside the output says so and can be edited."""

    def __init__(self, label_map: LabelMap | None):
        self.given = label_map is not None
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}
        if label_map is not None:
            for cid, name in zip(label_map.category_ids, label_map.names):
                self.ids[name] = cid
                self.names[cid] = name
        self.label_map = label_map

    def id_of(self, name) -> int | None:
        """The category id of a class name (or of an id given as int); None if refused."""
        if isinstance(name, int | np.integer):
            if int(name) in self.names:
                return int(name)
            if self.given:
                return None
            self.names[int(name)] = str(int(name))
            self.ids[str(int(name))] = int(name)
            return int(name)
        name = str(name)
        if name in self.ids:
            return self.ids[name]
        if self.given:
            return None
        cid = max(self.names, default=0) + 1
        self.ids[name], self.names[cid] = cid, name
        return cid

    def final(self) -> LabelMap:
        """The label map of the output: the given one, or the classes met."""
        if self.label_map is not None:
            return self.label_map
        ids = sorted(self.names)
        return LabelMap(
            category_ids=ids,
            names=[self.names[i] for i in ids],
            isthing=[True] * len(ids),
            colors=[default_color(i, len(ids)) for i in range(len(ids))],
        )


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """[H, W] bool union of polygons (flat [x1, y1, x2, y2, ...] lists in pixel units), as
    COCO rasterizes them (pycocotools)."""
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
