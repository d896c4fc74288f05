"""Tiny random transformers OneFormer (Swin, DiNAT) and Mask2Former models, saved as the
folders the Hugging Face Hub serves (config.json, preprocessor_config.json, model.safetensors).

Shared by the converter and hub tests; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    DinatConfig,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    OneFormerConfig,
    OneFormerForUniversalSegmentation,
    SwinConfig,
)

STAGES = ["stage1", "stage2", "stage3", "stage4"]
LABELS = {0: "wall", 1: "person", 2: "car"}
PROCESSOR = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter made random: transformers starts some at zero (offsets, level embeds)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1)
            p.add_(noise / max(1.0, p.shape[-1] ** 0.5) if p.dim() > 1 else noise)
    return model.eval()


def swin_config(**extra) -> SwinConfig:
    return SwinConfig(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2,
        out_features=STAGES, drop_path_rate=0.0, **extra,
    )  # fmt: skip


def dinat_config() -> DinatConfig:
    return DinatConfig(
        embed_dim=16, depths=[2, 1, 1, 1], num_heads=[1, 2, 2, 4], kernel_size=5,
        dilations=[[1, 3], [2], [1], [1]], mlp_ratio=2.0, drop_path_rate=0.0,
        out_features=STAGES,
    )  # fmt: skip


def tiny_oneformer(backbone: str = "swin", seed: int = 0) -> OneFormerForUniversalSegmentation:
    """OneFormer with 3 labels, hidden width 32 (the DiNAT one: as the published DiNAT-L layout,
    dilated neighbourhood attention; running it needs NATTEN, building it does not)."""
    bb = swin_config() if backbone == "swin" else dinat_config()
    config = OneFormerConfig(
        backbone_config=bb, is_training=False, dropout=0.0, num_queries=6, hidden_dim=32,
        conv_dim=32, mask_dim=32, num_attention_heads=2, dim_feedforward=48,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=3, query_dec_layers=1,
        text_encoder_width=32, text_encoder_num_layers=1, text_encoder_n_ctx=2,
        id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    torch.manual_seed(seed)
    if backbone == "swin":
        return perturbed(OneFormerForUniversalSegmentation(config), seed)
    import transformers.models.dinat.modeling_dinat as md

    check, md.requires_backends = md.requires_backends, lambda *args, **kwargs: None
    try:  # building needs no NATTEN, only running does
        return perturbed(OneFormerForUniversalSegmentation(config), seed)
    finally:
        md.requires_backends = check


def tiny_mask2former(seed: int = 0, hidden_dim: int = 32) -> Mask2FormerForUniversalSegmentation:
    """Mask2Former with 3 labels; hidden_dim != 32 gives the decoder input projections."""
    config = Mask2FormerConfig(
        backbone_config=swin_config(), feature_size=32, mask_feature_size=32,
        hidden_dim=hidden_dim, num_queries=5, num_attention_heads=4, dim_feedforward=48,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=4, dropout=0.0,
        id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    torch.manual_seed(seed)
    return perturbed(Mask2FormerForUniversalSegmentation(config), seed)


def save_folder(model: torch.nn.Module, folder: Path) -> Path:
    """The model as a hub repository's files: config, processor config, safetensors weights."""
    model.save_pretrained(folder)
    processor = {**PROCESSOR, "size_divisor": 32}
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(processor))
    return Path(folder)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
