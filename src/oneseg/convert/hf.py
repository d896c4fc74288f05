"""Official OneFormer and Mask2Former weights from a local transformers folder, converted exactly.

`load_hf_folder(dir)` reads `config.json` (+ `preprocessor_config.json` if present) and
`model.safetensors` / `pytorch_model.bin` of a `OneFormerForUniversalSegmentation` or
`Mask2FormerForUniversalSegmentation` (`hf_mask2former`) and returns
our model config values, the state dict in our names and the label map's categories. Every one
of our tensors is taken from the file and every tensor of the file is used, except those that
cannot change the outputs (listed in `IGNORED`); anything else is an error listing the keys.

Supported backbones: Swin and ConvNeXt (mapped onto timm) and DiNAT (ours, original names; its
kernel and dilations come from config.json). transformers' Swin and DiNAT keep separate
q/k/v projections (fused into timm's qkv here) and puts each patch-merging layer at the end of
a stage, where timm puts it at the start of the next one.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from oneseg.backbones import CONVNEXT_SIZES, DINAT_SIZES, SWIN_SIZES
from oneseg.config import ModelConfig
from oneseg.convert.hf_key_map import Rule, canonical_key, rules_for, sources_of
from oneseg.convert.hf_mask2former import mask2former_values
from oneseg.errors import CheckpointError
from oneseg.model.build import build_model
from oneseg.spec import section_from_dict

log = logging.getLogger(__name__)

# Tensors of a transformers checkpoint that do not influence the network's outputs.
IGNORED = (
    "criterion.empty_weight",  # the loss's class weights, rebuilt from the loss config
    "pixel_level_module.encoder.layernorm.",  # Swin classifier's final norm; backbones skip it
    "relative_position_index",  # a fixed index buffer, rebuilt from the window size
)


class ConversionError(CheckpointError):
    """A transformers folder or weight file that cannot be converted; the message names it."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ConversionError(f"transformers OneFormer: {what}")


# --------------------------------------------------------------------------- config


def _backbone_values(bb: dict) -> dict:
    kind = bb.get("model_type")
    out_features = bb.get("out_features") or []
    _require(
        len(out_features) == 4 and bb.get("num_channels", 3) == 3,
        f"backbone must output its 4 stages from RGB (out_features {out_features})",
    )
    if kind == "swin":
        _require(bb.get("patch_size", 4) == 4, "Swin patch_size must be 4")
        _require(float(bb.get("mlp_ratio", 4.0)) == 4.0, "Swin mlp_ratio must be 4")
        _require(bb.get("qkv_bias", True), "Swin without qkv bias is not supported")
        _require(not bb.get("use_absolute_embeddings", False), "Swin absolute embeddings")
        _require(bb.get("hidden_act", "gelu") == "gelu", "Swin hidden_act must be gelu")
        dims = (bb["embed_dim"], list(bb["depths"]), list(bb["num_heads"]), bb["window_size"])
        sizes = SWIN_SIZES
    elif kind == "convnext":
        hidden = list(bb["hidden_sizes"])
        _require(bb.get("patch_size", 4) == 4 and len(hidden) == 4, "ConvNeXt must have 4 stages")
        _require(
            hidden == [hidden[0] * 2**i for i in range(4)], f"ConvNeXt widths {hidden} not doubling"
        )
        _require(bb.get("layer_scale_init_value", 1e-6) > 0, "ConvNeXt without layer scale")
        _require(bb.get("hidden_act", "gelu") == "gelu", "ConvNeXt hidden_act must be gelu")
        dims = (hidden[0], list(bb["depths"]), [], 0)
        sizes = CONVNEXT_SIZES
    elif kind == "dinat":
        return _dinat_values(bb)
    else:
        raise ConversionError(
            f"transformers OneFormer: backbone type {kind!r} is not supported "
            "(swin, convnext, dinat)"
        )
    # the named size that agrees with most of the backbone; the rest become overrides
    named_dims = {
        n: (s.embed_dim, list(s.depths), list(s.num_heads), s.window) for n, s in sizes.items()
    }
    name = max(named_dims, key=lambda n: sum(a == b for a, b in zip(named_dims[n], dims)))
    named = named_dims[name]
    return {
        "backbone": name,
        "backbone_embed_dim": dims[0] if dims[0] != named[0] else 0,
        "backbone_depths": dims[1] if dims[1] != named[1] else [],
        "backbone_num_heads": dims[2] if dims[2] != named[2] else [],
        "backbone_window_size": dims[3] if dims[3] != named[3] else 0,
        "drop_path_rate": float(bb.get("drop_path_rate", 0.0)),
    }


def _dinat_values(bb: dict) -> dict:
    """DiNAT: the named size with the same MLP ratio and layer scale; the rest as overrides
    (the dilations are in the config, unlike in an original checkpoint)."""
    _require(bb.get("patch_size", 4) == 4, "DiNAT patch_size must be 4")
    _require(bb.get("qkv_bias", True), "DiNAT without qkv bias is not supported")
    _require(bb.get("hidden_act", "gelu") == "gelu", "DiNAT hidden_act must be gelu")
    layer_scale = float(bb.get("layer_scale_init_value", 0.0)) > 0
    _require(not layer_scale, "DiNAT with layer scale (transformers keeps both in one tensor)")
    mlp_ratio = float(bb.get("mlp_ratio", 3.0))
    fitting = [
        n for n, size in DINAT_SIZES.items() if size.mlp_ratio == mlp_ratio and not size.layer_scale
    ]
    _require(bool(fitting), f"DiNAT mlp_ratio {mlp_ratio} matches no published size")
    lacking = [
        k for k in ("embed_dim", "depths", "num_heads", "kernel_size", "dilations") if k not in bb
    ]
    _require(not lacking, f"DiNAT config lacks {', '.join(map(repr, lacking))}")
    embed = bb["embed_dim"]
    return {
        "backbone": min(fitting, key=lambda n: abs(DINAT_SIZES[n].embed_dim - embed)),
        "backbone_embed_dim": embed,
        "backbone_depths": list(bb["depths"]),
        "backbone_num_heads": list(bb["num_heads"]),
        "backbone_window_size": bb["kernel_size"],
        "backbone_dilations": [list(d) for d in bb["dilations"]],
        "drop_path_rate": float(bb.get("drop_path_rate", 0.0)),
    }


SUPPORTED_TYPES = ("oneformer", "mask2former")
EXTRAS_FILE = "oneseg.json"
# OneFormer's training-only text branch, which a transformers folder for inference lacks
TEXT_FILE = "oneseg_text_branch.safetensors"


def check_model_type(config: dict, source: str) -> str:
    """The config's model_type if oneseg converts it; otherwise one line naming what it is."""
    kind = config.get("model_type")
    if kind not in SUPPORTED_TYPES:
        architectures = ", ".join(config.get("architectures") or []) or "no architectures"
        raise ConversionError(
            f"{source}: a {kind!r} model ({architectures}), not a OneFormer or Mask2Former; "
            "oneseg converts OneFormerForUniversalSegmentation and "
            "Mask2FormerForUniversalSegmentation"
        )
    return kind


def any_model_values(config: dict, preprocessor: dict | None, name: str) -> dict:
    """Our ModelConfig values for a transformers OneFormer or Mask2Former config dict; `name`
    (folder or repository) tells a Mask2Former's task."""
    if check_model_type(config, name) == "oneformer":
        return model_values(config, preprocessor)
    values = mask2former_values(config, _backbone_values(config["backbone_config"]), name)
    _pixel_stats(values, preprocessor)
    return values


def _pixel_stats(values: dict, preprocessor: dict | None) -> None:
    """The processor's mean and std (0-1 scale) as ours (0-255), when it has them."""
    if preprocessor and preprocessor.get("image_mean") and preprocessor.get("image_std"):
        values["pixel_mean"] = [float(v) * 255.0 for v in preprocessor["image_mean"]]
        values["pixel_std"] = [float(v) * 255.0 for v in preprocessor["image_std"]]


def model_values(config: dict, preprocessor: dict | None = None) -> dict:
    """Our ModelConfig values (nested dict) for a transformers OneFormerConfig dict."""
    c = config
    _require(c.get("model_type") == "oneformer", f"model_type is {c.get('model_type')!r}")
    _require(c.get("norm", "GN") == "GN", "only GroupNorm pixel decoders are supported")
    _require(c.get("use_task_norm", True), "use_task_norm=false is not supported")
    _require(c.get("common_stride", 4) == 4, "common_stride must be 4")
    _require(list(c.get("strides", [4, 8, 16, 32])) == [4, 8, 16, 32], "strides must be 4..32")
    _require(c.get("decoder_layers", 10) >= 2, "decoder_layers must be >= 2")
    # transformers keeps the decoder's input projections in a plain list: their weights are
    # never saved, so only configurations without them can be converted
    _require(
        c["conv_dim"] == c["hidden_dim"] and not c.get("enforce_input_proj", False),
        "conv_dim != hidden_dim (or enforce_input_proj): transformers does not save the "
        "decoder's input projections",
    )
    _require(c["mask_dim"] == c["conv_dim"], "mask_dim must equal conv_dim")
    values = {
        "arch": "oneformer",
        **_backbone_values(c["backbone_config"]),
        "num_classes": len(c.get("id2label") or {}),
        "hidden_dim": c["hidden_dim"],
        "num_queries": c["num_queries"],
        "nheads": c["num_attention_heads"],
        "dim_feedforward": c["dim_feedforward"],
        # transformers counts the prediction before the first layer as a layer
        "dec_layers": c["decoder_layers"] - 1,
        "query_dec_layers": c["query_dec_layers"],
        "query_dropout": float(c.get("dropout", 0.1)),
        "dropout": 0.0,  # transformers' masked-attention layers have no dropout
        "pre_norm": c.get("pre_norm", False),
        "enforce_input_proj": False,
        "task_seq_len": c["task_seq_len"],
        "pixel_decoder": {
            "conv_dim": c["conv_dim"],
            "mask_dim": c["mask_dim"],
            "enc_layers": c["encoder_layers"],
            "enc_heads": c["num_attention_heads"],
            "enc_points": 4,
            "enc_ffn_dim": c["encoder_feedforward_dim"],
            "dropout": float(c.get("dropout", 0.1)),
            "norm_groups": 32,
        },
        "text_encoder": {
            "width": c["text_encoder_width"],
            "layers": c["text_encoder_num_layers"],
            "context_length": c["text_encoder_context_length"],
            "n_ctx": c["text_encoder_n_ctx"],
            "proj_layers": c["text_encoder_proj_layers"],
            "vocab_size": c["text_encoder_vocab_size"],
        },
        "loss": {
            "class_weight": float(c.get("class_weight", 2.0)),
            "mask_weight": float(c.get("mask_weight", 5.0)),
            "dice_weight": float(c.get("dice_weight", 5.0)),
            "contrastive_weight": float(c.get("contrastive_weight", 0.5)),
            "contrastive_temperature": float(c.get("contrastive_temperature") or 0.07),
            "no_object_weight": float(c.get("no_object_weight", 0.1)),
            "train_num_points": c.get("train_num_points", 12544),
            "oversample_ratio": float(c.get("oversample_ratio", 3.0)),
            "importance_sample_ratio": float(c.get("importance_sample_ratio", 0.75)),
        },
    }
    _require(values["num_classes"] > 0, "config.json has no id2label")
    _pixel_stats(values, preprocessor)
    return values


def categories(config: dict, preprocessor: dict | None = None) -> list[dict]:
    """Label-map categories from id2label; thing/stuff from the processor's metadata if any."""
    thing_ids = None
    metadata = (preprocessor or {}).get("metadata") or {}
    if isinstance(metadata, dict) and "thing_ids" in metadata:
        thing_ids = {int(i) for i in metadata["thing_ids"]}
    id2label = {int(k): v for k, v in config["id2label"].items()}
    return [
        {"id": i, "name": id2label[i], "isthing": int(thing_ids is None or i in thing_ids)}
        for i in sorted(id2label)
    ]


# --------------------------------------------------------------------------- weights


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means an unusable file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(
            f"{path}: not a weights file torch or safetensors can read ({reason})"
        ) from None


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (one file or shards listed in an index) with canonical names."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = directory / f"{name}.index.json"
        if (directory / name).is_file():
            files = [directory / name]
        elif index.is_file():
            shards = json.loads(index.read_text())["weight_map"].values()
            files = [directory / shard for shard in sorted(set(shards))]
        else:
            continue
        raw = {}
        for file in files:
            raw.update(_load_weight_file(file))
        return {canonical_key(k): v for k, v in raw.items()}
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin (or shards)")


def convert_state_dict(
    hf: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], rules: list[Rule]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state dict (keys and shapes of `reference`) from transformers tensors `hf`.

    Returns the state dict and our keys of the text branch that the file lacks (transformers
    saves the text branch only from models built for training); those keep `reference` values.
    Raises ConversionError listing missing, unexpected or mis-shaped tensors."""
    compiled = [(re.compile(pattern), source) for pattern, source in rules]
    remaining = dict(hf)
    state, missing, wrong, absent_text = {}, [], [], []
    for key, value in reference.items():
        found = next(((p.fullmatch(key), t) for p, t in compiled if p.fullmatch(key)), None)
        if found is None:
            missing.append(f"{key} (no rule)")
            continue
        sources = sources_of(found[1], found[0])
        if not all(s in remaining for s in sources):
            if key.startswith("text_queries.") or key == "logit_scale":
                absent_text.append(key)
                state[key] = value.clone()
            else:
                missing.append(f"{key} <- {sources}")
            continue
        parts = [remaining.pop(s) for s in sources]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        if tensor.shape != value.shape:
            wrong.append(f"{key} {tuple(value.shape)} <- {sources} {tuple(tensor.shape)}")
            continue
        state[key] = tensor.to(value.dtype).contiguous()
    unexpected = [k for k in remaining if not any(part in k for part in IGNORED)]
    if missing or unexpected or wrong:
        raise ConversionError(
            "transformers weights do not map onto the model: "
            f"missing {missing[:10]} ({len(missing)}), unexpected {unexpected[:10]} "
            f"({len(unexpected)}), wrong shapes {wrong[:10]} ({len(wrong)})"
        )
    return state, absent_text


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_hf_folder(
    directory: str | Path, name: str | None = None
) -> tuple[dict, dict[str, torch.Tensor], list[dict]]:
    """(ModelConfig values, state dict in our names, label-map categories) of a local
    transformers OneFormer or Mask2Former folder (config.json + model.safetensors or
    pytorch_model.bin). name: what the folder is called for the user (a hub repository's
    name: it tells a Mask2Former's task); default the folder's own name."""
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    if config is None:
        raise FileNotFoundError(
            f"{directory}: no config.json of a transformers OneFormer or Mask2Former"
        )
    preprocessor = _read_json(directory / "preprocessor_config.json")
    values = any_model_values(config, preprocessor, name or directory.name)
    extras = oneseg_extras(directory)
    if extras:  # written by oneseg: its own model config and label map, exactly
        values = extras["model_cfg"]
    cfg: ModelConfig = section_from_dict(ModelConfig, values, "model")
    model = build_model(cfg)
    rules = rules_for(
        config["backbone_config"]["model_type"], model.pixel_decoder.num_fpn_levels, cfg.arch
    )
    state, absent = convert_state_dict(read_hf_weights(directory), model.state_dict(), rules)
    if absent and (directory / TEXT_FILE).is_file():  # kept by oneseg beside the folder
        absent = _fill_text_branch(state, absent, directory / TEXT_FILE)
    if absent:
        log.warning(
            "%s has no text-branch weights (%d tensors; saved from an inference model): they "
            "start from random values; inference does not use them",
            name or directory,
            len(absent),
        )
    return values, state, extras.get("label_map") or categories(config, preprocessor)


def _fill_text_branch(state: dict, absent: list[str], path: Path) -> list[str]:
    """Our text-branch tensors from `path` into `state`; the keys still absent."""
    saved = _load_weight_file(path)
    for key in absent:
        if key in saved and saved[key].shape == state[key].shape:
            state[key] = saved[key]
    return [key for key in absent if key not in saved]


def oneseg_extras(directory: Path) -> dict:
    """What a folder written by `oneseg convert --to-hf` or `oneseg push` keeps beside the
    transformers files (oneseg.json: model config, label map, intensity rule); {} if none."""
    extras = _read_json(Path(directory) / EXTRAS_FILE) or {}
    if extras and not {"model_cfg", "label_map"} <= set(extras):
        raise ConversionError(f"{directory}/{EXTRAS_FILE}: lacks model_cfg or label_map")
    return extras


load_hf_oneformer = load_hf_folder  # the name it had when only OneFormer was read
