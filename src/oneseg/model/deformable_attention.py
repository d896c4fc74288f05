"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query samples `n_points` locations per head and level around its reference point with
bilinear `grid_sample` and sums them with softmax weights. No compiled extension: it runs on CPU
and GPU and exports to ONNX (grid_sample, opset >= 16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def deformable_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples.

    Arguments:
        value: [B, S, heads, Dh], the levels' tokens flattened in `spatial_shapes` order.
        spatial_shapes: (H, W) of each level.
        sampling_locations: [B, Q, heads, levels, points, 2], (x, y) in [0, 1].
        attention_weights: [B, Q, heads, levels, points].
    Returns:
        [B, Q, heads * Dh].
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    samples = []
    for level, (height, width) in enumerate(spatial_shapes):
        # [B, HW, heads, Dh] -> [B*heads, Dh, H, W]
        v = values[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # [B, Q, heads, P, 2] -> [B*heads, Q, P, 2]
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*heads, Dh, Q, P]
    # [B*heads, Dh, Q, levels*P]
    sampled = torch.stack(samples, dim=-2).flatten(-2)
    # [B, Q, heads, levels, P] -> [B*heads, 1, Q, levels*P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, -1)
    out = (sampled * weights).sum(-1)  # [B*heads, Dh, Q]
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of queries over `n_levels` flattened feature maps."""

    def __init__(self, dim: int, n_heads: int, n_levels: int, n_points: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.n_levels, self.n_points = n_heads, n_levels, n_points
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # offsets start on a ring of directions, one per head, farther for later points
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query: [B, Q, D] (positions already added); reference_points: [B, Q, levels, 2] (x, y)
        in [0, 1]; value: [B, S, D] -> [B, Q, D]."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        # offsets are in pixels of each level: divide by (W, H)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        out = deformable_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
