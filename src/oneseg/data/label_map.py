"""Names, kinds and colours of the classes a model predicts.

Class index `i` (contiguous, 0-based) stands for dataset category `category_ids[i]`. The model's
no-object class is index `len(label_map)` and is never listed here.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LabelMap:
    category_ids: list[int]
    names: list[str]
    isthing: list[bool]
    colors: list[tuple[int, int, int]]

    def __post_init__(self) -> None:
        n = len(self.category_ids)
        if not (len(self.names) == len(self.isthing) == len(self.colors) == n):
            raise ValueError("label map: ids, names, isthing and colors differ in length")
        if len(set(self.category_ids)) != n:
            dup = sorted({c for c in self.category_ids if self.category_ids.count(c) > 1})
            raise ValueError(f"label map: duplicate category ids {dup}")

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
    def from_categories(cls, categories: list[dict]) -> LabelMap:
        """From COCO-style category dicts ({id, name, isthing?, color?}), in the given order."""
        n = len(categories)
        return cls(
            category_ids=[int(c["id"]) for c in categories],
            names=[str(c.get("name", c["id"])) for c in categories],
            isthing=[bool(c.get("isthing", 1)) for c in categories],
            colors=[
                tuple(int(v) for v in c["color"]) if c.get("color") else default_color(i, n)
                for i, c in enumerate(categories)
            ],
        )

    @classmethod
    def from_json(cls, path: str | Path) -> LabelMap:
        """A JSON list of categories, or a COCO JSON whose `categories` are used."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"label map not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"label map {path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            data = data.get("categories", [])
        if not isinstance(data, list) or not data:
            raise ValueError(f"label map {path}: expected a non-empty list of categories")
        return cls.from_categories(data)

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
