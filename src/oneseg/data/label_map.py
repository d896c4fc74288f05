"""Names, kinds and colours of the classes a model predicts.

Class index `i` (contiguous, 0-based) stands for dataset category `category_ids[i]`. The model's
no-object class is index `len(label_map)` and is never listed here.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

from oneseg.errors import BadInput

MAX_CATEGORY_ID = 2**31 - 1  # ids are int32 in segment maps and results


class LabelMapError(BadInput, ValueError):
    """A label map (or a file's categories) that cannot be used; the message names the entry."""


@dataclass
class LabelMap:
    category_ids: list[int]
    names: list[str]
    isthing: list[bool]
    colors: list[tuple[int, int, int]]

    def __post_init__(self) -> None:
        n = len(self.category_ids)
        if not (len(self.names) == len(self.isthing) == len(self.colors) == n):
            raise LabelMapError("label map: ids, names, isthing and colors differ in length")
        if len(set(self.category_ids)) != n:
            dup = sorted({c for c in self.category_ids if self.category_ids.count(c) > 1})
            raise LabelMapError(f"label map: duplicate category ids {dup}")

    def __len__(self) -> int:
        return len(self.category_ids)

    @property
    def thing_classes(self) -> list[int]:
        return [i for i, thing in enumerate(self.isthing) if thing]

    def class_of(self, category_id: int) -> int:
        """Contiguous class index of a dataset category id (KeyError naming the id if unknown)."""
        index = self._index().get(int(category_id))
        if index is None:
            raise KeyError(f"unknown category id {category_id}")
        return index

    def _index(self) -> dict[int, int]:
        if getattr(self, "_cache", None) is None or len(self._cache) != len(self.category_ids):
            self._cache = {c: i for i, c in enumerate(self.category_ids)}
        return self._cache

    @classmethod
    def from_categories(
        cls, categories: list[dict], source: str = "label map", require_isthing: bool = False
    ) -> LabelMap:
        """From COCO-style category dicts ({id, name, isthing?, color?}), in the given order.

        Refuses (LabelMapError naming `source` and the entry) an entry without an integer `id`
        in 0..2^31-1, a `color` that is not three integers 0..255, an id listed twice, and, with
        `require_isthing`, an entry without `isthing` (stuff would silently become things)."""
        if not isinstance(categories, list) or not categories:
            raise LabelMapError(f"{source}: expected a non-empty list of categories")
        n = len(categories)
        ids, names, things, colors = [], [], [], []
        for i, entry in enumerate(categories):
            where = f"{source}: categories[{i}]"
            if not isinstance(entry, dict):
                raise LabelMapError(f"{where} is not a mapping with an id")
            ids.append(_category_id(entry, where))
            names.append(str(entry.get("name", entry["id"])))
            if "isthing" not in entry and require_isthing:
                raise LabelMapError(
                    f"{where} (id {entry['id']}) has no `isthing`: give 1 for a countable "
                    "thing, 0 for stuff"
                )
            things.append(bool(entry.get("isthing", 1)))
            colors.append(_color(entry, where) if entry.get("color") else default_color(i, n))
        return cls(category_ids=ids, names=names, isthing=things, colors=colors)

    @classmethod
    def from_json(cls, path: str | Path, require_isthing: bool = False) -> LabelMap:
        """A JSON list of categories, or a COCO JSON whose `categories` are used."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"label map not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LabelMapError(f"label map {path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            data = data.get("categories", [])
        try:
            return cls.from_categories(data, f"label map {path}", require_isthing)
        except LabelMapError as err:
            if str(path) in str(err):
                raise
            raise LabelMapError(f"label map {path}: {err}") from None

    def to_categories(self) -> list[dict]:
        return [
            {"id": c, "name": n, "isthing": int(t), "color": list(col)}
            for c, n, t, col in zip(self.category_ids, self.names, self.isthing, self.colors)
        ]


def default_color(index: int, count: int) -> tuple[int, int, int]:
    """Distinct colours spread over the hue circle."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (index % 2), 0.95 - 0.25 * (index % 3) / 2)
    return int(r * 255), int(g * 255), int(b * 255)


def _category_id(entry: dict, where: str) -> int:
    value = entry.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LabelMapError(f"{where} has no integer `id`")
    try:
        category_id = int(value)
    except ValueError:
        raise LabelMapError(f"{where}: `id` is not an integer") from None
    if not 0 <= category_id <= MAX_CATEGORY_ID:
        raise LabelMapError(f"{where}: id {category_id} is outside 0..{MAX_CATEGORY_ID}")
    return category_id


def _color(entry: dict, where: str) -> tuple[int, int, int]:
    color = entry["color"]
    ok = isinstance(color, list | tuple) and len(color) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color)
    if not ok:
        raise LabelMapError(f"{where} (id {entry['id']}): `color` is not [R, G, B] of 0..255")
    return tuple(color)
