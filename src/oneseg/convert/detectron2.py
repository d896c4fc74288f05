"""Original OneFormer / Mask2Former checkpoints (detectron2 layout) and TAO's, converted exactly.

The original repositories (SHI-Labs/OneFormer, facebookresearch/Mask2Former) save the detectron2
module tree: `backbone.*`, `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*` and, for
OneFormer, `task_mlp.*`, `text_encoder.*`, `text_projector.*`, `prompt_ctx.weight` and
`criterion.logit_scale`. NVIDIA TAO's Lightning checkpoints hold the same tree under `model.`
(its criterion beside it). Backbones: Swin (`D2SwinTransformer`), ConvNeXt and DiNAT.

The file records no configuration: every size is read from the tensor shapes, except what no
shape shows, which takes the published value: 4 sampling points per deformable head, decoder
heads equal to the pixel decoder's, GroupNorm with 32 groups, DiNAT dilations of OneFormer's
COCO/ADE20K-640 (kernel 11) or Cityscapes (kernel 7) DiNAT-L (`ONEFORMER_DINAT_LARGE`).
Category names are not in the file either: classes are numbered.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import torch

from oneseg.backbones import DINAT_SIZES, alternating_dilations
from oneseg.config import ModelConfig
from oneseg.model.build import build_model
from oneseg.model.dinat import ONEFORMER_DINAT_LARGE
from oneseg.spec import section_from_dict

log = logging.getLogger(__name__)

PD = "sem_seg_head.pixel_decoder."
PRED = "sem_seg_head.predictor."
# Tensors of an original checkpoint that cannot change the outputs.
IGNORED = ("criterion.empty_weight", "relative_position_index", "attn_mask", "pixel_mean",
           "pixel_std")  # fmt: skip

Template = str | list[str] | Callable[[re.Match], str]


class Detectron2Error(ValueError):
    pass


def is_detectron2_layout(state: dict) -> bool:
    return any(k.startswith(PRED) for k in state) and any(k.startswith("backbone.") for k in state)


def strip_tao_prefix(state: dict) -> dict:
    """A TAO Lightning state dict (`model.` + the original tree, criterion beside) -> the tree."""
    if not any(k.startswith("model." + PRED) for k in state):
        return state
    return {
        (k[len("model.") :] if k.startswith("model.") else k): v
        for k, v in state.items()
        if k.startswith(("model.", "criterion."))
    }


# --------------------------------------------------------------------------- key rules


def backbone_rules(family: str) -> list[tuple[str, Template]]:
    if family == "dinat":  # our DiNAT keeps the original names
        return [(r"backbone\.(.+)", r"backbone.\1")]
    if family == "swin":
        return [
            (r"backbone\.body\.patch_embed\.(.+)", r"backbone.patch_embed.\1"),
            (r"backbone\.body\.layers_(\d+)\.blocks\.(.+)", r"backbone.layers.\1.blocks.\2"),
            # timm merges patches at the start of stage i, the original at the end of stage i-1
            (r"backbone\.body\.layers_(\d+)\.downsample\.(.+)",
             lambda m: f"backbone.layers.{int(m[1]) - 1}.downsample.{m[2]}"),
            (r"backbone\.out_norms\.(\d)\.(.+)", r"backbone.norm\1.\2"),
        ]  # fmt: skip
    block, theirs = r"backbone\.body\.stages_(\d+)\.blocks\.(\d+)\.", r"backbone.stages.\1.\2."
    return [
        (r"backbone\.body\.stem_(\d)\.(.+)", r"backbone.downsample_layers.0.\1.\2"),
        (r"backbone\.body\.stages_(\d+)\.downsample\.(\d)\.(.+)",
         r"backbone.downsample_layers.\1.\2.\3"),
        (block + r"conv_dw\.(.+)", theirs + r"dwconv.\3"),
        (block + r"norm\.(.+)", theirs + r"norm.\3"),
        (block + r"mlp\.fc(\d)\.(.+)", theirs + r"pwconv\3.\4"),
        (block + r"gamma", theirs + "gamma"),
        (r"backbone\.out_norms\.(\d)\.(.+)", r"backbone.norm\1.\2"),
    ]  # fmt: skip


def head_rules(num_fpn_levels: int) -> list[tuple[str, Template]]:
    layer = r"decoder\.layers\.(\d+)\."
    query_layer = r"decoder\.query_init\.query_transformer\.layers\.(\d+)\."
    cross, self_ = (
        PRED + r"transformer_cross_attention_layers.\1.",
        PRED + r"transformer_self_attention_layers.\1.",
    )
    class_layer = PRED + r"class_transformer.decoder.layers.\1."
    text_block = r"text_queries\.encoder\.blocks\.(\d+)\."
    resblock = r"text_encoder.transformer.resblocks.\1."

    def fpn(name: str, ours: str):
        # ours run coarse to fine; the original numbers them fine to coarse from 1
        return [
            (rf"pixel_decoder\.{ours}\.(\d+)\.0\.(.+)",
             lambda m: f"{PD}{name}_{num_fpn_levels - int(m[1])}.{m[2]}"),
            (rf"pixel_decoder\.{ours}\.(\d+)\.1\.(.+)",
             lambda m: f"{PD}{name}_{num_fpn_levels - int(m[1])}.norm.{m[2]}"),
        ]  # fmt: skip

    return [
        (r"pixel_decoder\.level_embed", PD + "transformer.level_embed"),
        (r"pixel_decoder\.input_proj\.(.+)", PD + r"input_proj.\1"),
        (r"pixel_decoder\.encoder\.(\d+)\.(.+)", PD + r"transformer.encoder.layers.\1.\2"),
        *fpn("adapter", "lateral_convs"),
        *fpn("layer", "output_convs"),
        (r"pixel_decoder\.mask_features\.(.+)", PD + r"mask_features.\1"),
        (r"task_mlp\.(.+)", r"task_mlp.\1"),
        (r"decoder\.(level_embed|query_embed)\.weight", PRED + r"\1.weight"),
        (r"decoder\.query_init\.query_feat\.weight", PRED + "query_feat.weight"),
        (r"decoder\.input_proj\.(.+)", PRED + r"input_proj.\1"),
        (query_layer + r"self_attn\.attn\.(.+)", class_layer + r"self_attn.\2"),
        (query_layer + r"self_attn\.norm\.(.+)", class_layer + r"norm1.\2"),
        (query_layer + r"cross_attn\.attn\.(.+)", class_layer + r"multihead_attn.\2"),
        (query_layer + r"cross_attn\.norm\.(.+)", class_layer + r"norm2.\2"),
        (query_layer + r"ffn\.(linear\d)\.(.+)", class_layer + r"\2.\3"),
        (query_layer + r"ffn\.norm\.(.+)", class_layer + r"norm3.\2"),
        (r"decoder\.query_init\.query_transformer\.norm\.(.+)",
         PRED + r"class_transformer.decoder.norm.\1"),
        (r"decoder\.query_init\.query_input_proj\.(.+)", PRED + r"class_input_proj.\1"),
        (layer + r"cross_attn\.attn\.(.+)", cross + r"multihead_attn.\2"),
        (layer + r"cross_attn\.norm\.(.+)", cross + r"norm.\2"),
        (layer + r"self_attn\.attn\.(.+)", self_ + r"self_attn.\2"),
        (layer + r"self_attn\.norm\.(.+)", self_ + r"norm.\2"),
        (layer + r"ffn\.(.+)", PRED + r"transformer_ffn_layers.\1.\2"),
        (r"decoder\.(decoder_norm|class_embed|mask_embed)\.(.+)", PRED + r"\1.\2"),
        (r"text_queries\.encoder\.(token_embedding\.weight|positional_embedding|ln_final\..+)",
         r"text_encoder.\1"),
        (text_block + r"norm(\d)\.(.+)", lambda m: f"text_encoder.transformer.resblocks.{m[1]}"
                                                   f".ln_{m[2]}.{m[3]}"),
        (text_block + r"attn\.(.+)", resblock + r"attn.\2"),
        (text_block + r"mlp\.0\.(.+)", resblock + r"mlp.c_fc.\2"),
        (text_block + r"mlp\.2\.(.+)", resblock + r"mlp.c_proj.\2"),
        (r"text_queries\.projector\.(.+)", r"text_projector.\1"),
        (r"text_queries\.prompt_ctx\.weight", "prompt_ctx.weight"),
        (r"logit_scale", "criterion.logit_scale"),
    ]  # fmt: skip


def _source(template: Template, match: re.Match) -> str:
    return template(match) if callable(template) else match.expand(template)


def convert_state_dict(
    original: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    rules: list[tuple[str, Template]],
    origin: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state dict (keys and shapes of `reference`) from the original tensors.

    Returns it and the keys of our text branch the file lacks (saved from an inference model:
    they keep `reference` values). Raises Detectron2Error listing every missing, unexpected and
    mis-shaped tensor."""
    compiled = [(re.compile(pattern), template) for pattern, template in rules]
    remaining = dict(original)
    state, missing, wrong, absent_text = {}, [], [], []
    for key, value in reference.items():
        found = next(((p.fullmatch(key), t) for p, t in compiled if p.fullmatch(key)), None)
        source = _source(found[1], found[0]) if found else None
        if source is None or source not in remaining:
            if key.startswith("text_queries.") or key == "logit_scale":
                absent_text.append(key)
                state[key] = value.clone()
            else:
                missing.append(f"{key} <- {source}" if source else f"{key} (no rule)")
            continue
        tensor = remaining.pop(source)
        if tensor.shape != value.shape:
            wrong.append(f"{key} {tuple(value.shape)} <- {source} {tuple(tensor.shape)}")
            continue
        state[key] = tensor.to(value.dtype).contiguous()
    unexpected = [k for k in remaining if not any(part in k for part in IGNORED)]
    if missing or unexpected or wrong:
        raise Detectron2Error(
            f"{origin}: weights do not map onto the model: missing {missing[:10]} "
            f"({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)}), "
            f"wrong shapes {wrong[:10]} ({len(wrong)})"
        )
    return state, absent_text


# --------------------------------------------------------------------------- configuration


def _count(state: dict, pattern: str) -> int:
    """How many distinct indices fill the `{}` of `pattern` among the keys."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    return len({m[1] for k in state if (m := regex.fullmatch(k))})


def _swin_window(table_rows: int) -> int:
    side = round(table_rows**0.5)  # (2w - 1)^2 rows
    return (side + 1) // 2


def backbone_values(state: dict) -> tuple[str, dict]:
    """(family, our backbone config values) read from an original backbone's shapes."""
    if "backbone.levels.0.blocks.0.attn.rpb" in state:
        return "dinat", _dinat_values(state)
    if "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in state:
        embed = state["backbone.patch_embed.proj.weight"].shape[0]
        depths = [_count(state, f"backbone.layers.{i}.blocks.{{}}.norm1.weight") for i in range(4)]
        tables = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"]
                  for i in range(4)]  # fmt: skip
        name = {96: "swin_tiny" if depths[2] <= 6 else "swin_small", 128: "swin_base"}
        return "swin", {
            "backbone": name.get(embed, "swin_large"),
            "backbone_embed_dim": embed,
            "backbone_depths": depths,
            "backbone_num_heads": [t.shape[1] for t in tables],
            "backbone_window_size": _swin_window(tables[0].shape[0]),
        }
    if "backbone.downsample_layers.0.0.weight" in state:
        embed = state["backbone.downsample_layers.0.0.weight"].shape[0]
        depths = [_count(state, f"backbone.stages.{i}.{{}}.dwconv.weight") for i in range(4)]
        name = {96: "convnext_tiny" if depths[2] <= 9 else "convnext_small", 128: "convnext_base"}
        return "convnext", {
            "backbone": name.get(embed, "convnext_large"),
            "backbone_embed_dim": embed,
            "backbone_depths": depths,
        }
    found = sorted({".".join(k.split(".")[:3]) for k in state if k.startswith("backbone.")})
    raise Detectron2Error(
        f"backbone not recognised (Swin, ConvNeXt or DiNAT expected); its tensors: {found[:8]}"
    )


def _dinat_values(state: dict) -> dict:
    embed = state["backbone.patch_embed.proj.1.weight"].shape[0]
    depths = tuple(_count(state, f"backbone.levels.{i}.blocks.{{}}.norm1.weight") for i in range(4))
    rpbs = [state[f"backbone.levels.{i}.blocks.0.attn.rpb"] for i in range(4)]
    kernel = (rpbs[0].shape[-1] + 1) // 2
    mlp_ratio = state["backbone.levels.0.blocks.0.mlp.fc1.weight"].shape[0] / embed
    layer_scale = "backbone.levels.0.blocks.0.gamma1" in state
    fitting = [
        name
        for name, size in DINAT_SIZES.items()
        if size.mlp_ratio == mlp_ratio and (size.layer_scale is not None) == layer_scale
    ]
    if not fitting:
        raise Detectron2Error(
            f"DiNAT with mlp ratio {mlp_ratio}, layer scale {layer_scale}: no published size"
        )
    name = min(fitting, key=lambda n: abs(DINAT_SIZES[n].embed_dim - embed))
    if embed == 192 and depths == (3, 4, 18, 5) and kernel in ONEFORMER_DINAT_LARGE:
        dilations = ONEFORMER_DINAT_LARGE[kernel]
        log.warning(
            "DiNAT dilations are not stored in the weights: using OneFormer's DiNAT-L schedule "
            "for kernel %d %s; set model.backbone_dilations for another one",
            kernel,
            [list(d) for d in dilations],
        )
    else:
        dilations = alternating_dilations(depths)
    return {
        "backbone": name,
        "backbone_embed_dim": embed,
        "backbone_depths": list(depths),
        "backbone_num_heads": [r.shape[0] for r in rpbs],
        "backbone_window_size": kernel,
        "backbone_dilations": [list(d) for d in dilations],
    }


def model_values(state: dict) -> tuple[str, dict]:
    """(backbone family, our ModelConfig values) of an original OneFormer/Mask2Former tree."""
    family, values = backbone_values(state)
    query_embed = state[PRED + "query_embed.weight"]
    mask_features = state[PD + "mask_features.weight"]  # [mask_dim, conv_dim, 1, 1]
    levels = _count(state, PD + "input_proj.{}.0.weight")
    attention_weights = state[
        PD + "transformer.encoder.layers.0.self_attn.attention_weights.weight"
    ]
    enc_points = 4
    enc_heads = attention_weights.shape[0] // (levels * enc_points)
    hidden, conv_dim = query_embed.shape[1], mask_features.shape[1]
    oneformer = "task_mlp.layers.0.weight" in state
    values.update(
        arch="oneformer" if oneformer else "mask2former",
        num_classes=state[PRED + "class_embed.weight"].shape[0] - 1,
        hidden_dim=hidden,
        num_queries=query_embed.shape[0],
        nheads=enc_heads,
        dim_feedforward=state[PRED + "transformer_ffn_layers.0.linear1.weight"].shape[0],
        dec_layers=_count(state, PRED + "transformer_ffn_layers.{}.linear1.weight"),
        enforce_input_proj=PRED + "input_proj.0.weight" in state and conv_dim == hidden,
        drop_path_rate=0.0,
        pixel_decoder={
            "conv_dim": conv_dim,
            "mask_dim": mask_features.shape[0],
            "enc_layers": _count(state, PD + "transformer.encoder.layers.{}.linear1.weight"),
            "enc_heads": enc_heads,
            "enc_points": enc_points,
            "enc_ffn_dim": state[PD + "transformer.encoder.layers.0.linear1.weight"].shape[0],
        },
    )
    if oneformer:
        values["query_dec_layers"] = _count(
            state, PRED + "class_transformer.decoder.layers.{}.linear1.weight"
        )
        values["task_seq_len"] = state["task_mlp.layers.0.weight"].shape[1]
    if "text_encoder.positional_embedding" in state:
        context_length, width = state["text_encoder.positional_embedding"].shape
        values["text_encoder"] = {
            "width": width,
            "layers": _count(state, "text_encoder.transformer.resblocks.{}.ln_1.weight"),
            "context_length": context_length,
            "n_ctx": state["prompt_ctx.weight"].shape[0],
            "proj_layers": _count(state, "text_projector.layers.{}.weight"),
            "vocab_size": state["text_encoder.token_embedding.weight"].shape[0],
        }
    elif oneformer:  # saved from an inference model: the default branch, fitted to the queries
        values["text_encoder"] = {"n_ctx": min(16, query_embed.shape[0] - 1)}
    return family, values


def load_detectron2(state: dict, origin: str) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    """(ModelConfig values, state dict in our names, label-map categories) of an original or
    TAO OneFormer/Mask2Former state dict."""
    state = strip_tao_prefix(state)
    try:
        family, values = model_values(state)
    except KeyError as err:
        raise Detectron2Error(f"{origin}: an original checkpoint needs tensor {err}") from None
    model = build_model(section_from_dict(ModelConfig, values, "model"))
    rules = backbone_rules(family) + head_rules(model.pixel_decoder.num_fpn_levels)
    ours, absent = convert_state_dict(state, model.state_dict(), rules, origin)
    if absent:
        log.warning(
            "%s has no text-branch weights (%d tensors; saved from an inference model): they "
            "start from random values; inference does not use them",
            origin,
            len(absent),
        )
    log.warning(
        "%s records no category names: classes are numbered; name them with dataset.label_map",
        origin,
    )
    categories = [
        {"id": i, "name": f"class_{i}", "isthing": 1} for i in range(values["num_classes"])
    ]
    return values, ours, categories
