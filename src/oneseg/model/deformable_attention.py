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

from oneseg.model.packed import is_exporting


class SamplingGrid:
    """What the gather sampling of every layer shares at one input size, computed once.

    The value rows are copied into a table where every level has a border of zeros (one row and
    column before, two after). Points are taken one pixel further on (x + 1, y + 1: the border
    is at 0) and clamped into [0, size + 1]: a point farther out samples zeros either way, every
    corner of a clamped point is a row of the table, so no corner needs a validity test, and a
    point is never negative, so its integer part is its floor. The per-level constants are
    stored at the full [heads, levels, points] shape (and the anchors at the full query shape):
    elementwise arithmetic against contiguous operands of equal trailing shape runs several
    times faster on CPU than against constants broadcast over short inner axes.
    """

    def __init__(
        self,
        spatial_shapes: list[tuple[int, int]],
        batch: int,
        heads: int,
        points: int,
        device,
        dtype,
        reference_points: torch.Tensor | None = None,
    ):
        """reference_points: [B, Q, levels, 2] (x, y) in [0, 1], for `anchors`."""
        self.spatial_shapes = list(spatial_shapes)
        levels = len(spatial_shapes)
        self.padded = [(height + 3, width + 3) for height, width in spatial_shapes]
        starts = [0]
        for rows_p, cols_p in self.padded:
            starts.append(starts[-1] + rows_p * cols_p)
        self.starts, self.tokens = starts[:-1], starts[-1]
        shape = (heads, levels, points)

        def per_level(values, dtype_):
            table = torch.tensor(values, dtype=dtype_, device=device)
            return table.view(1, levels, 1).expand(shape).contiguous()

        # x and y apart: each is a contiguous [heads, L, P] block
        self.high = (  # size + 1: the far border
            per_level([w + 1 for _, w in spatial_shapes], dtype),
            per_level([h + 1 for h, _ in spatial_shapes], dtype),
        )
        self.low = torch.zeros_like(self.high[0])
        widths = [w for _, w in self.padded]
        int32 = torch.int32
        # row of a corner in the [B * S_padded * heads, Dh] table:
        # y * row_stride + x * heads + row_base (x, y counted from the border)
        self.row_stride = per_level([w * heads for w in widths], int32)
        first = [start * heads for start in self.starts]
        base = (
            per_level(first, int32) + torch.arange(heads, dtype=int32, device=device)[:, None, None]
        )  # [heads, L, P]
        images = torch.arange(batch, dtype=int32, device=device) * (self.tokens * heads)
        self.row_base = (images.view(-1, 1, 1, 1, 1) + base).contiguous()  # [B, 1, heads, L, P]
        # the other corners of the bilinear square: (y0, x1), (y1, x0), (y1, x1)
        self.corner_steps = [
            torch.full(shape, heads, dtype=int32, device=device),
            self.row_stride,
            (self.row_stride + heads).contiguous(),
        ]
        self.anchors = None
        if reference_points is not None:
            # location * size - 0.5 (the pixel whose centre is at k + 0.5 is at k), + 1
            sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device)
            anchor = reference_points * sizes + 0.5
            anchor = anchor[:, :, None, :, None, :].expand(-1, -1, heads, -1, points, -1)
            self.anchors = (anchor[..., 0].contiguous(), anchor[..., 1].contiguous())

    def table(self, value: torch.Tensor) -> torch.Tensor:
        """[B, S, heads, Dh] -> the padded rows [B * S_padded * heads, Dh]."""
        batch, _, heads, head_dim = value.shape
        table = value.new_zeros(batch, self.tokens, heads, head_dim)
        first = 0
        for (height, width), (rows_p, cols_p), start in zip(
            self.spatial_shapes, self.padded, self.starts
        ):
            level = table[:, start : start + rows_p * cols_p].view(batch, rows_p, cols_p, heads, -1)
            source = value[:, first : first + height * width]
            level[:, 1 : height + 1, 1 : width + 1] = source.view(batch, height, width, heads, -1)
            first += height * width
        return table.view(-1, head_dim)

    def bags(
        self, x: torch.Tensor, y: torch.Tensor, attention_weights: torch.Tensor, dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and weights of every query's bag of bilinear corners.

        x, y: [B, Q, heads, L, P] float32, the points one pixel further on (overwritten);
        attention_weights: [B, Q, heads, L, P] float32 (overwritten). Returns rows (int32) and
        weights (`dtype`, the float32 products rounded once), both [B, Q, heads, 4, L, P]: the
        4 corners before the levels and points (the order within a head's bag is free, and
        whole [L, P] blocks are written faster than interleaved ones)."""
        batch, num_queries, heads, levels, points = x.shape
        x, y = x.clamp_(self.low, self.high[0]), y.clamp_(self.low, self.high[1])
        x0, y0 = x.to(torch.int32), y.to(torch.int32)  # the floor: never negative
        frac_x, frac_y = x.sub_(x0), y.sub_(y0)
        rows = x0.new_empty(batch, num_queries, heads, 4, levels, points)
        row = torch.addcmul(self.row_base, y0, self.row_stride, out=rows[:, :, :, 0])
        row.add_(x0, alpha=heads)
        for i, step in enumerate(self.corner_steps, 1):
            torch.add(row, step, out=rows[:, :, :, i])
        # a NaN point (a diverged model) has no row: keep it inside the table, its weight is NaN
        rows.clamp_(0, batch * self.tokens * heads - 1)
        bottom = attention_weights * frac_y  # the weight of the lower row (y1)
        top = attention_weights.sub_(bottom)  # of the upper row (y0): weight * (1 - frac_y)
        left = 1 - frac_x
        weights = frac_x.new_empty(rows.shape)
        # corners (y0, x0), (y0, x1), (y1, x0), (y1, x1), as the steps
        for i, (y_weight, x_weight) in enumerate(
            ((top, left), (top, frac_x), (bottom, left), (bottom, frac_x))
        ):
            torch.mul(y_weight, x_weight, out=weights[:, :, :, i])
        return rows, weights.to(dtype)


def _bag_sum(value: torch.Tensor, grid: SamplingGrid, rows, weights) -> torch.Tensor:
    """[B, Q * heads bags of rows] summed over `grid.table(value)` -> [B, Q, heads * Dh]."""
    batch, _, heads, head_dim = value.shape
    num_queries = rows.shape[1]
    bag = rows[0, 0, 0].numel()
    out = F.embedding_bag(
        rows.view(-1, bag), grid.table(value), per_sample_weights=weights.view(-1, bag), mode="sum"
    )  # [B * Q * heads, Dh]
    return out.view(batch, num_queries, heads * head_dim)


def gather_sample(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    pixels: torch.Tensor,
    attention_weights: torch.Tensor,
    grid: SamplingGrid | None = None,
) -> torch.Tensor:
    """Weighted sum of bilinear samples as one `embedding_bag` over the value rows.

    Arguments:
        value: [B, S, heads, Dh], the levels' tokens flattened in `spatial_shapes` order; the
            sum runs in its dtype (float32 or bf16).
        pixels: [B, Q, heads, levels, points, 2] sampling points (x, y) in pixels of each level,
            pixel centres at k + 0.5 shifted to k (the `align_corners=False` convention).
        attention_weights: [B, Q, heads, levels, points].
        grid: the `SamplingGrid` of these shapes (built here when not given).
    Returns:
        [B, Q, heads * Dh].
    """
    batch, _, heads, _ = value.shape
    points = pixels.shape[-2]
    if grid is None:
        grid = SamplingGrid(spatial_shapes, batch, heads, points, value.device, pixels.dtype)
    x, y = pixels[..., 0] + 1, pixels[..., 1] + 1
    rows, weights = grid.bags(x, y, attention_weights.clone(), value.dtype)
    return _bag_sum(value, grid, rows, weights)


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (the 12-16 sampling weights of a head): written out, it
    runs ~5x faster on CPU than `softmax` over such an axis; equal to rounding."""
    e = (x - x.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


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


def uses_grid_sample(*tensors: torch.Tensor) -> bool:
    """grid_sample where a gradient is wanted or a graph is being exported."""
    if is_exporting():
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
        grid: SamplingGrid | None = None,
    ) -> torch.Tensor:
        """query: [B, Q, D] (positions already added); reference_points: [B, Q, levels, 2] (x, y)
        in [0, 1]; value: [B, S, D] -> [B, Q, D]. grid: the `SamplingGrid` the layers share at
        inference (with anchors of these reference points); built here when not given."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        # [B, S, D] -> [B, S, heads, Dh]: a view, the layout both samplers read
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        if uses_grid_sample(value, offsets, weights, reference_points):
            weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
            # offsets are in pixels of each level
            sizes = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
            )
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / sizes[:, None, :]
            )  # [B, Q, heads, L, P, 2] in [0, 1]
            out = grid_sample_sample(value, spatial_shapes, locations, weights)
            return self.output_proj(out)
        # the weights' softmax and the points in float32 whatever the precision: in bf16 a
        # point 100 pixels from the origin would move in steps of half a pixel
        weights = softmax_last(weights.float()).view(batch, num_queries, heads, levels, points)
        if grid is None or grid.anchors is None:
            dtype = torch.promote_types(query.dtype, torch.float32)
            grid = SamplingGrid(
                spatial_shapes, batch, heads, points, query.device, dtype, reference_points
            )
        # the points in pixels, one further on: location * size - 0.5 + 1 (align_corners=False)
        x = torch.add(offsets[..., 0], grid.anchors[0])
        y = torch.add(offsets[..., 1], grid.anchors[1])
        rows, bag_weights = grid.bags(x, y, weights, value.dtype)
        return self.output_proj(_bag_sum(value, grid, rows, bag_weights))
