"""Dropout whose random mask is cheap on CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element from its Mersenne Twister (a
vectorised generator is used on Intel CPUs only): 8-10 ns an element, 10-15% of a Swin-T
OneFormer training step on an AMD CPU, in every precision. Here one 64-bit draw of the same
generator gives four elements their 15 random bits each (`keep_mask`): the same Bernoulli
mask, with the drop probability rounded to a multiple of 2^-15 (0.1 -> 0.100006), 3-4x
faster. The default generator is used, so `torch.manual_seed` still fixes the masks. Other
devices keep PyTorch's dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 15  # the random bits each element gets


def keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A mask shaped and typed as `like`: 1 / (1 - p) with probability 1 - p, else 0
    (0 <= p < 1)."""
    count = like.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=like.device).random_()
    # random_ on int64 is uniform on [0, 2^63): every 16-bit part of a draw has 15 uniform
    # low bits (the top part's 16th bit is always 0, the others' are dropped alike)
    bits = draws.view(torch.int16)[:count].view(like.shape).bitwise_and_(LEVELS - 1)
    return bits.ge_(round(p * LEVELS)).to(like.dtype).mul_(1 / (1 - p))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with `keep_mask` on CPU."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return F.dropout(x, p, training)
    return x * keep_mask(x, p)


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout` (no parameters: checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
