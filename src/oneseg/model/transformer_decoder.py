"""The masked-attention transformer decoder of Mask2Former and OneFormer.

Queries attend, layer by layer, to one of three pixel-decoder scales (coarse to fine, rotating),
each time only inside the mask the previous prediction drew for them. A prediction (class logits
and mask logits) is made before the first layer and after every layer.

How the queries before the first layer are made is a part passed in (`query_init`):
`TaskConditionedQueries` (OneFormer: N-1 learned queries refined by a small query transformer
whose target is the normalised task token, and the task token itself appended as the N-th
query) or `LearnedQueries` (Mask2Former: N learned query features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oneseg.model.constants import compute_dtype, constant
from oneseg.model.layers import (
    MLP,
    CrossAttentionLayer,
    FFNLayer,
    GridValues,
    SelfAttentionLayer,
    tokens,
    xavier_init_,
)
from oneseg.model.packed import is_exporting
from oneseg.model.position_encoding import SinePositionEncoding
from oneseg.precision import full_precision

NUM_SCALES = 3


class DecoderLayer(nn.Module):
    """Cross-attention, then self-attention, then feed-forward."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.cross_attn = CrossAttentionLayer(dim, nheads, dropout, pre_norm)
        self.self_attn = SelfAttentionLayer(dim, nheads, dropout, pre_norm)
        self.ffn = FFNLayer(dim, ffn_dim, dropout, pre_norm)

    def forward(self, x, memory, attn_mask, pos, query_pos):
        x = self.cross_attn(x, memory, attn_mask=attn_mask, pos=pos, query_pos=query_pos)
        x = self.self_attn(x, query_pos=query_pos)
        return self.ffn(x)


class QueryLayer(nn.Module):
    """A DETR decoder layer: self-attention, then cross-attention, then feed-forward."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.self_attn = SelfAttentionLayer(dim, nheads, dropout, pre_norm)
        self.cross_attn = CrossAttentionLayer(dim, nheads, dropout, pre_norm)
        self.ffn = FFNLayer(dim, ffn_dim, dropout, pre_norm)

    def forward(self, x, memory, pos, query_pos):
        x = self.self_attn(x, query_pos=query_pos)
        x = self.cross_attn(x, memory, pos=pos, query_pos=query_pos)
        return self.ffn(x)

    def forward_projected(self, x, k, v, query_pos):
        """The same with the memory's keys and values already projected [B, heads, HW, Dh]."""
        x = self.self_attn(x, query_pos=query_pos)
        x = self.cross_attn.forward_projected(x, k, v, query_pos=query_pos)
        return self.ffn(x)


class QueryTransformer(nn.Module):
    """OneFormer's query ("class") transformer: DETR decoder layers and a final LayerNorm."""

    def __init__(self, dim, nheads, ffn_dim, num_layers, dropout, pre_norm):
        super().__init__()
        self.layers = nn.ModuleList(
            QueryLayer(dim, nheads, ffn_dim, dropout, pre_norm) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        xavier_init_(self.layers)

    def forward(self, target, memory, pos, query_pos):
        """target, query_pos: [B, Q, D]; memory, pos: [B, HW, D] -> [B, Q, D]."""
        for layer in self.layers:
            target = layer(target, memory, pos, query_pos)
        return self.norm(target)


class LearnedQueries(nn.Module):
    """Mask2Former's queries: N learned features, the same for every image and task."""

    def __init__(self, num_queries: int, hidden_dim: int):
        super().__init__()
        self.query_feat = nn.Embedding(num_queries, hidden_dim)

    def forward(self, mask_features, query_embed, task_token=None) -> torch.Tensor:
        """mask_features [B, C, H, W] (for the batch size) -> queries [B, Q, D]."""
        if task_token is not None:
            raise ValueError("learned queries take no task token (a mask2former model)")
        return self.query_feat.weight.unsqueeze(0).expand(mask_features.shape[0], -1, -1)


class TaskConditionedQueries(nn.Module):
    """OneFormer's queries: N-1 learned queries refined by the query transformer with the task
    token as target, attending to the stride-4 mask features; the task token is the N-th."""

    def __init__(
        self,
        *,
        hidden_dim: int,
        mask_dim: int,
        nheads: int,
        dim_feedforward: int,
        num_layers: int,
        dropout: float,
        pre_norm: bool,
    ):
        super().__init__()
        self.pos_encoding = SinePositionEncoding(hidden_dim // 2)
        self.query_transformer = QueryTransformer(
            hidden_dim, nheads, dim_feedforward, num_layers, dropout, pre_norm
        )
        self.query_input_proj = nn.Conv2d(mask_dim, hidden_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.query_input_proj.weight, a=1)
        nn.init.zeros_(self.query_input_proj.bias)

    def forward(self, mask_features, query_embed, task_token=None) -> torch.Tensor:
        """mask_features [B, mask_dim, H/4, W/4], query_embed [Q, D] (positions of all
        queries), task_token [B, D] already normalised -> queries [B, Q, D]."""
        if task_token is None:
            raise ValueError("task-conditioned queries need a task token (a oneformer model)")
        batch = mask_features.shape[0]
        task_token = task_token.unsqueeze(1)  # [B, 1, D]
        query_pos = query_embed[:-1].unsqueeze(0).expand(batch, -1, -1)
        target = task_token.expand(-1, query_pos.shape[1], -1)
        # As in the published weights (OneFormer issue #110): the memory is the sine encoding
        # of the stride-4 grid and the projected mask features serve as its positions, so the
        # values carry position only while the keys see the features.
        wants_grad = torch.is_grad_enabled() and (
            mask_features.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        if wants_grad:
            memory = self.pos_encoding(mask_features).flatten(2).transpose(1, 2)  # [B, HW, D]
            pos = self.query_input_proj(mask_features).flatten(2).transpose(1, 2)
            queries = self.query_transformer(target, memory, pos, query_pos)
        else:
            keys, values = self.projected_memory(mask_features)
            for layer, k, v in zip(self.query_transformer.layers, keys, values):
                target = layer.forward_projected(target, k, v, query_pos)
            queries = self.query_transformer.norm(target)
        return torch.cat([queries, task_token], dim=1)

    def projected_memory(self, mask_features):
        """Every layer's cross-attention keys and values [B, heads, HW, Dh], with less work.

        The same numbers as projecting memory + positions and memory (to rounding), because
        every step is linear:
        - the memory (the sine encoding) is a row factor [H, F] beside a column factor
          [W, F], so its projection is a row table plus a column table, and the values need
          no product over the HW tokens at all;
        - the keys' projection of the projected mask features is one product with W_k W_proj
          per layer (the 1x1 convolution folded in).
        At 512x512 this replaces five [HW, 256] x [256, 256] products and the additions of
        positions with two. On CPU in bf16 the values go to attention as their row and column
        tables (`GridValues`, float32), outside a graph export and without attention dropout."""
        batch, _, height, width = mask_features.shape
        count = height * width
        weights = [self.query_input_proj.weight, self.query_input_proj.bias]
        for layer in self.query_transformer.layers:
            weights += [layer.cross_attn.attn.in_proj_weight, layer.cross_attn.attn.in_proj_bias]
        tables = constant(
            self,
            "memory_tables",
            (height, width, mask_features.device),
            tuple(weights),
            lambda: self.memory_tables(height, width, mask_features),
            compute_dtype(mask_features),
        )
        features = tokens(mask_features)  # [B, HW, C]
        keys, values = [], []
        # (in float32 the fused kernel: MKL's float32 product of the scores is not the same
        # on every thread count, and one process must give what many give)
        bf16 = compute_dtype(mask_features) == torch.bfloat16
        grid = bf16 and mask_features.device.type == "cpu" and not is_exporting()
        for layer, (weight, key_table, value, grid_values) in zip(
            self.query_transformer.layers, tables
        ):
            # (a graph gets MatMul + Add: a Gemm whose C is a matrix confuses quantizers)
            if batch == 1 and not is_exporting():
                k = torch.addmm(key_table, features[0], weight)[None]
            else:
                k = torch.matmul(features, weight) + key_table
            # [B, HW, D] -> [B, heads, HW, Dh]
            keys.append(k.view(batch, count, layer.cross_attn.attn.num_heads, -1).transpose(1, 2))
            attn = layer.cross_attn.attn
            dropped = attn.training and attn.dropout > 0  # (no_grad in train mode)
            values.append(grid_values if grid and not dropped else value.expand(batch, -1, -1, -1))
        return keys, values

    def memory_tables(self, height: int, width: int, mask_features: torch.Tensor) -> list:
        """What `projected_memory` reads besides the features, per layer: the folded weight
        (W_k W_proj)^T [C, D], the keys' table [HW, D] (the sine encoding's keys plus the folded
        biases), the values [1, heads, HW, Dh] and the same values as `GridValues` (kept in
        float32); the same for every image of this size, so computed once at inference, in
        float32 (the tensors rounded once where the forward is bf16)."""
        with full_precision(mask_features):
            pos_y, pos_x = self.pos_encoding.axes(height, width, mask_features.device)
            dtype = torch.promote_types(mask_features.dtype, torch.float32)
            pos_y, pos_x = pos_y.to(dtype), pos_x.to(dtype)
            half = pos_y.shape[1]
            proj_w = self.query_input_proj.weight.flatten(1)  # [D, C]
            proj_b = self.query_input_proj.bias
            tables = []
            for layer in self.query_transformer.layers:
                attn = layer.cross_attn.attn
                _, w_k, w_v = attn.in_proj_weight.chunk(3)
                _, b_k, b_v = attn.in_proj_bias.chunk(3)
                # [H, 1, D] + [1, W, D]: the projection of every grid position's sine encoding
                key_table = (pos_y @ w_k[:, :half].T + (w_k @ proj_b + b_k))[:, None] + (
                    pos_x @ w_k[:, half:].T
                )[None]
                # the values: a row table plus a column table, [H, D] and [W, D]
                rows, cols = pos_y @ w_v[:, :half].T + b_v, pos_x @ w_v[:, half:].T
                weight = (w_k @ proj_w).T  # [C, D]
                # [H, W, D] -> [1, heads, HW, Dh], in the layout attention reads
                value = (rows[:, None] + cols[None]).view(1, height * width, attn.num_heads, -1)
                value = value.transpose(1, 2)
                heads = attn.num_heads
                grid = GridValues(  # [heads, H, Dh], [heads, W, Dh]
                    rows.view(height, heads, -1).transpose(0, 1).contiguous(),
                    cols.view(width, heads, -1).transpose(0, 1).contiguous(),
                )
                key_table = key_table.view(height * width, -1)
                tables.append((weight, key_table, value.contiguous(), grid))
        return tables


def additive_mask(logits: torch.Tensor) -> torch.Tensor:
    """The attention mask of mask logits [B, Q, K] as attention adds it to the scores: the
    dtype's lowest value where a query may not look (logit < 0, sigmoid < 0.5), 0 where it
    may, 0 everywhere for a query whose mask is empty. What the boolean mask means, in four
    arithmetic passes: a boolean mask costs a `where` (~1 ms at 150 x 4096 on CPU, more than
    the rest of the mask together) inside the attention kernel. The lowest finite value
    rather than -inf keeps 0 x it finite; exp of it less the row's maximum is 0 as for -inf.
    Against sigmoid < 0.5 in bf16 (where sigmoid rounds to 0.5 for logits above ~-0.004),
    the sign is the float32 decision."""
    negative = logits.clamp(max=0).sign_()  # -1 where masked, else 0
    # per query: -lowest where some key is allowed (max 0), 0 where none is (max -1)
    scale = negative.amax(-1, keepdim=True).add_(1).mul_(-torch.finfo(logits.dtype).min)
    return negative.mul_(scale)


def features_product(mask_embed: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """[B, Q, C] x [B, C, HW] -> [B, Q, HW]. One image goes through `mm`, which reads a
    transposed operand in place, where a bf16 `matmul` copies it first (the same numbers)."""
    if mask_embed.shape[0] == 1 and not is_exporting():
        return torch.mm(mask_embed[0], features[0])[None]
    return torch.matmul(mask_embed, features)


class TransformerDecoder(nn.Module):
    """Queries -> per-layer class logits [B, Q, K+1] and mask logits [B, Q, H/4, W/4]."""

    def __init__(
        self,
        *,
        in_channels: int,
        mask_dim: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        enforce_input_proj: bool,
        query_init: nn.Module,
        dropout: float = 0.0,
    ):
        """query_init: makes the queries before the first layer from (mask_features,
        query_embed [Q, D], normalised task token or None): `TaskConditionedQueries` or
        `LearnedQueries`."""
        super().__init__()
        self.nheads = nheads
        self.pos_encoding = SinePositionEncoding(hidden_dim // 2)
        self.level_embed = nn.Embedding(NUM_SCALES, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
            if in_channels != hidden_dim or enforce_input_proj
            else nn.Identity()
            for _ in range(NUM_SCALES)
        )
        # positions of the queries; in OneFormer the first N-1 also steer the query transformer
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_init = query_init
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
            for _ in range(dec_layers)
        )
        xavier_init_(self.layers)
        # normalises the predictions' input and, in OneFormer, the task token
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.zeros_(proj.bias)

    def initial_queries(self, mask_features, task_token):
        """The queries before the first layer, [B, Q, D]."""
        if task_token is not None:
            task_token = self.decoder_norm(task_token)  # OneFormer normalises the task token
        return self.query_init(mask_features, self.query_embed.weight, task_token)

    def predict(self, x, mask_features, attn_features, full: bool = True):
        """Class logits [B, Q, K+1], mask logits [B, Q, H, W] (both None unless `full`) and the
        attention mask of the next layer, [B, Q, h*w]: where a gradient may flow or a graph
        is exported, bool, True where a query may not look; else `additive_mask`'s.

        attn_features: the mask features resized to the next layer's attention size
        [B, C, h, w]. Bilinear resizing acts on every channel alike, so the product with the
        resized features equals the resized full-size logits (what OneFormer computes) without
        computing the full-size map; at inference only the last layer needs that."""
        x = self.decoder_norm(x)
        mask_embed = self.mask_embed(x)
        class_logits = mask_logits = None
        if full:
            with full_precision(x):  # a small product; its logits go to a softmax
                class_logits = self.class_embed(x.to(self.class_embed.weight.dtype))
            # [B, Q, C] x [B, C, HW]: the features' own layout (channels-last) read as is
            height, width = mask_features.shape[-2:]
            mask_logits = features_product(mask_embed, tokens(mask_features).transpose(1, 2))
            mask_logits = mask_logits.view(*mask_logits.shape[:2], height, width)
        # [B, Q, C] x [B, C, h*w] -> [B, Q, h*w]: resized maps come as NCHW, a view then
        small = features_product(mask_embed, attn_features.flatten(2))
        if torch.is_grad_enabled() or is_exporting():
            attn_mask = small.sigmoid() < 0.5
            # a query whose mask is empty everywhere may look everywhere
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            return class_logits, mask_logits, attn_mask.detach()
        return class_logits, mask_logits, additive_mask(small)

    def forward(
        self,
        features: list[torch.Tensor],
        mask_features: torch.Tensor,
        task_token: torch.Tensor | None = None,
        aux: bool = True,
    ) -> dict:
        """features: the pixel decoder's 3 maps [B, C, h_l, w_l], coarse to fine;
        mask_features: [B, mask_dim, H/4, W/4]; task_token: [B, D] (OneFormer only);
        aux: also return the earlier predictions (training, comparisons); without them the
        earlier layers only compute their attention masks, at the attention resolution.

        Returns "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H/4, W/4], "aux_outputs" (the
        earlier predictions, first to last; empty without `aux`) and "queries" [B, Q, D], the
        queries before the first layer (what the contrastive loss compares with the texts)."""
        memories, positions, sizes = [], [], []
        dtype = compute_dtype(mask_features)
        for level, (feat, proj) in enumerate(zip(features, self.input_proj)):
            sizes.append(feat.shape[-2:])
            # [1, D, h, w] -> [1, hw, D]
            setting = (tuple(feat.shape[-2:]), feat.dtype, feat.device)
            pos = constant(
                self,
                f"pos{level}",
                setting,
                (),
                lambda feat=feat: self.pos_encoding(feat[:1]).flatten(2).transpose(1, 2),
                dtype,
            )
            positions.append(pos.expand(feat.shape[0], -1, -1))
            level_embed = constant(
                self,
                f"level_embed{level}",
                None,
                (self.level_embed.weight,),
                lambda level=level: self.level_embed.weight[level],
                dtype,
            )
            memory = tokens(proj(feat))  # [B, C, h, w] -> [B, hw, D]
            memories.append(memory + level_embed)
        # the mask features at each attention size, for the attention masks
        attn_features = [
            F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False)
            for size in sizes
        ]
        batch = mask_features.shape[0]
        query_embed = constant(
            self,
            "query_embed",
            None,
            (self.query_embed.weight,),
            lambda: self.query_embed.weight,
            dtype,
        )
        query_pos = query_embed.unsqueeze(0).expand(batch, -1, -1)
        queries = self.initial_queries(mask_features, task_token)

        x = queries
        class_logits, mask_logits, attn_mask = self.predict(
            x, mask_features, attn_features[0], full=aux
        )
        predictions = [(class_logits, mask_logits)]
        for i, layer in enumerate(self.layers):
            level = i % NUM_SCALES
            x = layer(x, memories[level], attn_mask, positions[level], query_pos)
            last = i == len(self.layers) - 1
            class_logits, mask_logits, attn_mask = self.predict(
                x, mask_features, attn_features[(i + 1) % NUM_SCALES], full=aux or last
            )
            predictions.append((class_logits, mask_logits))

        aux_outputs = [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]]
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": aux_outputs if aux else [],
            "queries": queries,
        }
