"""Post-processing of one image whose full-size mask logits would not fit in memory.

The same results as `oneseg.model.postprocess` (to float rounding of the bilinear upsampling),
computed from the logits at the model's resolution one strip of output rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def upsample_rows(low: Tensor, output_size: tuple[int, int], start: int, stop: int) -> Tensor:
    """Rows start:stop of the bilinear (align_corners=False) upsampling of `low` [Q, h, w] to
    `output_size`, computed from the input rows they need only: [Q, stop - start, W]."""
    height, width = output_size
    y0, y1, wy0, wy1 = _source_indices(height, low.shape[-2], start, stop, low.device)
    x0, x1, wx0, wx1 = _source_indices(width, low.shape[-1], 0, width, low.device)
    upper, lower = low[:, y0], low[:, y1]  # [Q, rows, w]
    upper = upper[..., x0] * wx0 + upper[..., x1] * wx1  # [Q, rows, w] -> [Q, rows, W]
    lower = lower[..., x0] * wx0 + lower[..., x1] * wx1
    return upper * wy0[:, None] + lower * wy1[:, None]


def _source_indices(out_len: int, in_len: int, start: int, stop: int, device):
    """Input index pairs and weights of output positions start:stop, as PyTorch's bilinear
    kernel computes them (half-pixel centres, clamped at the border)."""
    scale = in_len / out_len
    position = torch.arange(start, stop, dtype=torch.float32, device=device)
    source = ((position + 0.5) * scale - 0.5).clamp(min=0)
    first = source.long().clamp(max=in_len - 1)
    second = (first + 1).clamp(max=in_len - 1)
    weight = source - first.float()
    return first, second, 1 - weight, weight


def row_strips(height: int, bytes_per_row: int, budget: int) -> Iterator[tuple[int, int]]:
    rows = max(1, budget // max(bytes_per_row, 1))
    for start in range(0, height, rows):
        yield start, min(start + rows, height)
