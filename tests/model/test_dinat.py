"""DiNAT: neighbourhood attention equals a brute-force reference written from NATTEN's rules;
the backbone equals transformers' DiNAT architecture at identical weights, trains and exports."""

from __future__ import annotations

import pytest
import torch

from oneseg.backbones import DINAT_SIZES, alternating_dilations
from oneseg.model import dinat as dinat_module
from oneseg.model.backbone import build_backbone
from oneseg.model.dinat import DiNAT, NeighbourhoodAttention, neighbourhood_attention

# --------------------------------------------------------------------------- brute force
# NATTEN's per-axis rules, written as its kernels state them (window start and bias start
# of a query at `i` on an axis of `n`), applied query by query.


def window_start(i: int, n: int, k: int, d: int) -> int:
    half = k // 2
    if d <= 1:
        return max(i - half, 0) + (i + half >= n) * (n - i - half - 1)
    if i - half * d < 0:
        return i % d
    if i + half * d >= n:
        imodd, whole = i % d, (n // d) * d
        rest = n - whole
        if imodd < rest:
            return n - rest + imodd - 2 * half * d
        return whole + imodd - k * d
    return i - half * d


def bias_start(i: int, n: int, k: int, d: int) -> int:
    half = k // 2
    if d <= 1:
        return half + (i < half) * (half - i) + (i + half >= n) * (n - i - 1 - half)
    if i - half * d < 0:
        return k - 1 - i // d
    if i + half * d >= n:
        return (n - i - 1) // d
    return half


def brute_scores(query, key, rpb, k, d):
    """[B, heads, H, W, k*k] logits, neighbour (a, c) at a*k + c (NATTEN < 0.20's qk+rpb)."""
    batch, heads, height, width, _ = query.shape
    out = query.new_zeros(batch, heads, height, width, k * k)
    for y in range(height):
        y0, by = window_start(y, height, k, d), bias_start(y, height, k, d)
        for x in range(width):
            x0, bx = window_start(x, width, k, d), bias_start(x, width, k, d)
            for a in range(k):
                for c in range(k):
                    neighbour = key[:, :, y0 + a * d, x0 + c * d]  # [B, heads, d]
                    logit = (query[:, :, y, x] * neighbour).sum(-1)
                    if rpb is not None:
                        logit = logit + rpb[:, by + a, bx + c]
                    out[:, :, y, x, a * k + c] = logit
    return out


def brute_av(attn, value, k, d):
    batch, heads, height, width, _ = attn.shape
    out = value.new_zeros(value.shape)
    for y in range(height):
        y0 = window_start(y, height, k, d)
        for x in range(width):
            x0 = window_start(x, width, k, d)
            for a in range(k):
                for c in range(k):
                    weight = attn[:, :, y, x, a * k + c, None]
                    out[:, :, y, x] += weight * value[:, :, y0 + a * d, x0 + c * d]
    return out


def brute_attention(query, key, value, rpb, k, d):
    return brute_av(brute_scores(query, key, rpb, k, d).softmax(-1), value, k, d)


# (H, W, kernel, dilation): borders on both sides, H = k*d exactly, non-square, dilation not
# dividing the size, dilation 1
CASES = [(9, 11, 3, 3), (7, 9, 3, 1), (10, 13, 5, 2), (13, 8, 3, 2), (14, 14, 7, 2)]


@pytest.mark.parametrize("height,width,kernel,dilation", CASES)
def test_attention_equals_brute_force_with_bias(height, width, kernel, dilation):
    gen = torch.Generator().manual_seed(height * width + kernel)
    query, key, value = (
        torch.randn(2, 2, height, width, 4, generator=gen, dtype=torch.float64) for _ in range(3)
    )
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1, generator=gen, dtype=torch.float64)
    ours = neighbourhood_attention(query, key, value, rpb, kernel, dilation)
    reference = brute_attention(query, key, value, rpb, kernel, dilation)
    assert (ours - reference).abs().max().item() < 1e-5
    # the bias matters: without it the result differs
    plain = neighbourhood_attention(query, key, value, None, kernel, dilation)
    assert (plain - reference).abs().max().item() > 1e-3


def test_attention_equals_natten_na2d_where_installed():
    """NATTEN >= 0.20 has no relative position bias: compare the unbiased attention."""
    natten = pytest.importorskip("natten")
    if not hasattr(natten, "na2d"):
        pytest.skip("this NATTEN has no na2d")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 15, 2, 8, generator=gen) for _ in range(3))  # [B, H, W, n, d]
    theirs = natten.na2d(q, k, v, kernel_size=3, dilation=3)  # scales by d**-0.5 itself
    q, k, v = (t.permute(0, 3, 1, 2, 4) for t in (q, k, v))  # [B, H, W, n, d] -> [B, n, H, W, d]
    ours = neighbourhood_attention(q * 8**-0.5, k, v, None, 3, 3)
    assert (ours.permute(0, 2, 3, 1, 4) - theirs).abs().max().item() < 1e-5


def test_module_pads_small_maps_and_uses_natten_kernels_when_present(monkeypatch):
    torch.manual_seed(0)
    attn = NeighbourhoodAttention(8, num_heads=2, kernel_size=3, dilation=3).double()
    x = torch.randn(1, 5, 11, 8, dtype=torch.float64)  # 5 < 3*3 rows: padded to 9, cropped back
    plain = attn(x)
    assert plain.shape == x.shape
    legacy_calls = []

    def legacy():
        legacy_calls.append(1)
        return brute_scores, brute_av

    monkeypatch.setattr(dinat_module, "_natten_legacy", legacy)
    assert (attn(x) - plain).abs().max().item() < 1e-10 and legacy_calls


# --------------------------------------------------------------------------- transformers


def tiny_dinat(layer_scale=None) -> DiNAT:
    # stage 2 (8x12 at 64x96) has dilation 3 with kernel 3: padded to 9 rows
    return DiNAT(
        embed_dim=16,
        depths=(1, 2, 1, 1),
        num_heads=(1, 2, 2, 4),
        mlp_ratio=2.0,
        kernel_size=3,
        dilations=((2,), (1, 3), (2,), (1,)),
        layer_scale=layer_scale,
    )


def transformers_dinat(layer_scale: float):
    """transformers' DinatBackbone with its NATTEN calls served by the brute force above.

    transformers 5.x splits heads with `.transpose(1, 2)` ([B, W, H, heads, d] where NATTEN
    takes [B, heads, H, W, d]) and then fails to merge them, so its attention forward is
    replaced by the original layout; everything else is transformers' code."""
    md = pytest.importorskip("transformers.models.dinat.modeling_dinat")
    from transformers import DinatConfig

    def attention_forward(self, hidden_states, output_attentions=False):
        def heads(t):  # [B, H, W, C] -> [B, n, H, W, d]
            return t.unflatten(-1, (self.num_attention_heads, -1)).permute(0, 3, 1, 2, 4)

        query = heads(self.query(hidden_states)) / self.attention_head_size**0.5
        key, value = heads(self.key(hidden_states)), heads(self.value(hidden_states))
        probs = brute_scores(query, key, self.rpb, self.kernel_size, self.dilation).softmax(-1)
        context = brute_av(probs, value, self.kernel_size, self.dilation)
        return (context.permute(0, 2, 3, 1, 4).flatten(-2),)

    config = DinatConfig(
        embed_dim=16,
        depths=[1, 2, 1, 1],
        num_heads=[1, 2, 2, 4],
        kernel_size=3,
        dilations=[[2], [1, 3], [2], [1]],
        mlp_ratio=2.0,
        layer_scale_init_value=layer_scale,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(md, "requires_backends", lambda *args, **kwargs: None)
        model = md.DinatBackbone(config)
    model.encoder.levels.apply(
        lambda m: (
            setattr(m, "forward", attention_forward.__get__(m))
            if type(m).__name__ == "NeighborhoodAttention"
            else None
        )
    )
    return model.eval()


def from_transformers(state: dict) -> dict:
    """Our state dict from a transformers DinatBackbone's."""
    ours = {}
    for key, value in state.items():
        key = key.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.")
        key = key.replace("embeddings.norm.", "patch_embed.norm.")
        key = key.replace("encoder.levels", "levels")
        key = key.replace(".layers.", ".blocks.").replace("layernorm_before", "norm1")
        key = key.replace("layernorm_after", "norm2").replace("attention.self.rpb", "attn.rpb")
        key = key.replace("attention.output.dense", "attn.proj")
        key = key.replace("intermediate.dense", "mlp.fc1").replace("output.dense", "mlp.fc2")
        if key.startswith("hidden_states_norms.stage"):
            key = f"norm{int(key.split('stage')[1][0]) - 1}.{key.rsplit('.', 1)[1]}"
        if key.endswith("layer_scale_parameters"):
            ours[key.replace("layer_scale_parameters", "gamma1")] = value[0]
            ours[key.replace("layer_scale_parameters", "gamma2")] = value[1]
        elif ".attention.self.query." in key:
            parts = [state_key(state, key, p) for p in ("query", "key", "value")]
            ours[key.replace("attention.self.query", "attn.qkv")] = torch.cat(parts)
        elif ".attention.self." not in key:
            ours[key] = value
    return ours


def state_key(state: dict, our_key: str, part: str) -> torch.Tensor:
    their = our_key.replace("levels", "encoder.levels").replace(".blocks.", ".layers.")
    return state[their.replace("attention.self.query", f"attention.self.{part}")]


@pytest.mark.parametrize("layer_scale", [0.0, 0.5])
def test_equals_transformers_dinat_at_identical_weights(layer_scale):
    torch.manual_seed(0)
    theirs = transformers_dinat(layer_scale)
    with torch.no_grad():
        for param in theirs.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    ours = tiny_dinat(layer_scale if layer_scale > 0 else None).eval()
    ours.load_state_dict(from_transformers(theirs.state_dict()))
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = theirs(images).feature_maps
        got = ours(images)
    assert [tuple(m.shape) for m in got] == [tuple(m.shape) for m in expected]
    for a, b in zip(got, expected):
        assert (a - b).abs().max().item() < 1e-5


# --------------------------------------------------------------------------- training, export


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = tiny_dinat(layer_scale=0.5)
    maps = model(torch.randn(2, 3, 64, 64))
    assert [m.shape[1:] for m in maps] == [
        (c, 64 // s, 64 // s) for c, s in zip(model.channels, model.strides)
    ]
    sum((m**2).mean() for m in maps).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_named_sizes_and_registry():
    assert alternating_dilations((3, 4, 2, 1)) == ((1, 8, 1), (1, 4, 1, 4), (1, 2), (1,))
    large = DINAT_SIZES["dinat_large"]
    assert (large.embed_dim, large.depths, large.num_heads, large.window) == (
        192, (3, 4, 18, 5), (6, 12, 24, 48), 7,
    )  # fmt: skip
    with torch.device("meta"):
        backbone = build_backbone("dinat_large", window_size=11)
    assert backbone.channels == [192, 384, 768, 1536]
    assert backbone.levels[0].blocks[1].attn.rpb.shape == (6, 21, 21)
    with pytest.raises(ValueError, match="do not match depths"):
        build_backbone("dinat_tiny", depths=[1, 1, 1, 1], dilations=[[1], [1], [1], [1, 2]])


def test_onnx_export_matches_pytorch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = tiny_dinat().eval()
    images = torch.randn(1, 3, 64, 96)
    path = tmp_path / "dinat.onnx"
    torch.onnx.export(model, (images,), str(path), input_names=["images"], dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    for got, want in zip(outputs, expected):
        assert abs(torch.from_numpy(got) - want).max().item() < 1e-4
