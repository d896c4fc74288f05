"""The shortcuts give the outputs of the full computation."""

from __future__ import annotations

import torch

from oneseg.model.build import build_model
from oneseg.tokenizer import tokenize


def test_text_encoder_cut_and_deduplicated_equals_full_length(tiny_model_cfg):
    from oneseg.tokenizer import text_list

    torch.manual_seed(0)
    encoder = build_model(tiny_model_cfg, num_classes=3).text_queries.encoder
    tokens = torch.cat(
        [tokenize(text_list(names, "panoptic", 6)) for names in (["cat"], ["dog", "cat"])]
    )  # 12 sequences, 4 distinct, padded to 77
    fast = encoder(tokens)
    full = encoder.token_features(tokens)[torch.arange(12), tokens.argmax(-1)]
    assert fast.shape == (12, encoder.ln_final.normalized_shape[0])
    assert (fast - full).abs().max() < 1e-5
    fast.sum().backward()  # gradients reach the shared rows
    assert encoder.token_embedding.weight.grad.abs().sum() > 0
