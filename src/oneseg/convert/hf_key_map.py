"""Where each of our tensors comes from in a transformers OneFormer or Mask2Former checkpoint.

Rules from our state-dict keys to transformers' keys, for the Swin and ConvNeXt backbones and
for the rest of the network, and one spelling for the key names that differ between
transformers versions.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A rule maps our key (a regex over the whole key) to the transformers key(s) it comes from:
# a template (groups as \1), a list of templates (tensors concatenated along dim 0, e.g. q, k,
# v into one in-projection) or a function of the match for index arithmetic.
Template = str | list[str] | Callable[[re.Match], str]
Rule = tuple[str, Template]

ENC = "pixel_level_module.encoder."
DEC = "pixel_level_module.decoder."
TRF = "transformer_module.decoder."
QT = TRF + "query_transformer.decoder."
TXT = "text_mapper."


def swin_rules() -> list[Rule]:
    ours = r"backbone\.body\.layers_(\d+)\.blocks\.(\d+)\."
    theirs = ENC + r"encoder.layers.\1.blocks.\2."
    return [
        (r"backbone\.body\.patch_embed\.proj\.(.+)",
         ENC + r"embeddings.patch_embeddings.projection.\1"),
        (r"backbone\.body\.patch_embed\.norm\.(.+)", ENC + r"embeddings.norm.\1"),
        (ours + r"norm1\.(.+)", theirs + r"layernorm_before.\3"),
        (ours + r"norm2\.(.+)", theirs + r"layernorm_after.\3"),
        (ours + r"attn\.qkv\.(.+)",
         [theirs + rf"attention.self.{p}.\3" for p in ("query", "key", "value")]),
        (ours + r"attn\.proj\.(.+)", theirs + r"attention.output.dense.\3"),
        (ours + r"attn\.relative_position_bias_table",
         theirs + "attention.self.relative_position_bias_table"),
        (ours + r"mlp\.fc1\.(.+)", theirs + r"intermediate.dense.\3"),
        (ours + r"mlp\.fc2\.(.+)", theirs + r"output.dense.\3"),
        # timm merges patches at the start of stage i, transformers at the end of stage i-1
        (r"backbone\.body\.layers_(\d+)\.downsample\.(.+)",
         lambda m: f"{ENC}encoder.layers.{int(m[1]) - 1}.downsample.{m[2]}"),
    ]  # fmt: skip


def convnext_rules() -> list[Rule]:
    ours = r"backbone\.body\.stages_(\d+)\.blocks\.(\d+)\."
    theirs = ENC + r"encoder.stages.\1.layers.\2."
    return [
        (r"backbone\.body\.stem_0\.(.+)", ENC + r"embeddings.patch_embeddings.\1"),
        (r"backbone\.body\.stem_1\.(.+)", ENC + r"embeddings.layernorm.\1"),
        (r"backbone\.body\.stages_(\d+)\.downsample\.(\d+)\.(.+)",
         ENC + r"encoder.stages.\1.downsampling_layer.\2.\3"),
        (ours + r"conv_dw\.(.+)", theirs + r"dwconv.\3"),
        (ours + r"norm\.(.+)", theirs + r"layernorm.\3"),
        (ours + r"mlp\.fc1\.(.+)", theirs + r"pwconv1.\3"),
        (ours + r"mlp\.fc2\.(.+)", theirs + r"pwconv2.\3"),
        (ours + r"gamma", theirs + "layer_scale_parameter"),
    ]  # fmt: skip


def dinat_rules() -> list[Rule]:
    ours = r"backbone\.levels\.(\d+)\.blocks\.(\d+)\."
    theirs = ENC + r"encoder.levels.\1.layers.\2."
    return [
        (r"backbone\.patch_embed\.proj\.(.+)", ENC + r"embeddings.patch_embeddings.projection.\1"),
        (r"backbone\.patch_embed\.norm\.(.+)", ENC + r"embeddings.norm.\1"),
        (ours + r"norm1\.(.+)", theirs + r"layernorm_before.\3"),
        (ours + r"norm2\.(.+)", theirs + r"layernorm_after.\3"),
        (ours + r"attn\.qkv\.(.+)",
         [theirs + rf"attention.self.{p}.\3" for p in ("query", "key", "value")]),
        (ours + r"attn\.rpb", theirs + "attention.self.rpb"),
        (ours + r"attn\.proj\.(.+)", theirs + r"attention.output.dense.\3"),
        (ours + r"mlp\.fc1\.(.+)", theirs + r"intermediate.dense.\3"),
        (ours + r"mlp\.fc2\.(.+)", theirs + r"output.dense.\3"),
        (r"backbone\.levels\.(\d+)\.downsample\.(.+)", ENC + r"encoder.levels.\1.downsample.\2"),
        (r"backbone\.norm(\d)\.(.+)",
         lambda m: f"{ENC}hidden_states_norms.stage{int(m[1]) + 1}.{m[2]}"),
    ]  # fmt: skip


def pixel_decoder_rules(num_fpn_levels: int) -> list[Rule]:
    """The backbone's output norms and the pixel decoder: the same names in OneFormer and
    Mask2Former."""
    pixel_layer, their_pixel_layer = r"pixel_decoder\.encoder\.(\d+)\.", DEC + r"encoder.layers.\1."
    return [
        (r"backbone\.out_norms\.(\d)\.(.+)",
         lambda m: f"{ENC}hidden_states_norms.stage{int(m[1]) + 1}.{m[2]}"),
        # pixel decoder
        (r"pixel_decoder\.level_embed", DEC + "level_embed"),
        (r"pixel_decoder\.input_proj\.(.+)", DEC + r"input_projections.\1"),
        (pixel_layer + r"self_attn\.(.+)", their_pixel_layer + r"self_attn.\2"),
        (pixel_layer + r"norm1\.(.+)", their_pixel_layer + r"self_attn_layer_norm.\2"),
        (pixel_layer + r"linear1\.(.+)", their_pixel_layer + r"fc1.\2"),
        (pixel_layer + r"linear2\.(.+)", their_pixel_layer + r"fc2.\2"),
        (pixel_layer + r"norm2\.(.+)", their_pixel_layer + r"final_layer_norm.\2"),
        # ours run coarse to fine; transformers numbers them fine to coarse from 1
        (r"pixel_decoder\.lateral_convs\.(\d+)\.(.+)",
         lambda m: f"{DEC}adapter_{num_fpn_levels - int(m[1])}.{m[2]}"),
        (r"pixel_decoder\.output_convs\.(\d+)\.(.+)",
         lambda m: f"{DEC}layer_{num_fpn_levels - int(m[1])}.{m[2]}"),
        (r"pixel_decoder\.mask_features\.(.+)", DEC + r"mask_projection.\1"),
    ]  # fmt: skip


def head_rules(num_fpn_levels: int) -> list[Rule]:
    layer = r"decoder\.layers\.(\d+)\."
    query_layer = r"decoder\.query_init\.query_transformer\.layers\.(\d+)\."
    their_layer, their_query_layer = TRF + r"layers.\1.", QT + r"layers.\1."
    text_block, their_text_block = (
        r"text_queries\.encoder\.blocks\.(\d+)\.",
        TXT + r"text_encoder.transformer.layers.\1.",
    )
    return [
        *pixel_decoder_rules(num_fpn_levels),
        # task token and queries
        (r"task_mlp\.layers\.(\d+)\.(.+)", r"task_encoder.task_mlp.layers.\1.0.\2"),
        (r"decoder\.level_embed\.weight", "transformer_module.level_embed.weight"),
        (r"decoder\.query_embed\.weight", "transformer_module.queries_embedder.weight"),
        (query_layer + r"self_attn\.attn\.(.+)", their_query_layer + r"self_attn.\2"),
        (query_layer + r"self_attn\.norm\.(.+)", their_query_layer + r"norm1.\2"),
        (query_layer + r"cross_attn\.attn\.(.+)", their_query_layer + r"multihead_attn.\2"),
        (query_layer + r"cross_attn\.norm\.(.+)", their_query_layer + r"norm2.\2"),
        (query_layer + r"ffn\.(linear1|linear2)\.(.+)", their_query_layer + r"\2.\3"),
        (query_layer + r"ffn\.norm\.(.+)", their_query_layer + r"norm3.\2"),
        (r"decoder\.query_init\.query_transformer\.norm\.(.+)", QT + r"norm.\1"),
        (r"decoder\.query_init\.query_input_proj\.(.+)", TRF + r"query_input_projection.\1"),
        # masked-attention layers and heads
        (layer + r"cross_attn\.attn\.(.+)", their_layer + r"cross_attn.multihead_attn.\2"),
        (layer + r"cross_attn\.norm\.(.+)", their_layer + r"cross_attn.norm.\2"),
        (layer + r"self_attn\.attn\.in_proj_(weight|bias)",
         [their_layer + rf"self_attn.self_attn.{p}_proj.\2" for p in ("q", "k", "v")]),
        (layer + r"self_attn\.attn\.out_proj\.(.+)",
         their_layer + r"self_attn.self_attn.out_proj.\2"),
        (layer + r"self_attn\.norm\.(.+)", their_layer + r"self_attn.norm.\2"),
        (layer + r"ffn\.(.+)", their_layer + r"ffn.\2"),
        (r"decoder\.(decoder_norm|class_embed)\.(.+)", TRF + r"\1.\2"),
        (r"decoder\.mask_embed\.layers\.(\d+)\.(.+)", TRF + r"mask_embed.layers.\1.0.\2"),
        # text branch
        (r"text_queries\.encoder\.(token_embedding\.weight|positional_embedding|ln_final\..+)",
         TXT + r"text_encoder.\1"),
        (text_block + r"norm1\.(.+)", their_text_block + r"layer_norm1.\2"),
        (text_block + r"attn\.(.+)", their_text_block + r"self_attn.\2"),
        (text_block + r"norm2\.(.+)", their_text_block + r"layer_norm2.\2"),
        (text_block + r"mlp\.0\.(.+)", their_text_block + r"mlp.fc1.\2"),
        (text_block + r"mlp\.2\.(.+)", their_text_block + r"mlp.fc2.\2"),
        (r"text_queries\.projector\.layers\.(\d+)\.(.+)", TXT + r"text_projector.layers.\1.0.\2"),
        (r"text_queries\.prompt_ctx\.weight", TXT + "prompt_ctx.weight"),
        (r"logit_scale", "criterion.logit_scale"),
    ]  # fmt: skip


def sources_of(template: Template, match: re.Match) -> list[str]:
    if callable(template):
        return [template(match)]
    if isinstance(template, str):
        return [match.expand(template)]
    return [match.expand(t) for t in template]


def canonical_key(key: str) -> str:
    """One spelling for the names that differ between transformers versions."""
    key = key.removeprefix("model.")
    key = key.replace(f"{ENC}swin.", ENC)
    if key.startswith(ENC + "encoder.layers."):  # Swin blocks, transformers 5 in-memory names
        for new, old in (
            ("attention.q_proj", "attention.self.query"),
            ("attention.k_proj", "attention.self.key"),
            ("attention.v_proj", "attention.self.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("attention.relative_position_bias.", "attention.self."),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ):
            key = key.replace(new, old)
    return key


def mask2former_head_rules(num_fpn_levels: int) -> list[Rule]:
    """transformers' Mask2FormerForUniversalSegmentation: the pixel decoder as OneFormer's;
    learned queries, masked-attention layers with their own names, the class head at the top."""
    layer = r"decoder\.layers\.(\d+)\."
    module = "transformer_module."
    theirs = module + r"decoder.layers.\1."
    return [
        *pixel_decoder_rules(num_fpn_levels),
        (r"decoder\.level_embed\.weight", module + "level_embed.weight"),
        (r"decoder\.query_embed\.weight", module + "queries_embedder.weight"),
        (r"decoder\.query_init\.query_feat\.weight", module + "queries_features.weight"),
        (r"decoder\.input_proj\.(\d+)\.(.+)", module + r"input_projections.\1.\2"),
        (layer + r"cross_attn\.attn\.(.+)", theirs + r"cross_attn.\2"),
        (layer + r"cross_attn\.norm\.(.+)", theirs + r"cross_attn_layer_norm.\2"),
        (layer + r"self_attn\.attn\.in_proj_(weight|bias)",
         [theirs + rf"self_attn.{p}_proj.\2" for p in ("q", "k", "v")]),
        (layer + r"self_attn\.attn\.out_proj\.(.+)", theirs + r"self_attn.out_proj.\2"),
        (layer + r"self_attn\.norm\.(.+)", theirs + r"self_attn_layer_norm.\2"),
        (layer + r"ffn\.linear1\.(.+)", theirs + r"fc1.\2"),
        (layer + r"ffn\.linear2\.(.+)", theirs + r"fc2.\2"),
        (layer + r"ffn\.norm\.(.+)", theirs + r"final_layer_norm.\2"),
        (r"decoder\.decoder_norm\.(.+)", module + r"decoder.layernorm.\1"),
        (r"decoder\.mask_embed\.layers\.(\d+)\.(.+)",
         module + r"decoder.mask_predictor.mask_embedder.\1.0.\2"),
        (r"decoder\.class_embed\.(.+)", r"class_predictor.\1"),
    ]  # fmt: skip


def rules_for(backbone_family: str, num_fpn_levels: int, arch: str = "oneformer") -> list[Rule]:
    backbone = {"swin": swin_rules, "dinat": dinat_rules}.get(backbone_family, convnext_rules)()
    heads = mask2former_head_rules if arch == "mask2former" else head_rules
    return backbone + heads(num_fpn_levels)
