"""Building blocks shared by the decoders: MLP and the three sub-layers of a decoder layer.

All tensors are batch-first, [B, L, D]. Each sub-layer adds its result to its input and applies
LayerNorm after (post-norm, the published setting) or before (pre-norm).
"""

from __future__ import annotations

import torch
from torch import nn


def with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


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
        self.dropout = nn.Dropout(dropout)
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
        attn_mask: [B*heads, Q, HW] bool, True where a query may not look."""
        q = self.norm(x) if self.pre_norm else x
        out = self.attn(
            with_pos(q, query_pos),
            with_pos(memory, pos),
            memory,
            attn_mask=attn_mask,
            need_weights=False,
        )[0]
        x = x + self.dropout(out)
        return x if self.pre_norm else self.norm(x)


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other; positions are added to queries and keys."""

    def __init__(self, dim: int, nheads: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x, query_pos: [B, Q, D] -> [B, Q, D]."""
        h = self.norm(x) if self.pre_norm else x
        qk = with_pos(h, query_pos)
        x = x + self.dropout(self.attn(qk, qk, h, need_weights=False)[0])
        return x if self.pre_norm else self.norm(x)


class FFNLayer(nn.Module):
    """Two linear layers with ReLU, residual and LayerNorm."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) if self.pre_norm else x
        h = self.linear2(self.dropout(torch.relu(self.linear1(h))))
        x = x + self.dropout(h)
        return x if self.pre_norm else self.norm(x)


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform on every matrix of `module`, as DETR-style transformers start."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
