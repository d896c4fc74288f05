"""DiNAT backbone: Dilated Neighborhood Attention Transformer (Hassani & Shi, 2022).

Each block attends, for every pixel, to a `kernel x kernel` neighbourhood of pixels `dilation`
apart. As in NATTEN, a neighbourhood never leaves the map: near a border the window is shifted
inwards, so every query sees exactly `kernel**2` keys of its own dilation group, and the relative
position bias is indexed by the key's offset from the query in dilation steps. Maps smaller than
`kernel * dilation` are zero-padded (after the block's first LayerNorm) before attention and
cropped after, as NATTEN's module and transformers' `DinatLayer` do.

The attention runs in plain PyTorch (index gathers, one Python loop over kernel rows: nothing
loops over pixels), so it trains, exports to ONNX and runs on any device. If NATTEN's legacy
kernels with relative position bias (`natten.functional.natten2dqkrpb` / `natten2dav`, NATTEN
< 0.20) are importable they are used outside export; newer NATTEN has no relative position bias.

Module names follow the original implementation (`levels.i.blocks.j.attn.rpb`, `norm0`..`norm3`),
so original and OneFormer DiNAT weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from oneseg.backbones import DINAT_SIZES, alternating_dilations

# OneFormer's DiNAT-L schedules (SHI-Labs/OneFormer configs): (kernel, dilations). The weights
# do not record them; a converter picks them by kernel size.
ONEFORMER_DINAT_LARGE = {
    # COCO, ADE20K at 640, Mapillary Vistas
    11: ((1, 20, 1), (1, 5, 1, 10), (1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5),
         (1, 2, 1, 2, 1)),
    # Cityscapes
    7: ((1, 18, 1), (1, 5, 1, 9), (1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4),
        (1, 2, 1, 2, 1)),
}  # fmt: skip


# --------------------------------------------------------------------------- attention


def neighbourhood_index(
    length: int, kernel: int, dilation: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbours of each position along one axis, NATTEN's way.

    Positions fall into `dilation` groups (position mod dilation); within its group a query
    takes the `kernel` consecutive members centred on it, shifted inwards at the borders.
    Needs every group to hold `kernel` members (length >= kernel * dilation).
    Returns (index [length, kernel] of the neighbours, bias [length, kernel] indices into the
    2*kernel-1 relative positions)."""
    pos = torch.arange(length, device=device)
    group, rank = pos % dilation, pos // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((rank - kernel // 2).clamp(min=0), group_len - kernel)
    steps = start[:, None] + torch.arange(kernel, device=device)  # [L, k] ranks in the group
    return group[:, None] + steps * dilation, steps - rank[:, None] + kernel - 1


def _natten_legacy():
    """NATTEN's kernels with relative position bias (NATTEN < 0.20), or None."""
    try:
        from natten.functional import natten2dav, natten2dqkrpb
    except Exception:  # noqa: BLE001 - absent, or a NATTEN without these functions
        return None
    return natten2dqkrpb, natten2dav


def neighbourhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel: int,
    dilation: int,
) -> torch.Tensor:
    """query (already scaled), key, value: [B, heads, H, W, d]; rpb: [heads, 2k-1, 2k-1].

    Returns [B, heads, H, W, d]. H and W must be >= kernel * dilation."""
    _, _, height, width, _ = query.shape
    rows, row_bias = neighbourhood_index(height, kernel, dilation, query.device)
    cols, col_bias = neighbourhood_index(width, kernel, dilation, query.device)
    scores = []
    for a in range(kernel):  # one kernel row at a time keeps the gathered keys small
        keys = key[:, :, rows[:, a]][:, :, :, cols]  # [B, n, H, W, k, d]
        scores.append(torch.einsum("bnhwd,bnhwjd->bnhwj", query, keys))
    attn = torch.stack(scores, dim=-2)  # [B, n, H, W, k, k]
    if rpb is not None:
        # [n, 2k-1, 2k-1] -> [n, H, W, k, k]
        attn = attn + rpb[:, row_bias[:, None, :, None], col_bias[None, :, None, :]]
    attn = attn.flatten(-2).softmax(dim=-1).unflatten(-1, (kernel, kernel))
    out = 0
    for a in range(kernel):
        values = value[:, :, rows[:, a]][:, :, :, cols]  # [B, n, H, W, k, d]
        out = out + torch.einsum("bnhwj,bnhwjd->bnhwd", attn[..., a, :], values)
    return out


class NeighbourhoodAttention(nn.Module):
    """Multi-head dilated neighbourhood attention over [B, H, W, C] maps."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"DiNAT kernel_size must be odd, got {kernel_size}")
        self.num_heads, self.kernel_size, self.dilation = num_heads, kernel_size, dilation
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        batch, height, width, channels = x.shape
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        # [B, H, W, 3C] -> [3, B, heads, H, W, C/heads]
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(3, 0, 4, 1, 2, 5)
        query, key, value = qkv[0] * self.scale, qkv[1], qkv[2]
        legacy = _natten_legacy()
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if legacy is not None and not exporting:
            qk_rpb, av = legacy
            attn = qk_rpb(query, key, self.rpb, self.kernel_size, self.dilation).softmax(dim=-1)
            out = av(attn, value, self.kernel_size, self.dilation)
        else:
            out = neighbourhood_attention(
                query, key, value, self.rpb, self.kernel_size, self.dilation
            )
        out = out.permute(0, 2, 3, 1, 4).flatten(-2)  # [B, heads, H, W, d] -> [B, H, W, C]
        return self.proj(out[:, :height, :width])


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DinatBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)), optionally layer-scaled."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int,
        mlp_ratio: float,
        drop_path: float,
        layer_scale: float | None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighbourhoodAttention(dim, num_heads, kernel_size, dilation)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.norm1(x))
        if self.layer_scale:
            x = x + self.drop_path(self.gamma1 * attn)
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        x = x + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 convolution doubling the width, then LayerNorm: [B, H, W, C] -> [B, H/2,
    W/2, 2C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class DinatStage(nn.Module):
    def __init__(self, blocks: list[DinatBlock], downsample: ConvDownsampler | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class ConvTokenizer(nn.Module):
    """Two 3x3 stride-2 convolutions (stride 4 in all), then LayerNorm: NCHW in, NHWC out."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(3, embed_dim // 2, 3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(images).permute(0, 2, 3, 1))


class DiNAT(nn.Module):
    """Four stages at strides 4, 8, 16, 32, each output LayerNorm'd (`norm0`..`norm3`)."""

    family = "dinat"

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: tuple[int, ...],
        num_heads: tuple[int, ...],
        mlp_ratio: float,
        kernel_size: int,
        dilations: tuple[tuple[int, ...], ...],
        layer_scale: float | None = None,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4 or len(dilations) != 4:
            raise ValueError("DiNAT needs 4 stages of depths, num_heads and dilations")
        if any(len(d) != n for d, n in zip(dilations, depths)):
            raise ValueError(f"DiNAT dilations {dilations} do not match depths {depths}")
        self.channels = [embed_dim * 2**i for i in range(4)]
        self.strides = [4, 8, 16, 32]
        self.patch_embed = ConvTokenizer(embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]  # linear in depth
        self.levels = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(self.channels, depths)):
            first = sum(depths[:i])
            blocks = [
                DinatBlock(
                    dim,
                    num_heads[i],
                    kernel_size,
                    dilations[i][j],
                    mlp_ratio,
                    rates[first + j],
                    layer_scale,
                )
                for j in range(depth)
            ]
            self.levels.append(DinatStage(blocks, ConvDownsampler(dim) if i < 3 else None))
        for i, dim in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: [B, 3, H, W] -> maps [B, C_i, H/s_i, W/s_i], finest first."""
        x = self.patch_embed(images)  # [B, H/4, W/4, C]
        maps = []
        for i, level in enumerate(self.levels):
            for block in level.blocks:
                x = block(x)
            norm = getattr(self, f"norm{i}")
            maps.append(norm(x).permute(0, 3, 1, 2).contiguous())  # [B,H,W,C] -> [B,C,H,W]
            if level.downsample is not None:
                x = level.downsample(x)
        return maps


def build_dinat(
    name: str,
    *,
    drop_path_rate: float = 0.0,
    embed_dim: int = 0,
    depths: list[int] | None = None,
    num_heads: list[int] | None = None,
    kernel_size: int = 0,
    dilations: list[list[int]] | None = None,
) -> DiNAT:
    """The named DiNAT size with random weights; 0 / None keep the named value.

    When depths change and dilations are not given, blocks alternate dilation 1 and the
    stage's dilation of the 224-px schedule (8, 4, 2, 1)."""
    size = DINAT_SIZES[name]
    depths_t = tuple(depths) if depths else size.depths
    if dilations:
        dilations_t = tuple(tuple(d) for d in dilations)
    elif depths:
        dilations_t = alternating_dilations(depths_t)
    else:
        dilations_t = size.dilations
    return DiNAT(
        embed_dim=embed_dim or size.embed_dim,
        depths=depths_t,
        num_heads=tuple(num_heads) if num_heads else size.num_heads,
        mlp_ratio=size.mlp_ratio,
        kernel_size=kernel_size or size.window,
        dilations=dilations_t,
        layer_scale=size.layer_scale,
        drop_path_rate=drop_path_rate,
    )
