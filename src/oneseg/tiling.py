"""Tiled inference: images far larger than the model's input, segmented at the scale the model
was trained at, in overlapping windows, merged into one result at full resolution.

    result = run_tiled(runner, image, ["panoptic"], size=512, overlap=128)[task]

The image is never downscaled: windows of `size` x `size` pixels (fewer where the image is
smaller) cover it with at least `overlap` pixels shared by neighbours (default: half a window),
and go through any runner (`oneseg.runner`) `batch_size` at a time, one row of windows after
another. Each window owns the cell of pixels nearer to it than to its neighbours. The results
are merged (`oneseg.tile_merge`):

- semantic: per-class scores blended with a window weight that is 1 in the window and falls
  linearly to 0 across each band it shares with a neighbour (sides on the image border keep
  weight 1). A runner with `run_scored` (`TorchRunner`) gives class scores; the others (exported
  graphs give label maps) vote for their label with the same weight. Only the rows still shared
  with the next row of windows are held: [K, size, W] float32.
- instance and panoptic: an object a window sees whole is taken from the window that sees it
  farthest from its shared sides (its best view); objects no window sees whole are pieced
  together across seams. Panoptic stuff follows the blended class scores of the panoptic
  forward (votes of the windows' stuff for exported graphs).

One window covering the whole image gives exactly the result of the runner on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from oneseg.data.collate import padded_size
from oneseg.results import Result
from oneseg.runner import Runner
from oneseg.tile_merge import InstanceMerger, PanopticMerger, SemanticMerger

AUTO_FACTOR = 2.0  # `auto` tiles an image the plain resize would shrink more than this


def tile_settings(tile, min_size: int) -> tuple[str, int, int, int, bool]:
    """(mode, size, overlap, batch_size, join) of a `TileConfig`, a mapping of its keys, a mode
    ("on", "off", "auto") or None (off); size 0 = `min_size`, overlap 0 = half of it."""
    from oneseg.config import TileConfig

    if tile is None:
        tile = TileConfig()
    elif isinstance(tile, str):
        tile = TileConfig(mode=tile)
    elif isinstance(tile, dict):
        tile = TileConfig(**{"mode": "on", **tile})
    if tile.mode not in ("on", "off", "auto"):
        raise ValueError(f"tile mode must be on, off or auto, got {tile.mode!r}")
    size = tile.size or min_size
    overlap = tile.overlap or size // 2
    if not 0 < overlap < size:
        raise ValueError(f"tile overlap must be between 1 and size - 1, got {overlap} of {size}")
    return tile.mode, size, overlap, tile.batch_size, tile.join


@dataclass(frozen=True)
class Window:
    """One window: its pixels [y0:y0+height, x0:x0+width], the cell of pixels it owns
    (absolute, [cy0:cy1, cx0:cx1]) and the rows / columns it shares with the window above /
    to its left (0 on the image border)."""

    row: int
    col: int
    y0: int
    x0: int
    height: int
    width: int
    cell: tuple[int, int, int, int]
    top: int
    left: int
    bottom: int
    right: int


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Starts of windows of `size` over `length` pixels, evenly spread, neighbours sharing at
    least `overlap` pixels; one window at 0 when `size` covers the length."""
    if length <= size:
        return [0]
    count = math.ceil((length - size) / (size - overlap)) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def _cells(starts: list[int], extent: int, length: int) -> list[tuple[int, int]]:
    """[lo, hi) owned by each window: seams in the middle of each shared band."""
    seams = [(starts[i + 1] + starts[i] + extent) // 2 for i in range(len(starts) - 1)]
    bounds = [0, *seams, length]
    return list(zip(bounds[:-1], bounds[1:]))


def plan_windows(height: int, width: int, size: int, overlap: int) -> list[list[Window]]:
    """Rows of windows covering an image of (height, width)."""
    if not 0 < overlap < size:
        raise ValueError(f"tile overlap must be between 1 and size - 1, got {overlap} of {size}")
    ys, xs = window_starts(height, size, overlap), window_starts(width, size, overlap)
    h, w = min(size, height), min(size, width)
    row_cells, col_cells = _cells(ys, h, height), _cells(xs, w, width)

    def shared(starts, i, extent):  # with the previous and the next window
        before = starts[i - 1] + extent - starts[i] if i > 0 else 0
        after = starts[i] + extent - starts[i + 1] if i + 1 < len(starts) else 0
        return before, after

    rows = []
    for r, y0 in enumerate(ys):
        top, bottom = shared(ys, r, h)
        row = []
        for c, x0 in enumerate(xs):
            left, right = shared(xs, c, w)
            cell = (*row_cells[r], *col_cells[c])
            row.append(Window(r, c, y0, x0, h, w, cell, top, left, bottom, right))
        rows.append(row)
    return rows


def should_tile(mode: str, height: int, width: int, min_size: int, max_size: int) -> bool:
    """Whether an image is tiled: `on` always, `off` never, `auto` when the plain path (shortest
    edge resized to `min_size`, longest at most `max_size`) would shrink it more than 2x."""
    if mode in ("on", "off"):
        return mode == "on"
    shrink = max(min(height, width) / min_size, max(height, width) / max_size)
    return shrink > AUTO_FACTOR


def _window_batch(image: np.ndarray, windows: list[Window], divisor: int) -> torch.Tensor:
    """[B, 3, Hp, Wp] uint8: the windows' pixels, zero padded as `Predictor` pads images."""
    sizes = [(w.height, w.width) for w in windows]
    height, width = padded_size(sizes, divisor)
    batch = torch.zeros(len(windows), 3, height, width, dtype=torch.uint8)
    for i, w in enumerate(windows):
        crop = image[w.y0 : w.y0 + w.height, w.x0 : w.x0 + w.width]
        batch[i, :, : w.height, : w.width] = torch.tensor(crop).permute(2, 0, 1)
    return batch


def run_tiled(
    runner: Runner,
    image: np.ndarray,
    tasks: Sequence[str],
    size: int,
    overlap: int,
    batch_size: int = 4,
    join: bool = True,
) -> dict[str, Result]:
    """Results of `tasks` on one image, segmented in windows at its own scale.

    Arguments:
        runner: any runner; its `run_scored`, when it has one, gives semantic class scores.
        image: [H, W, 3] uint8 RGB (a 16-bit image already stretched to 0-255).
        size, overlap: window side and the pixels neighbours share at least (0 < overlap < size).
        batch_size: windows per run of the runner.
        join: join the pieces of an object across seams (instance, panoptic).
    Returns:
        task -> result at (H, W).
    """
    height, width = image.shape[:2]
    tasks = list(dict.fromkeys(tasks))
    scored = bool({"semantic", "panoptic"} & set(tasks)) and hasattr(runner, "run_scored")
    label_map = runner.label_map
    plan = plan_windows(height, width, size, overlap)
    single = len(plan) == 1 and len(plan[0]) == 1
    mergers = {}
    for task in tasks:
        if task == "semantic":
            mergers[task] = SemanticMerger((height, width), len(label_map))
        elif task == "instance":
            mergers[task] = InstanceMerger((height, width), label_map, single, join)
        else:
            mergers[task] = PanopticMerger((height, width), label_map, single, join)
    for row in plan:
        for start in range(0, len(row), batch_size):
            windows = row[start : start + batch_size]
            batch = _window_batch(image, windows, runner.size_divisibility)
            sizes = [(w.height, w.width) for w in windows]
            if scored:
                outputs = runner.run_scored(batch, sizes, tasks)
            else:
                outputs = runner.run(batch, sizes, sizes, tasks)
            for window, per_task in zip(windows, outputs):
                for task in tasks:
                    if task == "panoptic":
                        scores = per_task.get("panoptic_scores")
                        mergers[task].add(window, per_task[task], scores)
                    else:
                        mergers[task].add(window, per_task[task])
    return {task: mergers[task].result(label_map) for task in tasks}
