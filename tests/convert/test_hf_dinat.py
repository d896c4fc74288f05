"""A transformers OneFormer folder with a DiNAT backbone (as the published DiNAT-L models are)
loads with its kernel and dilations and gives transformers' outputs.

transformers' DiNAT needs NATTEN's legacy kernels and, in transformers 5, splits heads in the
wrong layout (see tests/model/test_dinat.py): its neighbourhood attention is run here by our
kernel, which tests/model/test_dinat.py checks against a brute-force reference. Everything else
is transformers' code."""

from __future__ import annotations

import pytest
import torch

md = pytest.importorskip("transformers.models.dinat.modeling_dinat")
from transformers import (  # noqa: E402
    DinatConfig,
    OneFormerConfig,
    OneFormerForUniversalSegmentation,
)

from oneseg.checkpoint import load_model  # noqa: E402
from oneseg.model.dinat import neighbourhood_attention  # noqa: E402


def attention_forward(self, hidden_states, output_attentions=False):
    def heads(t):  # [B, H, W, C] -> [B, n, H, W, d]
        return t.unflatten(-1, (self.num_attention_heads, -1)).permute(0, 3, 1, 2, 4)

    query = heads(self.query(hidden_states)) / self.attention_head_size**0.5
    key, value = heads(self.key(hidden_states)), heads(self.value(hidden_states))
    out = neighbourhood_attention(query, key, value, self.rpb, self.kernel_size, self.dilation)
    return (out.permute(0, 2, 3, 1, 4).flatten(-2),)


def test_dinat_folder_loads_with_kernel_and_dilations(tmp_path, monkeypatch):
    monkeypatch.setattr(md, "requires_backends", lambda *args, **kwargs: None)
    monkeypatch.setattr(md.NeighborhoodAttention, "forward", attention_forward)
    backbone = DinatConfig(
        embed_dim=16, depths=[2, 1, 1, 1], num_heads=[1, 2, 2, 4], kernel_size=5,
        dilations=[[1, 3], [2], [1], [1]], mlp_ratio=2.0, drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = OneFormerConfig(
        backbone_config=backbone, is_training=False, dropout=0.0, num_queries=6, hidden_dim=64,
        conv_dim=64, mask_dim=64, num_attention_heads=2, dim_feedforward=48,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=3, query_dec_layers=1,
        text_encoder_width=64, text_encoder_num_layers=1, text_encoder_n_ctx=2, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = OneFormerForUniversalSegmentation(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    hf.eval().save_pretrained(tmp_path / "hf_dinat")
    ours, _, _ = load_model(tmp_path / "hf_dinat")
    blocks = ours.backbone.levels[0].blocks
    assert [b.attn.dilation for b in blocks] == [1, 3] and blocks[0].attn.kernel_size == 5
    pixels = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    task_tokens = torch.randint(0, 400, (1, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, task_inputs=task_tokens)
        out = ours(pixels, task_tokens)
    assert (out["pred_logits"] - ref.class_queries_logits).abs().max().item() < 1e-4
    assert (out["pred_masks"] - ref.masks_queries_logits).abs().max().item() < 1e-4
    assert out["pred_masks"].std() > 0.05
