"""ImageNet backbone files as `train.pretrained_backbone`: official Swin / ConvNeXt names renamed
as timm's own filters rename them, DiNAT classifiers, one error for what does not fit."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.models import convnext as timm_convnext
from timm.models import swin_transformer as timm_swin

from oneseg.convert.backbone_weights import load_pretrained_backbone, official_to_timm
from oneseg.model.backbone import build_backbone
from oneseg.model.dinat import DiNAT

SWIN = dict(embed_dim=24, depths=(1, 2, 1, 1))
CONVNEXT = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1))


def official_swin(classifier) -> dict:
    """microsoft/Swin-Transformer names: patch merging at the end of a stage, buffers, `head.`"""
    state = {}
    for key, value in classifier.state_dict().items():
        key = re.sub(
            r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key
        )
        state[key.replace("head.fc.", "head.")] = value.clone()
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49).long()
    state["layers.1.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    return state


def official_convnext(classifier) -> dict:
    """facebookresearch/ConvNeXt names."""
    state = {}
    for key, value in classifier.state_dict().items():
        key = key.replace("stem.", "downsample_layers.0.").replace("head.norm.", "norm.")
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = (
            key.replace("conv_dw", "dwconv")
            .replace("mlp.fc", "pwconv")
            .replace("head.fc.", "head.")
        )
        state[key] = value.clone()
    return state


@pytest.mark.parametrize("family", ["swin", "convnext"])
def test_official_names_renamed_as_timm_renames_them(family):
    torch.manual_seed(0)
    if family == "swin":
        classifier = timm.create_model("swin_tiny_patch4_window7_224", **SWIN)
        official, timm_filter = official_swin(classifier), timm_swin.checkpoint_filter_fn
    else:
        classifier = timm.create_model("convnext_tiny", **CONVNEXT)
        official, timm_filter = official_convnext(classifier), timm_convnext.checkpoint_filter_fn
    ours, theirs = official_to_timm(official), timm_filter(dict(official), classifier)
    # timm renames the classifier head and final norm too; a backbone drops them
    theirs = {k: v for k, v in theirs.items() if not k.startswith(("head", "norm."))}
    ours = {k: v for k, v in ours.items() if not k.startswith(("head", "norm."))}
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k].reshape(ours[k].shape)) for k in ours)


@pytest.mark.parametrize("family", ["swin", "convnext"])
def test_official_file_loads_and_equals_timm_classifier_weights(tmp_path, family):
    torch.manual_seed(0)
    if family == "swin":
        classifier = timm.create_model("swin_tiny_patch4_window7_224", **SWIN)
        official, name = official_swin(classifier), "swin_tiny"
        overrides = dict(embed_dim=24, depths=[1, 2, 1, 1])
    else:
        classifier = timm.create_model("convnext_tiny", **CONVNEXT)
        official, name = official_convnext(classifier), "convnext_tiny"
        overrides = dict(embed_dim=16, depths=[1, 1, 2, 1])
    torch.save({"model": official}, tmp_path / "official.pth")
    torch.save(classifier.state_dict(), tmp_path / "timm.pth")
    from_official, from_timm = build_backbone(name, **overrides), build_backbone(name, **overrides)
    loaded = load_pretrained_backbone(from_official, tmp_path / "official.pth")
    assert loaded == len(from_official.body.state_dict())
    load_pretrained_backbone(from_timm, tmp_path / "timm.pth")
    for key, value in from_timm.body.state_dict().items():
        assert torch.equal(from_official.body.state_dict()[key], value), key
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        from_official.eval(), from_timm.eval()
        assert all(torch.equal(a, b) for a, b in zip(from_official(images), from_timm(images)))


def test_swin_missing_and_unexpected_in_one_error(tmp_path):
    classifier = timm.create_model("swin_tiny_patch4_window7_224", **SWIN)
    official = official_swin(classifier)
    del official["layers.1.blocks.1.mlp.fc2.bias"]
    official["layers.1.blocks.1.extra.weight"] = torch.zeros(1)
    torch.save({"model": official}, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as err:
        load_pretrained_backbone(build_backbone("swin_tiny", embed_dim=24, depths=[1, 2, 1, 1]),
                                 tmp_path / "broken.pth")  # fmt: skip
    assert "layers_1.blocks.1.mlp.fc2.bias" in str(err.value)
    assert "layers.1.blocks.1.extra.weight" in str(err.value)


def tiny_dinat() -> DiNAT:
    return DiNAT(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0,
                 kernel_size=3, dilations=((2,), (1,), (1,), (1,)))  # fmt: skip


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_dinat_classifier_loads_without_head_and_output_norms(tmp_path, prefix):
    torch.manual_seed(0)
    source = tiny_dinat()
    state = {prefix + k: v for k, v in source.state_dict().items() if not re.match(r"norm\d", k)}
    state.update(
        {prefix + "norm.weight": torch.ones(128), prefix + "head.weight": torch.ones(5, 128)}
    )
    torch.save(state, tmp_path / "dinat.pth")
    target = tiny_dinat()
    norm0 = target.norm0.weight.clone()
    assert load_pretrained_backbone(target, tmp_path / "dinat.pth") == len(state) - 2
    assert torch.equal(target.levels[1].blocks[0].attn.rpb, source.levels[1].blocks[0].attn.rpb)
    assert torch.equal(target.norm0.weight, norm0)
    del state[prefix + "levels.0.blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing \['levels.0.blocks.0.attn.qkv.weight'\]"):
        load_pretrained_backbone(tiny_dinat(), tmp_path / "broken.pth")
