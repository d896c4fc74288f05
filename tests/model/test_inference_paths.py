"""The inference shortcuts give the outputs of the full computation."""

from __future__ import annotations

import torch

from oneseg.model.build import build_model
from oneseg.tokenizer import task_text, tokenize


def test_without_aux_outputs_the_last_prediction_is_the_same(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():  # random enough that masks are neither empty nor full
            p.add_(torch.randn_like(p) * 0.05)
    images = torch.randn(2, 3, 64, 96)
    tokens = tokenize([task_text("panoptic")] * 2)
    with torch.no_grad():
        full = model(images, tokens)
    with torch.inference_mode():
        fast = model(images, tokens, aux=False)
    assert fast["aux_outputs"] == [] and len(full["aux_outputs"]) == tiny_model_cfg.dec_layers
    for key in ("pred_logits", "pred_masks"):
        assert fast[key].shape == full[key].shape
        assert (fast[key] - full[key]).abs().max() < 1e-5
    assert full["pred_masks"].std() > 0.01


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


def test_compiled_pixel_decoder_agrees_with_eager(tiny_model_cfg):
    import shutil

    import pytest

    from oneseg.model.compiled import compile_pixel_decoder

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=3).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        maps = model.backbone(images)
        eager_masks, eager_maps = model.pixel_decoder(maps)
        keys = set(model.state_dict())
        compile_pixel_decoder(model)
        masks, multi_scale = model.pixel_decoder(maps)
    assert set(model.state_dict()) == keys  # checkpoints keep their names
    assert (masks - eager_masks).abs().max() < 1e-4
    for a, b in zip(multi_scale, eager_maps):
        assert (a - b).abs().max() < 1e-4


def test_query_memory_shortcut_equals_the_modules(tiny_model_cfg):
    """The inference path of the task-conditioned queries (keys and values of the sine memory
    from row and column tables, W_k W_proj as one product) against the modules' own path."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=3).eval()
    with torch.no_grad():
        for p in model.decoder.query_init.parameters():  # non-zero biases everywhere
            p.add_(torch.randn_like(p) * 0.1)
    query_init = model.decoder.query_init
    embed = model.decoder.query_embed.weight
    for batch in (1, 2):  # one image takes the single-product branch
        features = torch.randn(batch, tiny_model_cfg.pixel_decoder.mask_dim, 12, 20)
        token = torch.randn(batch, tiny_model_cfg.hidden_dim)
        modules = query_init(features, embed, token)  # grad enabled: the modules
        assert modules.requires_grad
        with torch.no_grad():
            shortcut = query_init(features, embed, token)
        assert (shortcut - modules.detach()).abs().max() < 1e-5
        assert modules.std() > 0.1


def test_bf16_pixel_decoder_does_not_depend_on_the_maps_layout(tiny_model_cfg):
    """The FPN resizes in the layout of the map it adds to; channels-last and NCHW backbone maps
    give the same bf16 mask features, at one image and at two."""
    from oneseg.model.pixel_decoder import memory_format
    from oneseg.precision import autocast

    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=3).eval()
    for batch in (1, 2):
        with torch.inference_mode():
            maps = model.backbone(torch.randn(batch, 3, 64, 64))
            nchw = [m.contiguous() for m in maps]
            channels_last = [m.contiguous(memory_format=torch.channels_last) for m in maps]
            assert memory_format(channels_last[0]) == torch.channels_last
            assert memory_format(nchw[0]) == torch.contiguous_format
            with autocast("bf16", "cpu"):
                masks, _ = model.pixel_decoder(nchw)
                masks_cl, _ = model.pixel_decoder(channels_last)
        assert masks.dtype == torch.bfloat16
        assert (masks.float() - masks_cl.float()).abs().max() < 1e-2


def test_grid_values_attention_equals_dense_attention():
    """`grid_attention` (row and column sums of the probabilities against the values' row and
    column tables) against PyTorch's `scaled_dot_product_attention` on the dense values, in
    float32 and under CPU bf16 autocast (the reference in float64)."""
    import torch.nn.functional as F

    from oneseg.model.layers import GridValues, grid_attention

    torch.manual_seed(0)
    batch, heads, queries, dim, height, width = 2, 4, 7, 8, 5, 6
    rows, cols = torch.randn(heads, height, dim), torch.randn(heads, width, dim)
    dense = (rows[:, :, None] + cols[:, None]).flatten(1, 2)  # [heads, HW, Dh]
    q = torch.randn(batch, heads, queries, dim) * 2
    k = torch.randn(batch, height * width, heads, dim).transpose(1, 2)  # a strided view
    ref = F.scaled_dot_product_attention(q.double(), k.double(), dense.double()[None])
    out = grid_attention(q, k, GridValues(rows, cols))
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = grid_attention(q.bfloat16(), k.bfloat16(), GridValues(rows, cols))
    assert half.dtype == torch.bfloat16
    assert 1e-4 < (half.double() - ref).abs().max() < 0.05  # bf16 scores, float32 values
    assert ref.std() > 0.3  # the probabilities are far from uniform


def test_forward_is_the_same_on_one_and_two_threads(tiny_model_cfg):
    """Processes of a multi-process run have fewer threads than one process alone: the
    inference forward gives the same numbers on 1 and 2 threads, in float32 and in bf16 (where
    the query transformer takes `grid_attention`)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    images = torch.randn(1, 3, 64, 64)
    tokens = tokenize([task_text("panoptic")])
    before = torch.get_num_threads()
    try:
        for dtype in (torch.float32, torch.bfloat16):
            outputs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                with (
                    torch.inference_mode(),
                    torch.autocast("cpu", torch.bfloat16, dtype != torch.float32),
                ):
                    outputs.append(model(images, tokens, aux=False))
            for key in ("pred_logits", "pred_masks"):
                assert torch.equal(outputs[0][key], outputs[1][key]), (dtype, key)
    finally:
        torch.set_num_threads(before)
