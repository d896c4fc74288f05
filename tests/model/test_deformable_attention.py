"""The two samplers of deformable attention agree, inside and outside the maps."""

from __future__ import annotations

import torch

from oneseg.model.deformable_attention import (
    MultiScaleDeformableAttention,
    gather_sample,
    grid_sample_sample,
)

SHAPES = [(3, 5), (6, 4), (7, 9)]  # (H, W), not square, not powers of two


def test_gather_equals_grid_sample_with_points_outside():
    gen = torch.Generator().manual_seed(0)
    batch, heads, head_dim, queries, points = 2, 3, 4, 11, 2
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, head_dim, generator=gen)
    # locations reach 30% beyond every border, so some corners and whole points fall outside
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=gen)
    locations = locations * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=gen)
    sizes = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float32)
    pixels = locations * sizes[:, None, :] - 0.5
    ours = gather_sample(value, SHAPES, pixels, weights)
    ref = grid_sample_sample(value, SHAPES, locations, weights)
    assert ours.shape == (batch, queries, heads * head_dim)
    assert (ours - ref).abs().max() < 1e-5
    assert ref.abs().max() > 0.5  # not trivially zero


def test_module_inference_path_equals_training_path():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=12, n_heads=3, n_levels=3, n_points=2)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, tokens, 12)
    query = torch.randn(2, tokens, 12)
    ref_points = torch.rand(2, tokens, 1, 2).expand(-1, -1, 3, -1)
    trained = attn(query, ref_points, value, SHAPES)  # parameters need grad: grid_sample
    trained.sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    with torch.inference_mode():
        inferred = attn(query, ref_points, value, SHAPES)  # gather
    assert (inferred - trained.detach()).abs().max() < 1e-5


def test_nan_points_give_nan_not_an_index_error():
    value = torch.randn(1, sum(h * w for h, w in SHAPES), 2, 4)
    pixels = torch.full((1, 3, 2, len(SHAPES), 2, 2), float("nan"))
    weights = torch.rand(1, 3, 2, len(SHAPES), 2)
    assert gather_sample(value, SHAPES, pixels, weights).isnan().all()
