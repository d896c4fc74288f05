"""The training-only text branch of OneFormer.

A CLIP-style causal text transformer encodes each entry of the text list; the feature at the
end-of-text token (the largest id in a CLIP sequence) is projected to the query width, and
`n_ctx` learned context embeddings are appended. The contrastive loss compares the result with
the task-conditioned queries.
"""

from __future__ import annotations

import torch
from torch import nn

from oneseg.model.layers import MLP, attention


class QuickGELU(nn.Module):
    """CLIP's GELU approximation, x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextBlock(nn.Module):
    """Pre-norm causal self-attention and MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, width * 4), QuickGELU(), nn.Linear(width * 4, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + attention(self.attn, h, h, h, causal=True)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids [N, L] -> one feature per sequence [N, width], read at the end-of-text token."""

    def __init__(self, *, context_length: int, width: int, layers: int, vocab_size: int):
        super().__init__()
        heads = max(1, width // 64)  # CLIP's head width of 64
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(TextBlock(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.reset_parameters(width, layers)

    def reset_parameters(self, width: int, layers: int) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp[0].weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)

    def token_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position features after the final LayerNorm, [N, L, width]."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)  # causal: position i sees positions <= i only
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [N, L] -> [N, width].

        Only what the end-of-text features depend on is computed: attention is causal, so the
        positions after the last end-of-text token are cut, and each distinct sequence is
        encoded once (a text list repeats its filler text many times)."""
        length = int(tokens.argmax(dim=-1).max()) + 1
        # [N, length] -> [U, length] distinct rows, and the row of each sequence
        distinct, inverse = torch.unique(tokens[:, :length], dim=0, return_inverse=True)
        x = self.token_features(distinct)
        eot = distinct.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot][inverse]


class TextQueries(nn.Module):
    """Text lists [B, T, L] -> text queries [B, T + n_ctx, dim] for the contrastive loss."""

    def __init__(
        self,
        *,
        context_length: int,
        width: int,
        layers: int,
        vocab_size: int,
        proj_layers: int,
        n_ctx: int,
        dim: int,
    ):
        super().__init__()
        self.encoder = TextEncoder(
            context_length=context_length, width=width, layers=layers, vocab_size=vocab_size
        )
        self.projector = MLP(width, dim, dim, proj_layers)
        self.prompt_ctx = nn.Embedding(n_ctx, dim) if n_ctx > 0 else None

    def forward(self, text_tokens: torch.Tensor) -> torch.Tensor:
        batch, num_texts, length = text_tokens.shape
        # [B, T, L] -> [B*T, L] -> [B*T, dim] -> [B, T, dim]
        texts = self.projector(self.encoder(text_tokens.reshape(batch * num_texts, length)))
        texts = texts.view(batch, num_texts, -1)
        if self.prompt_ctx is not None:
            ctx = self.prompt_ctx.weight.unsqueeze(0).expand(batch, -1, -1)
            texts = torch.cat([texts, ctx], dim=1)
        return texts
