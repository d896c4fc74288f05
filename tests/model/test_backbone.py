"""Backbones from timm: every name builds, gives 4 NCHW maps at strides 4-32, trains; weights load
from local files."""

from __future__ import annotations

import pytest
import timm
import torch

from oneseg.model.backbone import (
    BACKBONES,
    ChannelsLastPatchConv,
    PadThenShiftSwinBlock,
    StridedDepthwiseConv,
    build_backbone,
    lite0_package_weights,
    load_backbone_weights,
)

# Small versions of the big families (same heads and windows, narrower, one block per stage).
SMALL = {
    "swin_tiny": dict(embed_dim=24, depths=[1, 2, 1, 1]),
    "swin_small": dict(embed_dim=24, depths=[1, 1, 2, 1]),
    "swin_base": dict(embed_dim=32, depths=[1, 1, 1, 2]),
    "swin_large": dict(embed_dim=48, depths=[1, 1, 1, 1]),
    "convnext_tiny": dict(embed_dim=16, depths=[1, 1, 1, 1]),
    "convnext_small": dict(embed_dim=16, depths=[1, 1, 2, 1]),
    "convnext_base": dict(embed_dim=16, depths=[1, 1, 1, 1]),
    "convnext_large": dict(embed_dim=16, depths=[1, 1, 1, 1]),
    "dinat_tiny": dict(embed_dim=16, depths=[1, 2, 1, 1]),
    "dinat_small": dict(embed_dim=24, depths=[1, 1, 1, 1]),
    "dinat_base": dict(embed_dim=32, depths=[1, 1, 1, 1]),
    "dinat_large": dict(embed_dim=48, depths=[1, 1, 1, 1]),
}


def small_backbone(name: str):
    return build_backbone(name, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_maps_strides_channels_and_gradients(name):
    torch.manual_seed(0)
    backbone = small_backbone(name)
    assert backbone.strides == [4, 8, 16, 32]
    images = torch.randn(1, 3, 64, 96)
    maps = backbone(images)
    assert [tuple(m.shape) for m in maps] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(backbone.channels, backbone.strides)
    ]
    sum(m.mean() for m in maps).backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


NAMED_CHANNELS = {
    "swin_tiny": [96, 192, 384, 768],
    "swin_small": [96, 192, 384, 768],
    "swin_base": [128, 256, 512, 1024],
    "swin_large": [192, 384, 768, 1536],
    "convnext_tiny": [96, 192, 384, 768],
    "convnext_small": [96, 192, 384, 768],
    "convnext_base": [128, 256, 512, 1024],
    "convnext_large": [192, 384, 768, 1536],
    "resnet50": [256, 512, 1024, 2048],
    "efficientnet_b0": [24, 40, 112, 320],
    "efficientnet_lite0": [24, 40, 112, 320],
    "dinat_tiny": [64, 128, 256, 512],
    "dinat_small": [96, 192, 384, 768],
    "dinat_base": [128, 256, 512, 1024],
    "dinat_large": [192, 384, 768, 1536],
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_named_sizes_follow_timm(name):
    with torch.device("meta"):  # full size without allocating or initialising weights
        backbone = build_backbone(name)
    assert backbone.channels == NAMED_CHANNELS[name] and backbone.strides == [4, 8, 16, 32]


def test_swin_uses_original_window_order_and_any_size():
    backbone = small_backbone("swin_tiny")
    blocks = [m for m in backbone.modules() if isinstance(m, PadThenShiftSwinBlock)]
    assert len(blocks) == 5 and any(any(b.shift_size) for b in blocks)
    # window 7 with maps of 10x6 (stride 32 of 320x192): padded, shifted, and never shrunk
    maps = backbone(torch.randn(1, 3, 320, 192))
    assert maps[-1].shape[-2:] == (10, 6)
    assert all(b.window_size == (7, 7) for b in blocks)


def test_unknown_name_and_wrong_overrides():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vit_huge")
    with pytest.raises(ValueError, match="swin only"):
        build_backbone("convnext_tiny", window_size=12)
    with pytest.raises(ValueError, match="swin and convnext only"):
        build_backbone("resnet50", embed_dim=32)


def test_load_timm_classifier_weights(tmp_path):
    """A timm classifier checkpoint (names `layers.0`, with head) loads into the features model."""
    torch.manual_seed(0)
    classifier = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, embed_dim=24, depths=(1, 2, 1, 1)
    )
    torch.save(classifier.state_dict(), tmp_path / "swin.pth")
    backbone = small_backbone("swin_tiny")
    loaded = load_backbone_weights(backbone, tmp_path / "swin.pth")
    assert loaded == len(backbone.body.state_dict())
    source = classifier.state_dict()["layers.1.blocks.1.attn.qkv.weight"]
    assert torch.equal(backbone.body.state_dict()["layers_1.blocks.1.attn.qkv.weight"], source)
    # our own backbone state dict (safetensors) round-trips, per-stage norms included
    from safetensors.torch import save_file

    with torch.no_grad():
        backbone.out_norms[0].weight.fill_(2.0)
    save_file(backbone.state_dict(), str(tmp_path / "ours.safetensors"))
    fresh = small_backbone("swin_tiny")
    load_backbone_weights(fresh, tmp_path / "ours.safetensors")
    assert torch.equal(fresh.out_norms[0].weight, backbone.out_norms[0].weight)


def test_wrong_weights_are_named(tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="wrong shapes"):
        load_backbone_weights(build_backbone("resnet50"), tmp_path / "r18.pth")
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(build_backbone("resnet50"), tmp_path / "none.pth")


def test_efficientnet_lite0_package_weights():
    path = lite0_package_weights()
    source = torch.load(path, map_location="cpu", weights_only=True)
    backbone = build_backbone("efficientnet_lite0")
    assert load_backbone_weights(backbone, path) == len(backbone.body.state_dict())
    state = backbone.body.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(
        state["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"]
    )
    backbone.eval()
    assert torch.isfinite(backbone(torch.randn(1, 3, 64, 64))[-1]).all()
    # the same file does not fit another network, and says which tensor
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone_weights(build_backbone("efficientnet_b0"), path)


def _drop_path_rates(backbone) -> list[float]:
    return [m.drop_prob for m in backbone.modules() if isinstance(m, timm.layers.DropPath)]


def test_training_defaults_follow_the_original_per_family():
    """-1 is the family's default: drop-path 0.3 for Swin/ConvNeXt, none for ResNet/EfficientNet;
    frozen BatchNorm keeps statistics and affine out of training."""
    assert max(
        _drop_path_rates(build_backbone("swin_tiny", drop_path_rate=-1, **SMALL["swin_tiny"]))
    ) == pytest.approx(0.3)
    assert _drop_path_rates(build_backbone("resnet50", drop_path_rate=-1)) == []
    assert _drop_path_rates(build_backbone("efficientnet_lite0", drop_path_rate=-1)) == []
    assert max(_drop_path_rates(build_backbone("resnet50", drop_path_rate=0.2))) > 0
    with pytest.raises(ValueError, match="drop_path_rate"):
        build_backbone("resnet50", drop_path_rate=-0.5)

    for name in ("resnet50", "efficientnet_lite0"):
        frozen = build_backbone(name, frozen_bn=True)
        batchnorms = [
            m for m in frozen.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        assert batchnorms == [], name
        live = build_backbone(name)
        assert sum(p.numel() for p in frozen.parameters()) < sum(
            p.numel() for p in live.parameters()
        )
        # weights saved with live BatchNorm (num_batches_tracked included) load unchanged, and
        # the frozen network in training mode computes what the live one does in eval mode
        torch.manual_seed(0)
        for module in live.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        frozen.load_state_dict(live.state_dict())
        images = torch.randn(2, 3, 64, 64)
        expected = live.eval()(images)
        frozen.train()
        for got, want in zip(frozen(images), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # and it stays so after a training step: nothing of BatchNorm moves
        before = {k: v.clone() for k, v in frozen.state_dict().items() if "running" in k}
        sum(m.sum() for m in frozen(images)).backward()
        assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before.items())


def test_lite0_package_weights_load_into_frozen_batchnorm():
    path = lite0_package_weights()
    source = torch.load(path, map_location="cpu", weights_only=True)
    backbone = build_backbone("efficientnet_lite0", frozen_bn=True)
    assert load_backbone_weights(backbone, path) == len(backbone.body.state_dict())
    state = backbone.body.state_dict()
    assert torch.equal(state["bn1.running_var"], source["_bn0.running_var"])
    assert torch.equal(state["blocks.6.0.bn3.running_mean"], source["_blocks.15._bn2.running_mean"])


def test_strided_depthwise_convolutions_train_in_float32_under_cpu_autocast():
    """EfficientNet's downsampling convolutions: float32 under bf16 autocast where a gradient
    is wanted (the same numbers as a float32 convolution), the autocast dtype at inference."""
    backbone = build_backbone("efficientnet_lite0")
    convs = [m for m in backbone.modules() if isinstance(m, StridedDepthwiseConv)]
    assert convs and all(max(m.stride) > 1 and m.groups == m.in_channels for m in convs)
    assert not any(
        type(m) is torch.nn.Conv2d and m.groups == m.in_channels > 1 and max(m.stride) > 1
        for m in backbone.modules()
    )
    conv = convs[0]
    x = torch.randn(2, conv.in_channels, 16, 16, requires_grad=True)
    reference = torch.nn.functional.conv2d(
        x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        with torch.no_grad():
            inference = conv(x)
    assert out.dtype == torch.float32 and torch.equal(out, reference)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    assert inference.dtype == torch.bfloat16


@pytest.mark.parametrize("batch,height,width", [(2, 10, 13), (1, 14, 7)])
def test_gathered_window_attention_equals_pad_shift_partition(monkeypatch, batch, height, width):
    """Low-precision inference takes `gathered_attn` (q, k, v of the map's tokens gathered into
    windows, padding filled with the qkv bias); the reference is the pad / shift / partition
    path with timm's attention, both in float64, shifted and unshifted blocks, maps that need
    padding on both sides (10 x 13) and none (14 x 7)."""
    import oneseg.model.backbone as backbone_module

    torch.manual_seed(0)
    backbone = build_backbone("swin_tiny", embed_dim=24, depths=[2, 1, 1, 1]).double().eval()
    blocks = [m for m in backbone.modules() if isinstance(m, PadThenShiftSwinBlock)][:2]
    assert [any(b.shift_size) for b in blocks] == [False, True]
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(batch, height, width, 24, dtype=torch.float64)
    for block in blocks:
        with torch.no_grad():
            fast = block._attn(x)  # float64 is not float32: the low-precision path
            assert ("window_order", None) in block._constants
            monkeypatch.setattr(backbone_module, "caching", lambda *_: False)
            reference = block._attn(x)
            monkeypatch.undo()
        assert fast.shape == reference.shape == x.shape
        assert (fast - reference).abs().max() < 1e-5 * reference.abs().max()
        assert reference.std() > 0.1


def test_swin_patch_embedding_writes_channels_last_in_bf16_inference():
    """At bf16 CPU inference Swin's patch embedding is fed channels-last, so its output is NHWC
    in memory and timm's permute before the LayerNorm is a view; the values are the plain
    convolution's (reference: the same weights as a plain `nn.Conv2d`), and float32 keeps the
    NCHW output."""
    torch.manual_seed(0)
    backbone = build_backbone("swin_tiny", embed_dim=24, depths=[1, 1, 1, 1]).eval()
    conv = backbone.body.patch_embed.proj
    assert isinstance(conv, ChannelsLastPatchConv)
    plain = torch.nn.Conv2d(3, 24, 4, stride=4)
    plain.load_state_dict(conv.state_dict())
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, reference = conv(images), plain(images)
        assert fast.dtype == torch.bfloat16
        assert fast.is_contiguous(memory_format=torch.channels_last)
        assert not reference.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(fast.float(), reference.float(), atol=1e-2, rtol=1e-2)
        assert conv(images).is_contiguous()  # float32: NCHW as before
