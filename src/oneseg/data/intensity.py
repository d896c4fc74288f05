"""How images of more than 8 bits become the 0-255 values the model sees.

Microscopy, medical and satellite images arrive as 16-bit (or 32-bit, or float) files whose
values often use a small part of their type's range: a fluorescence image of nuclei may hold
0-205 in a 16-bit PNG. Scaling such an image by its type (65535 -> 255) makes it black. An
`Intensity` rule picks a window [lo, hi] that is stretched to 0-255 instead:

    percentile   lo, hi = the `low` and `high` percentiles of the values (as microscopy tools do:
                 1 and 99.8 by default)
    minmax       lo, hi = the smallest and largest value
    full_range   lo, hi = the type's range (0-65535 for 16 bits: the old behaviour)
    fixed        lo, hi = `low`, `high` as given, e.g. [0, 4095] for a 12-bit camera

`per: image` computes the window on each image; `per: dataset` computes it once over the training
images (`dataset_window`) and records it as a `fixed` rule in the checkpoint, so evaluation and
inference use the same one. 8-bit images are never changed. `to_uint8` is the one function that
applies a rule: training, evaluation and inference all decode through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from oneseg.config import IntensityConfig

MODES = ("percentile", "minmax", "full_range", "fixed")
LOW_RANGE_SHARE = 0.10  # `data check` warns below this share of the type's range
DATASET_SAMPLE_IMAGES = 64  # images read to compute a per-dataset window


@dataclass(frozen=True)
class Intensity:
    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    per: str = "image"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"intensity mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.per not in ("image", "dataset"):
            raise ValueError(f"intensity per {self.per!r}; expected 'image' or 'dataset'")
        if self.mode in ("percentile", "fixed") and not self.low < self.high:
            raise ValueError(f"intensity low {self.low} must be below high {self.high}")
        if self.mode == "percentile" and not (0 <= self.low and self.high <= 100):
            raise ValueError("intensity percentiles must lie in 0..100")

    @classmethod
    def from_config(cls, cfg) -> Intensity:
        """From the spec's `dataset.intensity` section (or a dict of the same keys)."""
        values = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
        return cls(**{k: values[k] for k in ("mode", "low", "high", "per") if k in values})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def window(self, values: np.ndarray, kind: str) -> tuple[float, float]:
        """(lo, hi) of this rule for an image's values; `kind` as `value_kind` gives it."""
        if self.mode == "fixed":
            return float(self.low), float(self.high)
        if self.mode == "full_range" or values.size == 0:
            return type_range(kind, values)
        if self.mode == "minmax":
            return float(values.min()), float(values.max())
        lo, hi = np.percentile(values, [self.low, self.high])
        return float(lo), float(hi)


def value_kind(mode: str) -> str:
    """'8bit', '16bit', '32bit' or 'float' for a PIL mode."""
    if mode.startswith("I;16"):
        return "16bit"
    if mode in ("I", "I;32", "I;32B", "I;32L"):
        return "32bit"
    if mode == "F":
        return "float"
    return "8bit"


def type_range(kind: str, values: np.ndarray | None = None) -> tuple[float, float]:
    """The range a type's values are meant to span: 0-65535 for 16 bits; float images are
    fractions (0-1) when their values fit, else 0-255; 32-bit integers are 0-255 when their
    values fit, else 0-65535 (as 16-bit data stored wider)."""
    largest = float(values.max(initial=0)) if values is not None and values.size else 0.0
    if kind == "16bit":
        return 0.0, 65535.0
    if kind == "float":
        return (0.0, 1.0) if largest <= 1.0 else (0.0, 255.0)
    if kind == "32bit":
        return (0.0, 255.0) if largest <= 255 else (0.0, 65535.0)
    return 0.0, 255.0


def to_uint8(values: np.ndarray, kind: str, rule: Intensity | None = None) -> np.ndarray:
    """[H, W] values of a non-8-bit image stretched to uint8 by `rule` (default: percentile)."""
    rule = rule or Intensity()
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = rule.window(finite, kind)
    if not hi > lo:  # a flat image: keep its level on the type's scale
        lo, hi = type_range(kind, finite)
    scaled = (np.nan_to_num(values, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def range_share(values: np.ndarray, kind: str) -> float:
    """The share of its type's range an image's values span (1.0 for a full-range image)."""
    values = np.asarray(values)
    if values.size == 0 or kind == "8bit":
        return 1.0
    lo, hi = (0.0, 65535.0) if kind in ("16bit", "32bit") else type_range(kind, values)
    return float(values.max() - values.min()) / (hi - lo)


def choose_intensity(spec_cfg, recorded: dict | None) -> Intensity:
    """The rule for evaluation and inference: the spec's `dataset.intensity` when it is set to
    other than the default, else the one recorded in the checkpoint at training, else the
    default. So a model sees its images as it saw them in training unless told otherwise."""
    spec_rule = Intensity.from_config(spec_cfg) if spec_cfg is not None else Intensity()
    if spec_cfg is not None and dataclasses.asdict(spec_cfg) != dataclasses.asdict(
        IntensityConfig()
    ):
        return spec_rule
    return Intensity.from_config(recorded) if recorded else spec_rule
