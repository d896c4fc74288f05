"""Multi-scale deformable-attention pixel decoder (Mask2Former, used unchanged by OneFormer).

The three coarsest backbone maps (strides 8, 16, 32) are projected to `conv_dim`, refined
together by a deformable-attention encoder, and the finer maps (stride 4) are joined top-down
FPN-style. Outputs: the encoder's three maps (coarse to fine) for the transformer decoder and the
stride-4 mask features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from oneseg.model.constants import compute_dtype, constant
from oneseg.model.deformable_attention import (
    MultiScaleDeformableAttention,
    SamplingGrid,
    uses_grid_sample,
)
from oneseg.model.dropout import Dropout
from oneseg.model.layers import tokens
from oneseg.model.packed import linear_relu
from oneseg.model.position_encoding import SinePositionEncoding

NUM_LEVELS = 3  # the encoder always reads the three coarsest maps
COMMON_STRIDE = 4  # stride of the mask features


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward; post-norm."""

    def __init__(self, dim: int, ffn_dim: int, n_heads: int, n_points: int, dropout: float):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, n_heads, NUM_LEVELS, n_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, grid=None):
        """src, pos: [B, S, D]; reference_points: [B, S, levels, 2] -> [B, S, D];
        grid: the `SamplingGrid` all layers share at inference."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, grid)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(linear_relu(self.linear1, src)))
        return self.norm2(src + self.dropout(ffn))


def reference_points(spatial_shapes: list[tuple[int, int]], batch: int, device, dtype):
    """Centre of every pixel of every level in [0, 1] (x, y): [B, S, levels, 2].

    Without padding masks every level covers the whole image, so a pixel's point is the same
    on all levels."""
    points = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((ref_x.flatten(), ref_y.flatten()), -1))  # [HW, 2]
    ref = torch.cat(points, 0)  # [S, 2]
    return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels-last where `x` [B, C, H, W] is laid out so, else the contiguous NCHW."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def conv_norm(in_ch: int, out_ch: int, kernel: int, groups: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias),
        nn.GroupNorm(groups, out_ch),
    )


class PixelDecoder(nn.Module):
    """Deformable-attention encoder over strides 8-32 plus an FPN to stride 4."""

    def __init__(
        self,
        *,
        in_channels: list[int],
        in_strides: list[int],
        conv_dim: int,
        mask_dim: int,
        enc_layers: int,
        enc_heads: int,
        enc_points: int,
        enc_ffn_dim: int,
        dropout: float,
        norm_groups: int,
    ):
        """in_channels, in_strides: of the backbone maps, finest first (e.g. strides 4..32)."""
        super().__init__()
        if len(in_channels) < NUM_LEVELS:
            raise ValueError(
                f"the pixel decoder needs >= {NUM_LEVELS} maps, got {len(in_channels)}"
            )
        if conv_dim % norm_groups:
            raise ValueError(f"conv_dim {conv_dim} is not divisible by norm_groups {norm_groups}")
        self.pos_encoding = SinePositionEncoding(conv_dim // 2)
        # coarsest first, the order of the encoder's levels
        self.input_proj = nn.ModuleList(
            conv_norm(ch, conv_dim, 1, norm_groups, bias=True)
            for ch in in_channels[-NUM_LEVELS:][::-1]
        )
        self.level_embed = nn.Parameter(torch.empty(NUM_LEVELS, conv_dim))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, enc_ffn_dim, enc_heads, enc_points, dropout)
            for _ in range(enc_layers)
        )
        # FPN levels between the encoder's finest stride and the mask stride, coarse to fine
        finest_encoded = in_strides[-NUM_LEVELS]
        self.num_fpn_levels = int(math.log2(finest_encoded) - math.log2(COMMON_STRIDE))
        fpn_channels = in_channels[: self.num_fpn_levels][::-1]
        self.lateral_convs = nn.ModuleList(
            conv_norm(ch, conv_dim, 1, norm_groups, bias=False) for ch in fpn_channels
        )
        self.output_convs = nn.ModuleList(
            conv_norm(conv_dim, conv_dim, 3, norm_groups, bias=False) for _ in fpn_channels
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for layer in self.encoder:
            for name, p in layer.named_parameters():
                if p.dim() > 1 and not name.startswith("self_attn."):
                    nn.init.xavier_uniform_(p)
        nn.init.normal_(self.level_embed)
        for conv in [*self.lateral_convs, *self.output_convs]:
            nn.init.kaiming_uniform_(conv[0].weight, a=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)

    def positions(self, shapes: list[tuple[int, int]], src: torch.Tensor) -> torch.Tensor:
        """The encoder's positions: each level's sine encoding (in src's dtype) plus its level
        embedding, [1, S, D], levels in `shapes` order."""
        pos = []
        for level, (height, width) in enumerate(shapes):
            like = src.new_empty(1, 0, height, width)
            level_pos = self.pos_encoding(like).flatten(2).transpose(1, 2)  # [1, HW, D]
            pos.append(level_pos + self.level_embed[level].view(1, 1, -1))
        return torch.cat(pos, 1)

    @staticmethod
    def sampling_grid(shapes, batch: int, attn: MultiScaleDeformableAttention, device, dtype):
        """The reference points [B, S, levels, 2] and the `SamplingGrid` the layers share."""
        ref = reference_points(shapes, batch, device, dtype)
        return ref, SamplingGrid(shapes, batch, attn.n_heads, attn.n_points, device, dtype, ref)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """features: backbone maps [B, C_i, H_i, W_i], finest first.

        Returns mask features [B, mask_dim, H/4, W/4] and the encoder's maps
        [B, conv_dim, H_l, W_l] at strides 32, 16, 8 (coarse to fine)."""
        coarse = features[-NUM_LEVELS:][::-1]
        srcs = [proj(feat) for feat, proj in zip(coarse, self.input_proj)]
        shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        # [B, C, H, W] -> [B, HW, C]
        src = torch.cat([tokens(level_src) for level_src in srcs], 1)
        setting = (tuple(shapes), src.device)
        pos = constant(
            self,
            "pos",
            setting,
            (self.level_embed,),
            lambda: self.positions(shapes, src),
            compute_dtype(src),
        )
        # the points in float32 at least: bf16 cannot tell pixels apart on a map 256 wide
        dtype = torch.promote_types(src.dtype, torch.float32)
        batch = src.shape[0]
        grid = None
        if self.encoder and not uses_grid_sample(src, *self.encoder.parameters()):
            attn = self.encoder[0].self_attn
            ref, grid = constant(
                self,
                "grid",
                (setting, batch, dtype),
                (),
                lambda: self.sampling_grid(shapes, batch, attn, src.device, dtype),
            )
        else:
            ref = reference_points(shapes, batch, src.device, dtype)
        for layer in self.encoder:
            src = layer(src, pos, ref, shapes, grid)

        # [B, S, C] -> per level [B, C, H, W]
        maps = [
            tokens.transpose(1, 2).unflatten(2, shape)
            for tokens, shape in zip(src.split([h * w for h, w in shapes], 1), shapes)
        ]
        out = maps[-1]
        fine = features[: self.num_fpn_levels][::-1]
        for feat, lateral, output in zip(fine, self.lateral_convs, self.output_convs):
            side = lateral(feat)
            if out.dtype != torch.float32:
                # in bf16, resized in the layout of the map it is added to (an addition across
                # layouts costs several times the resizing), from a copy with that layout's
                # strides (the tokens' slice has other ones); the same numbers, and fp32 keeps
                # its kernel and results
                out = out.clone(memory_format=memory_format(side))
            up = F.interpolate(out, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            out = torch.relu(output(side + up))
        # channels-last whatever the backbone gave (a copy only where it was not): the decoder
        # reads the mask features as tokens and resizes them, both copy-free in that layout
        mask_features = self.mask_features(out).contiguous(memory_format=torch.channels_last)
        return mask_features, maps
