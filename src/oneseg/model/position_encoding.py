"""Sine position encoding of a feature map, as in DETR with normalized coordinates."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionEncoding(nn.Module):
    """Fixed 2-D sine/cosine encoding: `num_feats` channels for y, then `num_feats` for x.

    Coordinates run 1..H and 1..W, divided by the last one (+1e-6) and scaled to [0, 2*pi]:
    the form Mask2Former and OneFormer were trained with (no -0.5 offset). No padding mask:
    the original models disable it, so the encoding depends only on the feature map's size.
    """

    def __init__(self, num_feats: int, temperature: float = 10000.0):
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def axes(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoding's two factors in float32: [H, F] of the rows (the first F channels) and
        [W, F] of the columns (the last F): pixel (y, x) is their concatenation."""
        eps, scale = 1e-6, 2 * math.pi
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y = y / (height + eps) * scale
        xs = xs / (width + eps) * scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats
        )
        pos_y = y[:, None] / dim_t  # [H, F]
        pos_x = xs[:, None] / dim_t  # [W, F]
        # interleave sin of even channels with cos of odd channels: [H, F/2, 2] -> [H, F]
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        return pos_y, pos_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] (only its shape, device and dtype are read) -> [B, 2*num_feats, H, W]."""
        batch, _, height, width = x.shape
        pos_y, pos_x = self.axes(height, width, x.device)
        pos = torch.cat(
            (
                pos_y[:, None, :].expand(height, width, self.num_feats),
                pos_x[None, :, :].expand(height, width, self.num_feats),
            ),
            dim=2,
        )  # [H, W, 2F]
        pos = pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
        return pos.to(x.dtype)
