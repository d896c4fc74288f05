"""Prepacked linear layers: the same numbers as `F.linear`, fresh after every weight change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oneseg.model import packed
from oneseg.model.build import build_model
from oneseg.model.packed import PackedLinear, packed_linear

needs_onednn = pytest.mark.skipif(not packed._AVAILABLE, reason="no oneDNN in this torch build")


@needs_onednn
def test_packed_linear_equals_f_linear_and_follows_weight_changes():
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80)
    layer.__class__ = PackedLinear
    x = torch.randn(2, 37, 48)
    with torch.no_grad():
        out = layer(x)
        assert ("weight", torch.float32) in layer._packed_weights  # the packed path ran
        assert (out - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5
        layer.weight.mul_(-2)  # an optimizer step or load_state_dict writes in place
        again = layer(x)
    assert (again - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5
    assert (again - out).abs().max() > 1.0


@needs_onednn
def test_gradients_take_f_linear():
    layer = torch.nn.Linear(8, 4)
    layer.__class__ = PackedLinear
    out = layer(torch.randn(3, 8))
    out.sum().backward()
    assert layer.weight.grad is not None and "_packed_weights" not in layer.__dict__


def test_no_bias_and_other_dtypes_fall_back():
    weight = torch.randn(5, 6, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    owner = torch.nn.Module()
    with torch.no_grad():
        assert torch.equal(packed_linear(x, weight, None, owner, "w"), F.linear(x, weight))
    assert "_packed_weights" not in owner.__dict__


def test_model_linears_are_packed_and_keep_their_names(tiny_model_cfg):
    model = build_model(tiny_model_cfg, num_classes=3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, PackedLinear) for m in linears)
    fresh = build_model(tiny_model_cfg, num_classes=3)
    fresh.load_state_dict(model.state_dict())  # same keys, same shapes


@needs_onednn
def test_fused_relu_equals_relu_of_the_linear():
    from oneseg.model.packed import linear_relu

    torch.manual_seed(1)
    layer = torch.nn.Linear(16, 24)
    x = torch.randn(5, 7, 16)
    expected = torch.relu(F.linear(x, layer.weight, layer.bias))
    assert torch.equal(linear_relu(layer, x), expected)  # grad mode: the unpacked path
    with torch.inference_mode():
        fused = linear_relu(layer, x)
    assert ("weight", torch.float32) in layer._packed_weights
    assert (fused - expected).abs().max() < 1e-5 and (fused == 0).any()


@needs_onednn
def test_timm_mlp_gelu_fused_gives_the_same_numbers():
    from timm.layers import Mlp

    from oneseg.model.packed import PackedLinearGELU, use_packed_linears

    torch.manual_seed(2)
    mlp = Mlp(12, 40).eval()
    x = torch.randn(3, 9, 12)
    with torch.no_grad():
        expected = mlp(x)
    use_packed_linears(mlp)
    assert isinstance(mlp.fc1, PackedLinearGELU) and isinstance(mlp.act, torch.nn.Identity)
    assert torch.allclose(mlp(x), expected, atol=1e-6)  # grad mode: F.linear + F.gelu
    with torch.inference_mode():
        fused = mlp(x)
    assert (fused - expected).abs().max() < 1e-5
    use_packed_linears(mlp)  # again: nothing changes
    assert isinstance(mlp.fc1, PackedLinearGELU)


def test_a_layer_built_under_inference_mode_runs():
    with torch.inference_mode():
        layer = torch.nn.Linear(4, 3)
        layer.__class__ = PackedLinear
        x = torch.randn(2, 4)
        assert (layer(x) - F.linear(x, layer.weight, layer.bias)).abs().max() < 1e-5
    assert "_packed_weights" not in layer.__dict__  # F.linear: no version counter to trust


@needs_onednn
@pytest.mark.skipif(not packed._BF16, reason="no oneDNN bf16 on this CPU")
def test_bf16_bias_cast_once_and_after_every_bias_change():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16)
    layer.__class__ = PackedLinear
    x = torch.randn(5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        cast = layer._packed_weights[("weight", torch.bfloat16)][2]
        assert cast.dtype == torch.bfloat16 and layer(x) is not out
        assert layer._packed_weights[("weight", torch.bfloat16)][2] is cast  # kept
        layer.bias.add_(10.0)  # the bias alone changes, in place
        moved = layer(x)
    assert (moved.float() - out.float() - 10).abs().max() < 0.1
