"""A oneseg model written back as a transformers folder (`oneseg convert --to-hf`).

`write_hf_folder(model_cfg, label_map, state, out)` (`oneseg.checkpoint.convert_to_hf` for any
source) writes what `OneFormerForUniversalSegmentation.from_pretrained`
(or `Mask2FormerForUniversalSegmentation`'s) reads: config.json and model.safetensors, saved by
transformers itself from a model built from that config and filled with our tensors through the
same key rules the reading direction uses (`hf_key_map`), and preprocessor_config.json (mean,
std, padding, class names). Beside them, oneseg.json keeps what transformers' config has no
place for (our model config, label map with colours, the intensity rule), and
oneseg_text_branch.safetensors OneFormer's training-only text branch, so that reading the folder
back gives exactly the model it came from, ready to fine-tune.

What transformers cannot express is refused with the reason: ResNet / EfficientNet backbones,
a decoder width other than the pixel decoder's (OneFormer: transformers does not save the
input projections), other sampling points or GroupNorm groups, a task prompt other than the
"the task is {task}" transformers' processor writes. config.json says `is_training: false`:
with it true transformers switches its pixel decoder's dropout on, whatever `model.eval()`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from oneseg.backbones import BACKBONES, NAMED_SIZES
from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.convert.hf import EXTRAS_FILE, IGNORED, TEXT_FILE, ConversionError
from oneseg.convert.hf_key_map import canonical_key, rules_for, sources_of
from oneseg.data.label_map import LabelMap
from oneseg.io import finite_json
from oneseg.tokenizer import task_text, tokenize

STAGES = ["stage1", "stage2", "stage3", "stage4"]
TEXT_KEYS = ("text_queries.", "logit_scale")


def _refuse(ok: bool, what: str) -> None:
    if not ok:
        raise ConversionError(f"cannot write as a transformers model: {what}")


def backbone_config(cfg: ModelConfig):
    """The transformers backbone config (Swin, ConvNeXt or DiNAT) of our backbone settings."""
    from transformers import ConvNextConfig, DinatConfig, SwinConfig

    name = cfg.backbone
    size = NAMED_SIZES.get(name)
    family = BACKBONES[name].family if name in BACKBONES else name
    if size is None or family not in ("swin", "convnext", "dinat"):
        raise ConversionError(
            f"cannot write as a transformers model: backbone {name!r} (transformers' OneFormer "
            "and Mask2Former take swin, convnext or dinat here)"
        )
    embed = cfg.backbone_embed_dim or size.embed_dim
    depths = cfg.backbone_depths or list(size.depths)
    heads = cfg.backbone_num_heads or list(size.num_heads)
    window = cfg.backbone_window_size or size.window
    if family == "swin":
        return SwinConfig(embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                          out_features=STAGES, drop_path_rate=0.0)  # fmt: skip
    if family == "convnext":
        return ConvNextConfig(hidden_sizes=[embed * 2**i for i in range(4)], depths=depths,
                              out_features=STAGES, drop_path_rate=0.0)  # fmt: skip
    _refuse(not size.layer_scale, f"{name} has layer scale (transformers keeps it otherwise)")
    return DinatConfig(
        embed_dim=embed, depths=depths, num_heads=heads, kernel_size=window,
        dilations=cfg.backbone_dilations or [list(d) for d in size.dilations],
        mlp_ratio=size.mlp_ratio, layer_scale_init_value=0.0, out_features=STAGES,
        drop_path_rate=0.0,
    )  # fmt: skip


def _check_common(cfg: ModelConfig) -> None:
    pd = cfg.pixel_decoder
    _refuse(pd.enc_points == 4, f"pixel_decoder.enc_points {pd.enc_points} (transformers: 4)")
    _refuse(pd.norm_groups == 32, f"pixel_decoder.norm_groups {pd.norm_groups} (transformers: 32)")
    _refuse(pd.mask_dim == pd.conv_dim, "pixel_decoder.mask_dim != conv_dim")
    _refuse(
        pd.enc_heads == cfg.nheads,
        f"pixel_decoder.enc_heads {pd.enc_heads} != nheads {cfg.nheads} (transformers: one)",
    )


def hf_config(cfg: ModelConfig, label_map: LabelMap):
    """transformers' OneFormerConfig or Mask2FormerConfig of our model config."""
    from transformers import Mask2FormerConfig, OneFormerConfig

    _check_common(cfg)
    pd = cfg.pixel_decoder
    id2label = {i: name for i, name in enumerate(label_map.names)}
    common = dict(
        backbone_config=backbone_config(cfg),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        num_attention_heads=cfg.nheads,
        dim_feedforward=cfg.dim_feedforward,
        encoder_feedforward_dim=pd.enc_ffn_dim,
        encoder_layers=pd.enc_layers,
        decoder_layers=cfg.dec_layers + 1,  # transformers counts the first prediction as a layer
        pre_norm=cfg.pre_norm,
        common_stride=4,
    )
    if cfg.arch == "mask2former":
        return Mask2FormerConfig(
            **common,
            feature_size=pd.conv_dim,
            mask_feature_size=pd.mask_dim,
            enforce_input_projection=cfg.enforce_input_proj,
            dropout=cfg.dropout,
        )
    _refuse(
        pd.conv_dim == cfg.hidden_dim and not cfg.enforce_input_proj,
        "OneFormer with decoder input projections (transformers does not save them)",
    )
    for task in TASKS:
        ours = tokenize([task_text(task, cfg.task_text)], cfg.task_seq_len)
        theirs = tokenize([f"the task is {task}"], cfg.task_seq_len)
        _refuse(
            torch.equal(ours, theirs),
            f"task_text {cfg.task_text!r} (transformers' processor writes 'the task is {{task}}')",
        )
    te = cfg.text_encoder
    return OneFormerConfig(
        **common,
        conv_dim=pd.conv_dim,
        mask_dim=pd.mask_dim,
        query_dec_layers=cfg.query_dec_layers,
        dropout=pd.dropout,
        task_seq_len=cfg.task_seq_len,
        text_encoder_width=te.width,
        text_encoder_num_layers=te.layers,
        text_encoder_context_length=te.context_length,
        text_encoder_n_ctx=te.n_ctx,
        text_encoder_proj_layers=te.proj_layers,
        text_encoder_vocab_size=te.vocab_size,
        is_training=False,
    )


def fill_hf_model(hf_model: torch.nn.Module, state: dict, rules) -> None:
    """Copy our tensors into the transformers model (in place); every tensor of it that can
    change the outputs must be covered, every one of ours used (text branch aside)."""
    theirs = {canonical_key(k): k for k in hf_model.state_dict()}
    compiled = [(re.compile(p), t) for p, t in rules]
    filled, unused = {}, []
    for key, value in state.items():
        match = next(((p.fullmatch(key), t) for p, t in compiled if p.fullmatch(key)), None)
        sources = sources_of(match[1], match[0]) if match else []
        if not sources or not all(s in theirs for s in sources):
            if not key.startswith(TEXT_KEYS):
                unused.append(key)
            continue
        parts = value.chunk(len(sources), 0) if len(sources) > 1 else [value]
        for source, part in zip(sources, parts):
            filled[theirs[source]] = part.contiguous()
    left = [k for k, name in theirs.items() if name not in filled and not _ignorable(k)]
    if unused or left:
        raise ConversionError(
            f"the model does not map onto transformers': unused {unused[:10]} ({len(unused)}), "
            f"not filled {left[:10]} ({len(left)})"
        )
    result = hf_model.load_state_dict(filled, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


def _ignorable(key: str) -> bool:
    # the criterion, fixed index buffers and the Swin classifier's final norm: no output uses them
    return any(part in key for part in IGNORED) or key.endswith("attn_mask")


def processor_config(cfg: ModelConfig, label_map: LabelMap) -> dict:
    """preprocessor_config.json: transformers' image processor of the model, with the class
    names and thing ids (OneFormer reads them from `metadata`)."""
    common = {
        "image_mean": [v / 255.0 for v in cfg.pixel_mean],
        "image_std": [v / 255.0 for v in cfg.pixel_std],
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "ignore_index": 255,
        "do_reduce_labels": False,
        "num_labels": len(label_map),
    }
    if cfg.arch == "mask2former":
        return {
            **common,
            "image_processor_type": "Mask2FormerImageProcessor",
            "size_divisor": cfg.size_divisibility,
        }
    metadata = {str(i): name for i, name in enumerate(label_map.names)}
    metadata["thing_ids"] = list(label_map.thing_classes)
    metadata["class_names"] = list(label_map.names)
    return {
        **common,
        "image_processor_type": "OneFormerImageProcessor",
        "num_text": cfg.num_queries - cfg.text_encoder.n_ctx,
        "task_seq_length": cfg.task_seq_len,
        "metadata": metadata,
    }


def write_hf_folder(
    model_cfg: ModelConfig,
    label_map: LabelMap,
    state: dict,
    out: str | Path,
    intensity: dict | None = None,
) -> Path:
    """Write a model (config, label map, state dict in our names) as a transformers folder at
    `out` (a new or empty folder), built beside it and renamed into place: never half a folder.
    `oneseg.checkpoint.convert_to_hf` does it for any source oneseg reads."""
    from transformers import Mask2FormerForUniversalSegmentation, OneFormerForUniversalSegmentation

    from oneseg.model.build import build_model

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(17, "exists and is not an empty folder; choose a new one", str(out))
    config = hf_config(model_cfg, label_map)
    cls = (
        Mask2FormerForUniversalSegmentation
        if model_cfg.arch == "mask2former"
        else OneFormerForUniversalSegmentation
    )
    hf_model = cls(config).eval()
    family = config.backbone_config.model_type
    num_fpn = build_model(model_cfg, len(label_map)).pixel_decoder.num_fpn_levels
    fill_hf_model(hf_model, state, rules_for(family, num_fpn, model_cfg.arch))
    extras = {
        "model_cfg": dataclasses.asdict(model_cfg),
        "label_map": label_map.to_categories(),
        "intensity": intensity,
    }
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one line of output per command, as everywhere
    try:
        hf_model.save_pretrained(tmp)
        processor = processor_config(model_cfg, label_map)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        (tmp / EXTRAS_FILE).write_text(json.dumps(finite_json(extras), indent=2))
        text = {k: v.contiguous() for k, v in state.items() if k.startswith(TEXT_KEYS)}
        if text:  # for fine-tuning: transformers' inference folder has no place for it
            save_file(text, str(tmp / TEXT_FILE))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bar:
            hf_logging.enable_progress_bar()
    return out
