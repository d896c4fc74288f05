"""Constants of an input size kept at inference: made once, fresh after every weight change,
never kept where a gradient is wanted, in the forward's compute dtype."""

from __future__ import annotations

import torch
from torch import nn

from oneseg.model.constants import compute_dtype, constant


def counted_double(owner: nn.Linear):
    """A maker of 2 * owner.weight, and the list its calls append to."""
    calls = []

    def make():
        calls.append(1)
        return owner.weight * 2

    return make, calls


def test_constant_is_kept_and_follows_weight_changes():
    owner = nn.Linear(4, 4)
    make, calls = counted_double(owner)
    with torch.no_grad():
        first = constant(owner, "double", (4,), (owner.weight,), make)
        assert constant(owner, "double", (4,), (owner.weight,), make) is first
        owner.weight.mul_(-1)  # an optimizer step or load_state_dict writes in place
        again = constant(owner, "double", (4,), (owner.weight,), make)
        constant(owner, "double", (5,), (owner.weight,), make)  # another size
    assert len(calls) == 3
    assert torch.equal(again, owner.weight.detach() * 2)


def test_no_constant_kept_where_a_gradient_is_wanted():
    owner = nn.Linear(4, 4)
    out = constant(owner, "double", None, (owner.weight,), lambda: owner.weight * 2)
    assert out.requires_grad and "_constants" not in owner.__dict__


def test_constant_in_the_compute_dtype():
    owner = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dtype = compute_dtype(x)
        kept = constant(owner, "w", None, (owner.weight,), lambda: owner.weight, dtype)
    assert dtype == torch.bfloat16 and kept.dtype == torch.bfloat16
    assert compute_dtype(x) == torch.float32  # autocast off: the input's own


def test_each_dtype_keeps_its_own_constant():
    """Alternating precisions (an evaluation in fp32 then bf16) remakes nothing: one entry
    per name and dtype."""
    owner = nn.Linear(4, 4)
    make, calls = counted_double(owner)
    with torch.no_grad():
        for _ in range(3):
            full = constant(owner, "double", (4,), (owner.weight,), make, torch.float32)
            half = constant(owner, "double", (4,), (owner.weight,), make, torch.bfloat16)
    assert len(calls) == 2
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert torch.equal(half, full.to(torch.bfloat16))
