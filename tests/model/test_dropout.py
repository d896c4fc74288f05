"""oneseg's CPU dropout (`oneseg.model.dropout`) against PyTorch's: the same Bernoulli mask
law, seeded by the same generator, and the attention with dropped probabilities against
`scaled_dot_product_attention` (PyTorch's math)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oneseg.model.dropout import Dropout, dropout, keep_mask
from oneseg.model.layers import dropped_attention


def test_the_mask_keeps_each_element_with_probability_one_minus_p():
    torch.manual_seed(0)
    for p in (0.1, 0.3, 0.5):
        mask = keep_mask(torch.empty(1000, 1000), p)
        assert set(mask.unique().tolist()) == {0.0, torch.tensor(1 / (1 - p)).item()}
        kept = (mask > 0).double().mean().item()
        assert abs(kept - (1 - p)) < 0.002  # 1e6 draws: std 0.0005
        # neighbours are independent (one 64-bit draw feeds four elements)
        flat = (mask > 0).flatten().view(-1, 4).double()
        both = (flat[:, 0] * flat[:, 1]).mean().item()
        assert abs(both - (1 - p) ** 2) < 0.003


def test_the_seed_fixes_the_mask_and_the_gradient_follows_it():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(5)
    first = dropout(x, 0.2, True)
    torch.manual_seed(5)
    second = Dropout(0.2)(x)
    assert torch.equal(first, second)
    first.sum().backward()
    assert torch.equal(x.grad, (first != 0).float() / 0.8)
    assert dropout(x, 0.2, False) is x
    assert torch.equal(Dropout(0.2).eval()(x), x)


def test_bf16_masks_are_exact():
    torch.manual_seed(1)
    x = torch.randn(256, 256, dtype=torch.bfloat16)
    out = dropout(x, 0.5, True)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[out != 0], (x * 2)[out != 0])


def test_dropped_attention_is_sdpa_without_drops_and_unbiased_with_them():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=gen) for n in (10, 30, 30))
    allowed = torch.rand(2, 1, 10, 30, generator=gen) > 0.3
    allowed[..., 0] = True
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    # p below the mask's resolution keeps everything: the same products as PyTorch's
    torch.testing.assert_close(dropped_attention(q, k, v, allowed, False, 1e-9), reference)
    square = torch.randn(2, 4, 30, 16, generator=gen)
    torch.testing.assert_close(
        dropped_attention(square, k, v, None, True, 1e-9),
        F.scaled_dot_product_attention(square, k, v, is_causal=True),
    )
    torch.manual_seed(0)
    mean = torch.stack([dropped_attention(q, k, v, allowed, False, 0.3) for _ in range(3000)])
    assert (mean.mean(0) - reference).abs().max() < 0.05
    assert (dropped_attention(q, k, v, allowed, False, 0.3) - reference).abs().max() > 0.05


def test_dropped_attention_under_bf16_autocast_stays_near_float32():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, n, 16, generator=gen) for n in (10, 64, 64))
    reference = F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dropped_attention(q, k, v, None, False, 1e-9)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.03, rtol=0.03)
