"""The backbones oneseg builds, by name, and the sizes each name stands for: the one table the
model builder, the checkpoint converters, the TAO layer and the spec check read. Plain Python
(no torch), so the spec check stays light.

    BACKBONES["swin_tiny"].family, .timm_name, .out_indices
    NAMED_SIZES["swin_tiny"].embed_dim, .depths, .num_heads, .window, .mlp_ratio
    DINAT_SIZES["dinat_large"].dilations
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneEntry:
    family: str  # "swin", "convnext", "resnet", "efficientnet" or "dinat"
    timm_name: str = ""  # the timm model (DiNAT is built by oneseg.model.dinat)
    out_indices: tuple[int, ...] = (0, 1, 2, 3)  # timm stages at strides 4, 8, 16, 32


@dataclass(frozen=True)
class NamedSize:
    """The published size a backbone name stands for."""

    embed_dim: int  # width of the first stage; doubles per stage
    depths: tuple[int, ...]  # blocks per stage
    num_heads: tuple[int, ...] = ()  # attention heads per stage (Swin, DiNAT)
    window: int = 0  # Swin attention window, DiNAT neighbourhood kernel; 0 for convolutions
    mlp_ratio: float = 4.0
    dilations: tuple[tuple[int, ...], ...] = ()  # DiNAT: the dilation of each block
    layer_scale: float | None = None  # DiNAT: initial per-channel residual scale; None = none


def alternating_dilations(
    depths: tuple[int, ...], stage_dilations: tuple[int, ...] = (8, 4, 2, 1)
) -> tuple[tuple[int, ...], ...]:
    """Blocks alternate dilation 1 and the stage's dilation (DiNAT's 224-px ImageNet schedule)."""
    return tuple(
        tuple(1 if j % 2 == 0 else d for j in range(depth))
        for depth, d in zip(depths, stage_dilations)
    )


BACKBONES: dict[str, BackboneEntry] = {
    "swin_tiny": BackboneEntry("swin", "swin_tiny_patch4_window7_224"),
    "swin_small": BackboneEntry("swin", "swin_small_patch4_window7_224"),
    "swin_base": BackboneEntry("swin", "swin_base_patch4_window12_384"),
    "swin_large": BackboneEntry("swin", "swin_large_patch4_window12_384"),
    "convnext_tiny": BackboneEntry("convnext", "convnext_tiny"),
    "convnext_small": BackboneEntry("convnext", "convnext_small"),
    "convnext_base": BackboneEntry("convnext", "convnext_base"),
    "convnext_large": BackboneEntry("convnext", "convnext_large"),
    "resnet50": BackboneEntry("resnet", "resnet50", (1, 2, 3, 4)),
    "efficientnet_b0": BackboneEntry("efficientnet", "efficientnet_b0", (1, 2, 3, 4)),
    "efficientnet_lite0": BackboneEntry("efficientnet", "efficientnet_lite0", (1, 2, 3, 4)),
    "dinat_tiny": BackboneEntry("dinat"),
    "dinat_small": BackboneEntry("dinat"),
    "dinat_base": BackboneEntry("dinat"),
    "dinat_large": BackboneEntry("dinat"),
}

SWIN_SIZES: dict[str, NamedSize] = {
    "swin_tiny": NamedSize(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_small": NamedSize(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_base": NamedSize(128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_large": NamedSize(192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
CONVNEXT_SIZES: dict[str, NamedSize] = {
    "convnext_tiny": NamedSize(96, (3, 3, 9, 3)),
    "convnext_small": NamedSize(96, (3, 3, 27, 3)),
    "convnext_base": NamedSize(128, (3, 3, 27, 3)),
    "convnext_large": NamedSize(192, (3, 3, 27, 3)),
}
_DINAT_DEPTHS = (3, 4, 18, 5)
_DINAT_DILATIONS = alternating_dilations(_DINAT_DEPTHS)
# The published ImageNet-1k configs at 224 px (SHI-Labs/Neighborhood-Attention-Transformer).
DINAT_SIZES: dict[str, NamedSize] = {
    "dinat_tiny": NamedSize(64, _DINAT_DEPTHS, (2, 4, 8, 16), 7, 3.0, _DINAT_DILATIONS),
    "dinat_small": NamedSize(96, _DINAT_DEPTHS, (3, 6, 12, 24), 7, 2.0, _DINAT_DILATIONS),
    "dinat_base": NamedSize(
        128, _DINAT_DEPTHS, (4, 8, 16, 32), 7, 2.0, _DINAT_DILATIONS, layer_scale=1e-5
    ),
    "dinat_large": NamedSize(192, _DINAT_DEPTHS, (6, 12, 24, 48), 7, 2.0, _DINAT_DILATIONS),
}
NAMED_SIZES: dict[str, NamedSize] = {**SWIN_SIZES, **CONVNEXT_SIZES, **DINAT_SIZES}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONES)
