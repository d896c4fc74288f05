"""Building blocks shared by the decoders: MLP and the three sub-layers of a decoder layer.

All tensors are batch-first, [B, L, D]. Each sub-layer adds its result to its input and applies
LayerNorm after (post-norm, the published setting) or before (pre-norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from oneseg.model.dropout import Dropout, dropout
from oneseg.model.packed import linear_relu, packed_linear
from oneseg.precision import full_precision


def tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, HW, C]: a view when `x` is channels-last (the pixel decoder's maps
    are), one copy otherwise."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def attention(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """`attn`'s multi-head attention through `F.scaled_dot_product_attention`.

    The module only holds the weights (so checkpoints keep their names); the computation stays
    batch-first from projection to output, and a mask shared by the heads is broadcast, not
    repeated per head.

    Arguments:
        query: [B, Q, D]; key, value: [B, K, D].
        attn_mask: bool, True where a query may not look, or float, added to the scores
            (`transformer_decoder.additive_mask`): [B*heads, Q, K] (one per head) or
            [B, Q, K] (the same for every head).
        causal: position i sees positions <= i only (instead of a mask).
    Returns:
        [B, Q, D].
    """
    batch = query.shape[0]
    heads = attn.num_heads
    _, w_k, w_v = attn.in_proj_weight.chunk(3)
    _, b_k, b_v = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None,) * 3
    # [B, L, D] -> [B, heads, L, D/heads]
    k = packed_linear(key, w_k, b_k, attn, "k").view(batch, key.shape[1], heads, -1)
    v = packed_linear(value, w_v, b_v, attn, "v").view(batch, value.shape[1], heads, -1)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    return attend(attn, query, k, v, attn_mask, causal)


def attention_in_float32(x: torch.Tensor) -> bool:
    """Whether attention on bf16 `x` runs in float32: on CPU where a gradient is wanted. CPU's
    bf16 attention backward at these head sizes (32-64) is 1.5-3x slower than its float32 one;
    the operands are small, so their casts cost little. Inference keeps bf16: its forward
    kernels are as fast or faster (`benchmarks/bench_attention.py`)."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and torch.is_grad_enabled()


@dataclass(frozen=True)
class GridValues:
    """Attention values over an H x W grid that are a row term plus a column term,
    v[y * W + x] = rows[y] + cols[x], as a projected sine position encoding is.
    rows [heads, H, Dh], cols [heads, W, Dh] (the same for every image)."""

    rows: torch.Tensor
    cols: torch.Tensor


def grid_attention(q: torch.Tensor, k: torch.Tensor, values: GridValues) -> torch.Tensor:
    """Attention whose values are `GridValues`, without a value product over the HW keys.

    sum_p a_p (rows[y_p] + cols[x_p]) = (sum over x of a) @ rows + (sum over y of a) @ cols:
    the probabilities' row and column sums replace the [Q, HW] x [HW, Dh] product, and the
    values stay in their tables' precision (float32). One image and head at a time, the
    scores are one product in q's dtype and a float32 softmax. On CPU at OneFormer's query
    transformer shape (149 queries, 128 x 128 keys, 8 heads of 32) it took 14 ms against the
    fused kernel's 27 ms in bf16 (25 against 31 in float32), with the same largest error
    against float64 (`benchmarks/bench_attention.py`, 2 Zen 4 cores). The model takes it in
    bf16 only: its bf16 products are oneDNN's, the same on any thread count, where MKL's
    float32 product of the scores is not.

    q: [B, heads, Q, Dh]; k: [B, heads, HW, Dh] -> [B, heads, Q, Dh] in q's dtype."""
    batch, heads, num_queries, head_dim = q.shape
    height, width = values.rows.shape[1], values.cols.shape[1]
    dtype = values.rows.dtype
    out = q.new_empty(q.shape, dtype=dtype)
    scaled = q * head_dim**-0.5
    # one float32 buffer for every head's probabilities: the softmax runs in place in it
    # (a softmax with a dtype argument, or a fresh buffer per head, is ~10% slower here)
    probs = q.new_empty(num_queries, height * width, dtype=dtype)
    grid = probs.view(num_queries, height, width)
    with full_precision(q):  # the products in their operands' dtypes
        for b in range(batch):
            for h in range(heads):
                scores = (scaled[b, h], k[b, h].transpose(0, 1))  # -> [Q, HW]
                if q.dtype == dtype:
                    torch.mm(*scores, out=probs)
                else:
                    probs.copy_(torch.mm(*scores))
                torch._softmax(probs, -1, False, out=probs)
                rows = torch.mm(grid.sum(-1), values.rows[h])
                torch.addmm(rows, grid.sum(-2), values.cols[h], out=out[b, h])
    return out.to(q.dtype)


def attend(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | GridValues,
    attn_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """`attention` with the keys and values already projected: k, v [B, heads, K, D/heads];
    v may be `GridValues` (no mask, no dropout, no gradient: the inference shortcut of
    OneFormer's query transformer)."""
    batch, num_queries, dim = query.shape
    heads = attn.num_heads
    w_q = attn.in_proj_weight[:dim]
    b_q = attn.in_proj_bias[:dim] if attn.in_proj_bias is not None else None
    q = packed_linear(query, w_q, b_q, attn, "q").view(batch, num_queries, heads, -1)
    q = q.transpose(1, 2)
    allowed = None
    if attn_mask is not None:
        per_head = attn_mask.dim() == 3 and attn_mask.shape[0] == batch * heads and heads > 1
        allowed = attn_mask.view(batch, heads if per_head else 1, num_queries, -1)
        if allowed.dtype == torch.bool:
            allowed = ~allowed
        elif allowed.dtype != q.dtype:
            allowed = allowed.to(q.dtype)
    dropout = attn.dropout if attn.training else 0.0
    options = {"attn_mask": allowed, "dropout_p": dropout, "is_causal": causal}
    if isinstance(v, GridValues):
        if allowed is not None or causal or dropout > 0:
            raise ValueError("grid values take no mask and no dropout")
        out = grid_attention(q, k, v)
    elif dropout > 0 and q.device.type == "cpu":
        out = dropped_attention(q, k, v, allowed, causal, dropout)
    elif attention_in_float32(q):
        with full_precision(q):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options)
    else:
        out = F.scaled_dot_product_attention(q, k, v, **options)
    # [B, heads, Q, D/heads] -> [B, Q, D]
    return attn.out_proj(out.transpose(1, 2).reshape(batch, num_queries, dim))


def dropped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    causal: bool,
    p: float,
) -> torch.Tensor:
    """Attention whose probabilities go through `oneseg.model.dropout`: on CPU, where the fused
    kernels have no dropout and `scaled_dot_product_attention` falls back to the same products
    with a Bernoulli mask that costs 3-4x more to draw. The products run in the inputs' dtype
    (bf16 under autocast: forward and backward 1.3-1.5x faster than in float32 here, unlike
    the fused kernels' bf16 backward), the softmax in float32. q: [B, heads, Q, Dh]; k, v:
    [B, heads, K, Dh]; allowed: bool, True where a query may look, or a float mask added to
    the scores, broadcast to [B, heads, Q, K]."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if allowed is not None and allowed.dtype != torch.bool:  # an additive mask
        scores = scores + allowed
        allowed = None
    if causal:
        below = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        allowed = below if allowed is None else allowed & below
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.float().softmax(-1).to(v.dtype)
    return torch.matmul(dropout(probs, p, True), v)


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims_in = [in_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class CrossAttentionLayer(nn.Module):
    """Queries attend to a memory; positions are added to queries and keys, not to values."""

    def __init__(self, dim: int, nheads: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, Q, D]; memory, pos: [B, HW, D]; query_pos: [B, Q, D];
        attn_mask: [B*heads, Q, HW] or [B, Q, HW] bool, True where a query may not look."""
        q = self.norm(x) if self.pre_norm else x
        out = attention(self.attn, with_pos(q, query_pos), with_pos(memory, pos), memory, attn_mask)
        x = x + self.dropout(out)
        return x if self.pre_norm else self.norm(x)

    def forward_projected(self, x, k, v, query_pos=None) -> torch.Tensor:
        """The same with the memory's keys and values already projected:
        k, v [B, heads, HW, D/heads] (v may be `GridValues`)."""
        q = self.norm(x) if self.pre_norm else x
        x = x + self.dropout(attend(self.attn, with_pos(q, query_pos), k, v))
        return x if self.pre_norm else self.norm(x)


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other; positions are added to queries and keys."""

    def __init__(self, dim: int, nheads: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x, query_pos: [B, Q, D] -> [B, Q, D]."""
        h = self.norm(x) if self.pre_norm else x
        qk = with_pos(h, query_pos)
        x = x + self.dropout(attention(self.attn, qk, qk, h))
        return x if self.pre_norm else self.norm(x)


class FFNLayer(nn.Module):
    """Two linear layers with ReLU, residual and LayerNorm."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) if self.pre_norm else x
        h = self.linear2(self.dropout(linear_relu(self.linear1, h)))
        x = x + self.dropout(h)
        return x if self.pre_norm else self.norm(x)


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform on every matrix of `module`, as DETR-style transformers start."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
