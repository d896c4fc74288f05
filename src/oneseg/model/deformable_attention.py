"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query samples `n_points` locations per head and level around its reference point
(bilinearly, zero outside the map) and sums them with softmax weights. No compiled extension:
it runs on CPU and GPU and exports to ONNX.

Two exact implementations of the sampling:
- `gather_sample` (inference): the value tokens stay in their projection's layout, [B, S, heads,
  Dh] seen as one table of Dh-wide rows; every query's 4 bilinear corners of every head, level
  and point become one weighted bag of rows, summed by `F.embedding_bag`. No per-level permute,
  no copy of the values, no stacked samples.
- `grid_sample_sample` (training, export): `grid_sample` per level; its backward is PyTorch's,
  and ONNX has a GridSample operator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _level_tensors(spatial_shapes: list[tuple[int, int]], device) -> tuple[torch.Tensor, ...]:
    """(W, H) of each level [L, 2] and the index of its first token [L]."""
    sizes = torch.tensor([[w, h] for h, w in spatial_shapes], device=device)
    counts = [h * w for h, w in spatial_shapes]
    starts = torch.tensor([sum(counts[:i]) for i in range(len(counts))], device=device)
    return sizes, starts


def gather_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    pixels: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples as one `embedding_bag` over the value rows.

    Arguments:
        value: [B, S, heads, Dh], the levels' tokens flattened in `spatial_shapes` order.
        pixels: [B, Q, heads, levels, points, 2] sampling points (x, y) in pixels of each level,
            pixel centres at k + 0.5 shifted to k (the `align_corners=False` convention).
        attention_weights: [B, Q, heads, levels, points].
    Returns:
        [B, Q, heads * Dh].
    """
    batch, tokens, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = pixels.shape
    sizes, starts = _level_tensors(spatial_shapes, value.device)
    lower = pixels.floor()
    frac = pixels - lower
    corner = lower.long()  # [B, Q, heads, L, P, 2] upper-left neighbour (x, y)
    limit = sizes[:, None]  # [L, 1, 2]
    # weight of the lower and the upper neighbour along each axis, zero outside the map
    w_lo = (1 - frac) * ((corner >= 0) & (corner < limit))
    w_hi = frac * ((corner >= -1) & (corner < limit - 1))
    wx = torch.stack((w_lo[..., 0], w_hi[..., 0]), -1) * attention_weights[..., None]
    wy = torch.stack((w_lo[..., 1], w_hi[..., 1]), -1)
    # [B, Q, heads, L, P, 2 (y), 2 (x)]: corners (y0,x0), (y0,x1), (y1,x0), (y1,x1)
    corner_weights = wy[..., :, None] * wx[..., None, :]
    widths = sizes[:, 0]
    # row of the upper-left corner in the [B * S * heads, Dh] table
    token = starts[:, None] + corner[..., 1] * widths[:, None] + corner[..., 0]
    batch_head = torch.arange(batch, device=value.device)[:, None] * (tokens * heads)
    batch_head = (batch_head + torch.arange(heads, device=value.device))[:, None, :, None, None]
    row = token * heads + batch_head  # [B, Q, heads, L, P]
    step = torch.stack((torch.zeros_like(widths), torch.ones_like(widths), widths, widths + 1), -1)
    # corners outside the map weigh 0; clamping only keeps their rows inside the table
    rows = (row[..., None] + step[:, None, :] * heads).clamp_(0, batch * tokens * heads - 1)
    bag = levels * points * 4
    out = F.embedding_bag(
        rows.view(-1, bag),
        value.reshape(-1, head_dim),
        per_sample_weights=corner_weights.reshape(-1, bag),
        mode="sum",
    )  # [B * Q * heads, Dh]
    return out.view(batch, num_queries, heads * head_dim)


def grid_sample_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The same sum with `grid_sample` per level.

    Arguments:
        value: [B, S, heads, Dh], the levels' tokens flattened in `spatial_shapes` order.
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


def _use_grid_sample(*tensors: torch.Tensor) -> bool:
    """grid_sample where a gradient is wanted or a graph is being exported."""
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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
        # [B, S, D] -> [B, S, heads, Dh]: a view, the layout both samplers read
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        # offsets are in pixels of each level
        sizes = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        if _use_grid_sample(value, offsets, weights, reference_points):
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / sizes[:, None, :]
            )  # [B, Q, heads, L, P, 2] in [0, 1]
            out = grid_sample_sample(value, spatial_shapes, locations, weights)
        else:
            # the same point in pixels: location * size - 0.5 (align_corners=False)
            anchor = reference_points * sizes - 0.5  # [B, Q, L, 2]
            pixels = offsets + anchor[:, :, None, :, None, :]
            out = gather_sample(value, spatial_shapes, pixels, weights)
        return self.output_proj(out)
