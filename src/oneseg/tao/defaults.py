"""Which TAO model a spec is written for, and TAO's defaults for the keys it leaves out.

A spec holding keys only TAO's Mask2Former has (`model.mask_former.*`, a split's `img_dir` /
`panoptic_json` / `annot_file`, ...) is a TAO Mask2Former spec; one holding keys only TAO's
OneFormer has (`model.one_former.*`, `model.test.*`, `dataset.image_size`, ...) a TAO OneFormer
spec. A TAO spec is meant to reproduce a TAO run, so what it leaves out takes TAO's default
(read from TAO's config dataclasses, `nvidia_tao_pytorch/config/{oneformer,mask2former}/`),
not oneseg's; the keys so filled in are reported in the log and in `experiment.yaml`.
"""

from __future__ import annotations

from typing import Any

from oneseg.tao.table import TaoKeyError

_SPLITS = ("train", "val", "test")
_M2F_SPLIT_KEYS = ("img_dir", "panoptic_json", "instance_json", "panoptic_dir", "annot_file")
MASK2FORMER_MARKS = (
    "model.mask_former.",
    "model.backbone.type",
    "model.backbone.swin.type",
    "model.backbone.efficientvit.",
    "train.pretrained_model_path",
    "train.activation_checkpoint",
    "train.use_distributed_sampler",
    *(f"dataset.{s}.{k}" for s in _SPLITS for k in (*_M2F_SPLIT_KEYS, "name", "root_dir")),
)
ONEFORMER_MARKS = (
    "model.one_former.",
    "model.backbone.name",
    "model.backbone.dinat.",
    "model.test.",
    "model.task_toggling.",
    "model.text_encoder.num_layers",
    "dataset.image_size",
    "dataset.min_scale",
    "dataset.max_scale",
    "dataset.cutmix_prob",
    "dataset.task_prob_train",
    "train.clip_gradients.",
    "inference.images_dir",
    "inference.image_size",
    "inference.mode",
    *(f"dataset.{s}.names" for s in _SPLITS),
)

# (TAO key, TAO's default, oneseg keys that, when given, stand for the same setting)
ONEFORMER_DEFAULTS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("model.backbone.name", "D2SwinTransformer", ("model.backbone",)),
    ("model.one_former.num_object_queries", 150, ("model.num_queries",)),
    ("model.one_former.dropout", 0.1, ("model.pixel_decoder.dropout", "model.query_dropout")),
    ("model.test.object_mask_threshold", 0.4, ("model.object_mask_threshold",)),
    ("model.test.overlap_threshold", 0.5, ("model.overlap_threshold",)),
    ("model.test.test_topk_per_image", 100, ("model.test_topk_per_image",)),
    ("model.test.semantic_on", True, ("evaluate.tasks", "model.task_toggling.semantic_on")),
    ("model.test.instance_on", False, ("evaluate.tasks", "model.task_toggling.instance_on")),
    ("model.test.panoptic_on", False, ("evaluate.tasks", "model.task_toggling.panoptic_on")),
    ("dataset.augmentation.train_crop_size", [1024, 1024], ("dataset.augmentation.crop_size",)),
    ("dataset.augmentation.test_min_size", 800, ("dataset.augmentation.eval_min_size",)),
    ("dataset.augmentation.test_max_size", 1333, ("dataset.augmentation.eval_max_size",)),
    ("dataset.image_size", 1024, ("dataset.augmentation.eval_resize",)),
    ("dataset.min_scale", 0.1, ("dataset.augmentation.short_edge_scale",)),
    ("dataset.max_scale", 2.0, ("dataset.augmentation.short_edge_scale",)),
    ("train.optim.lr", 1e-5, ()),
    ("train.optim.lr_scheduler", "WarmupPoly", ()),
    ("train.optim.warmup_iters", 1000, ("train.optim.warmup_steps",)),
    ("train.optim.warmup_factor", 0.001, ()),
    ("train.optim.monitor_name", "train_loss", ("train.monitor",)),
    ("train.clip_gradients.clip_value", 1.0, ("train.clip_grad_norm",)),
    ("inference.image_size", [1024, 1024], ("inference.resize",)),
    ("inference.mode", "semantic", ("inference.tasks",)),
]
MASK2FORMER_DEFAULTS: list[tuple[str, Any, tuple[str, ...]]] = [
    ("model.backbone.type", "swin", ("model.backbone",)),
    ("model.mask_former.num_object_queries", 100, ("model.num_queries",)),
    ("model.mask_former.dropout", 0.0, ("model.pixel_decoder.dropout",)),
    ("model.object_mask_threshold", 0.4, ()),
    ("model.overlap_threshold", 0.5, ()),
    ("model.test_topk_per_image", 100, ()),
    ("dataset.pixel_mean", [0.485, 0.456, 0.406], ("model.pixel_mean",)),
    ("dataset.pixel_std", [0.229, 0.224, 0.225], ("model.pixel_std",)),
    ("dataset.augmentation.train_min_size", [640], ()),
    ("dataset.augmentation.train_max_size", 2560, ()),
    ("dataset.augmentation.train_crop_size", [640, 640], ("dataset.augmentation.crop_size",)),
    ("dataset.augmentation.test_min_size", 640, ("dataset.augmentation.eval_min_size",)),
    ("dataset.augmentation.test_max_size", 640, ("dataset.augmentation.eval_max_size",)),
    ("train.optim.lr", 2e-4, ()),
    ("train.optim.lr_scheduler", "MultiStep", ()),
    ("train.optim.milestones", [88, 96], ()),
    ("train.optim.gamma", 0.1, ()),
    ("train.optim.monitor_name", "train_loss", ("train.monitor",)),
    ("train.clip_grad_norm", 0.1, ()),
]
DEFAULTS = {"oneformer": ONEFORMER_DEFAULTS, "mask2former": MASK2FORMER_DEFAULTS}
# What TAO's training loader does that no key controls and oneseg does not do (its own: a
# horizontal flip and brightness/contrast/saturation jitter, dataset.augmentation.*).
NOT_DONE = {
    "oneformer": "TAO's loader also rotates (+-15 degrees, p 0.5), blurs (p 0.4) and erases a "
    "region (p 0.25) of training images and uses SSD colour augmentation; oneseg does not",
    "mask2former": "TAO's loader uses SSD colour augmentation; oneseg jitters brightness, "
    "contrast and saturation (dataset.augmentation.color_jitter)",
}
NAMES = {"oneformer": "TAO OneFormer", "mask2former": "TAO Mask2Former"}


def dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested mapping, sections included (`a`, `a.b`, ...)."""
    keys = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            keys.append(path)
            keys += dotted_keys(value, path + ".")
    return keys


def _marked(keys: list[str], marks: tuple[str, ...]) -> list[str]:
    return [k for k in keys if any(k == m or (m.endswith(".") and k.startswith(m)) for m in marks)]


def flavour(keys: list[str], values: dict[str, Any]) -> str | None:
    """'mask2former', 'oneformer' or None (no key only one of TAO's two models has)."""
    m2f = _marked(keys, MASK2FORMER_MARKS)
    if str(values.get("dataset.type", "")).lower() == "ade":  # tao_deploy's Mask2Former spec
        m2f.append("dataset.type")
    one = _marked(keys, ONEFORMER_MARKS)
    if m2f and one:
        raise TaoKeyError(
            f"{one[0]}, {m2f[0]}: keys of TAO's OneFormer and of TAO's Mask2Former in one spec; "
            "keep those of one model"
        )
    return "mask2former" if m2f else "oneformer" if one else None


def missing_defaults(kind: str | None, given: set[str]) -> list[tuple[str, Any]]:
    """(TAO key, TAO default) of each key a `kind` spec leaves out, `given` holding every key
    the spec and its overrides set (dotted, sections included)."""
    if kind is None:
        return []
    out = []
    for key, value, same in DEFAULTS[kind]:
        if key in given or any(k in given for k in same):
            continue
        out.append((key, value))
    return out
