"""transformers' Mask2Former configuration, read as our Mask2Former model config.

`Mask2FormerForUniversalSegmentation` is our network with `arch: mask2former`: the same
backbones and pixel decoder, learned queries and no task token. Its config.json does not say
which task the weights were trained for; the published folders say it in their name
(`facebook/mask2former-swin-large-coco-panoptic`), so the name decides, and a name without a task
word is read as panoptic (a panoptic model gives all three tasks from one output).
"""

from __future__ import annotations

import logging
import re

from oneseg.errors import CheckpointError

log = logging.getLogger(__name__)

TASK_WORD = re.compile(r"(?<![a-z])(panoptic|instance|semantic)(?![a-z])")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckpointError(f"transformers Mask2Former: {what}")


def task_from_name(name: str) -> str:
    """The task named in a folder or repository name (the last match), else panoptic."""
    words = TASK_WORD.findall(name.lower())
    if not words:
        log.info("%s names no task (panoptic/instance/semantic): read as panoptic", name)
        return "panoptic"
    return words[-1]


def mask2former_values(config: dict, backbone: dict, name: str) -> dict:
    """Our ModelConfig values (nested dict) for a transformers Mask2FormerConfig dict.

    backbone: the backbone values already read from `config["backbone_config"]`;
    name: the folder or repository name, which tells the task (see the module's docstring)."""
    c = config
    _require(c.get("common_stride", 4) == 4, "common_stride must be 4")
    strides = list(c.get("feature_strides", [4, 8, 16, 32]))
    _require(strides == [4, 8, 16, 32], f"feature_strides must be 4..32 (not {strides})")
    _require(c.get("decoder_layers", 10) >= 2, "decoder_layers must be >= 2")
    act = c.get("activation_function", "relu")
    _require(act == "relu", f"activation_function {act!r} (only relu is supported)")
    conv_dim, mask_dim = c.get("feature_size", 256), c.get("mask_feature_size", 256)
    _require(mask_dim == conv_dim, "mask_feature_size must equal feature_size")
    dropout = float(c.get("dropout", 0.0))
    values = {
        "arch": "mask2former",
        "mode": task_from_name(name),
        **backbone,
        "num_classes": len(c.get("id2label") or {}),
        "hidden_dim": c.get("hidden_dim", 256),
        "num_queries": c.get("num_queries", 100),
        "nheads": c.get("num_attention_heads", 8),
        "dim_feedforward": c.get("dim_feedforward", 2048),
        # transformers counts the prediction before the first layer as a layer
        "dec_layers": c.get("decoder_layers", 10) - 1,
        "dropout": dropout,
        "pre_norm": bool(c.get("pre_norm", False)),
        "enforce_input_proj": bool(c.get("enforce_input_projection", False)),
        "pixel_decoder": {
            "conv_dim": conv_dim,
            "mask_dim": mask_dim,
            "enc_layers": c.get("encoder_layers", 6),
            "enc_heads": c.get("num_attention_heads", 8),
            "enc_points": 4,
            "enc_ffn_dim": c.get("encoder_feedforward_dim", 1024),
            "dropout": dropout,
            "norm_groups": 32,
        },
        "loss": {
            "class_weight": float(c.get("class_weight", 2.0)),
            "mask_weight": float(c.get("mask_weight", 5.0)),
            "dice_weight": float(c.get("dice_weight", 5.0)),
            "no_object_weight": float(c.get("no_object_weight", 0.1)),
            "train_num_points": c.get("train_num_points", 12544),
            "oversample_ratio": float(c.get("oversample_ratio", 3.0)),
            "importance_sample_ratio": float(c.get("importance_sample_ratio", 0.75)),
        },
    }
    _require(values["num_classes"] > 0, "config.json has no id2label")
    return values
