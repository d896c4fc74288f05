"""The one table of NVIDIA TAO spec keys and what each becomes in oneseg.

A TAO OneFormer or Mask2Former spec (file or dotted overrides) loads as written: every key in
`ALIASES` is read, resolved into oneseg's own keys (the resolved spec is what `experiment.yaml`
records) and removed. TAO keys that oneseg spells the same way (`train.num_epochs`,
`dataset.label_map`, `evaluate.checkpoint`, ...) are not listed: they already are oneseg keys.

Each row is one of:
- a rename (with a value conversion where the two spell a value differently);
- a group key, resolved together with the keys of its group (the backbone, the training
  sources, the task switches, the multistep milestones) in `oneseg.tao.resolve`;
- a fixed key: oneseg builds exactly what TAO builds at that value and refuses any other;
- an ignored key: it changes nothing in oneseg (the reason is given); a value other than TAO's
  default is reported in one warning.
The "TAO specs" table of docs/tao_keys.md is generated from this table (`markdown_table`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Convert = Callable[[Any], Any]


class TaoKeyError(ValueError):
    """A TAO key that cannot mean in oneseg what it means in TAO; one line naming the key."""


class SpecWarning(UserWarning):
    """A spec key accepted but ignored."""


@dataclass(frozen=True)
class Alias:
    tao: str  # dotted TAO key
    kind: str  # "rename", "group", "fixed" or "ignored"
    target: str = ""  # dotted oneseg key (rename) or the group's name (group)
    how: str = ""  # what it means in oneseg, for the docs
    convert: Convert | None = None  # rename: TAO value -> oneseg value
    value: Any = None  # fixed: the one value accepted; ignored: TAO's default
    # rename onto a key of an action or mode that a build may lack: without the key, an unset
    # value passes and a set one is refused as not built
    optional: bool = False


def _lower_map(key: str, mapping: dict[str, Any]) -> Convert:
    """A value conversion by name, case-insensitive; an oneseg value passes unchanged."""

    def convert(value):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.lower() in mapping:
            return mapping[value.lower()]
        if value in mapping.values():
            return value
        known = ", ".join(sorted(mapping))
        raise ValueError(f"{key}: got {value!r}, expected one of {known}")

    return convert


def rename(
    tao: str, target: str, how: str = "", convert: Convert | None = None, optional: bool = False
) -> Alias:
    return Alias(tao, "rename", target, how or "same meaning", convert, optional=optional)


def group(tao: str, name: str, how: str) -> Alias:
    return Alias(tao, "group", name, how)


def fixed(tao: str, value: Any, how: str) -> Alias:
    return Alias(tao, "fixed", "", how, value=value)


def ignored(tao: str, default: Any, how: str) -> Alias:
    return Alias(tao, "ignored", "", how, value=default)


def _decoder_layers(value):
    # detectron2/TAO count the learned-query prediction as a layer: DEC_LAYERS 10 = 9 layers
    if not isinstance(value, int) or value < 2:
        raise ValueError(f"dec_layers: got {value!r}, expected an integer >= 2")
    return value - 1


_PRECISION = {"fp32": "32", "32": "32", "fp16": "16-mixed", "16": "16-mixed", "bf16": "bf16-mixed"}
_SCHEDULER = {"multistep": "multistep", "warmuppoly": "poly", "poly": "poly"}
_CALIBRATION = {
    "max": "minmax",
    "minmax": "minmax",
    "entropy": "entropy",
    "percentile": "percentile",
}
_TRT_TYPE = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}
_MONITOR = {"train_loss": "loss", "val_loss": "loss", "miou": "miou", "pq": "pq", "ap": "ap"}


def _decoder_rows(section: str) -> list[Alias]:
    """model.one_former.* (OneFormer) and model.mask_former.* (Mask2Former)."""
    p = f"model.{section}."
    loss = "model.loss."
    rows = [
        rename(p + "num_object_queries", "model.num_queries"),
        rename(p + "hidden_dim", "model.hidden_dim"),
        rename(p + "nheads", "model.nheads"),
        rename(p + "dim_feedforward", "model.dim_feedforward"),
        rename(
            p + "dec_layers",
            "model.dec_layers",
            "TAO counts the learned-query prediction: dec_layers 10 = 9 layers",
            _decoder_layers,
        ),
        rename(p + "pre_norm", "model.pre_norm"),
        rename(p + "enforce_input_proj", "model.enforce_input_proj"),
        rename(p + "size_divisibility", "model.size_divisibility"),
        group(
            p + "dropout",
            "dropout",
            "TAO's pixel-decoder dropout -> model.pixel_decoder.dropout (OneFormer: also the "
            "query transformer's, model.query_dropout)",
        ),
        rename(p + "train_num_points", loss + "train_num_points"),
        rename(p + "oversample_ratio", loss + "oversample_ratio"),
        rename(p + "importance_sample_ratio", loss + "importance_sample_ratio"),
        rename(p + "mask_weight", loss + "mask_weight"),
        rename(p + "dice_weight", loss + "dice_weight"),
        rename(p + "class_weight", loss + "class_weight"),
        rename(p + "no_object_weight", loss + "no_object_weight"),
        rename(p + "deep_supervision", loss + "deep_supervision"),
    ]
    if section == "one_former":
        rows += [
            rename(p + "class_dec_layers", "model.query_dec_layers"),
            rename(p + "contrastive_weight", loss + "contrastive_weight"),
            rename(p + "contrastive_temperature", loss + "contrastive_temperature"),
            fixed(p + "enc_layers", 0, "no transformer encoder before the decoder"),
            fixed(p + "use_task_norm", True, "the task token is LayerNorm'd"),
            fixed(p + "num_feature_levels", 3, "the decoder rotates over 3 scales"),
            fixed(
                p + "transformer_decoder_name",
                "ContrastiveMultiScaleMaskedTransformerDecoder",
                "the one decoder",
            ),
            fixed(p + "transformer_in_feature", "multi_scale_pixel_decoder", "the one input"),
        ]
    return rows


def _backbone_rows() -> list[Alias]:
    b = "model.backbone."
    how_size = "with name/type: picks the backbone size; sets model.backbone_* where it differs"
    rows = [
        group(b + "name", "backbone", "D2SwinTransformer -> swin_*, D2DiNAT -> dinat_* (by size)"),
        group(b + "type", "backbone", "Mask2Former card: swin (size from swin.type)"),
        group(b + "swin.type", "backbone", "tiny/small/base/large -> swin_tiny ... swin_large"),
        group(b + "freeze_at", "backbone", "0 only: train.freeze_backbone freezes all of it"),
        rename(b + "pretrained_weights", "train.pretrained_backbone", "Mask2Former card"),
    ]
    for family, keys in (
        ("swin", ("embed_dim", "depths", "num_heads", "window_size")),
        ("dinat", ("embed_dim", "depths", "num_heads", "kernel_size", "dilations")),
    ):
        rows += [group(f"{b}{family}.{key}", "backbone", how_size) for key in keys]
        rows.append(rename(f"{b}{family}.drop_path_rate", "model.drop_path_rate"))
        rows.append(ignored(f"{b}{family}.use_checkpoint", False, "activation checkpointing"))
        rows.append(fixed(f"{b}{family}.out_indices", [0, 1, 2, 3], "all four stages"))
        rows.append(
            fixed(f"{b}{family}.out_features", ["res2", "res3", "res4", "res5"], "all four")
        )
    rows += [
        group(b + "dinat.mlp_ratio", "backbone", "must be the DiNAT size's (3.0 tiny, else 2.0)"),
        fixed(b + "swin.mlp_ratio", 4.0, "Swin's"),
        fixed(b + "swin.qkv_bias", True, "Swin's"),
        fixed(b + "swin.qk_scale", None, "head_dim ** -0.5"),
        fixed(b + "swin.attn_drop_rate", 0.0, "no attention dropout"),
        fixed(b + "swin.drop_rate", 0.0, "no dropout"),
        fixed(b + "swin.ape", False, "relative position bias only"),
        fixed(b + "swin.patch_norm", True, "Swin's"),
        fixed(b + "swin.patch_size", 4, "Swin's"),
        ignored(b + "swin.pretrain_img_size", 384, "used by TAO only with ape, which is off"),
    ]
    return rows


# Mask2Former's names of a source's files -> oneseg's.
M2F_SOURCE_KEYS = {
    "img_dir": "images",
    "panoptic_json": "annotations",
    "instance_json": "annotations",
    "panoptic_dir": "panoptic",
}


_SOURCE_HOW = {
    "images": "the images folder (train: a string, or a list of several sources)",
    "annotations": "the annotation JSON (train: a string, or a list of several sources)",
    "panoptic": "the panoptic PNG folder (train: a string, or a list of several sources)",
    "img_dir": "Mask2Former: -> images",
    "panoptic_json": "Mask2Former: -> annotations when the type is coco_panoptic",
    "instance_json": "Mask2Former: -> annotations when the type is coco",
    "panoptic_dir": "Mask2Former: -> panoptic",
    "annot_file": "Mask2Former ade: the JSON-lines file -> annotations (dataset.type ade)",
    "root_dir": "Mask2Former ade: folder of the JSON-lines paths -> images (other types: unused)",
    "type": "Mask2Former: ade / coco_panoptic / coco -> dataset.type (one for all splits)",
}
_BATCH_OF = {"train": "dataset.batch_size", "val": "evaluate.batch_size"}


def _dataset_rows() -> list[Alias]:
    rows = []
    for split in ("train", "val", "test"):
        keys = ("images", "annotations", "panoptic") if split == "train" else ()
        for key in (*keys, *M2F_SOURCE_KEYS, "annot_file", "root_dir", "type"):
            rows.append(group(f"dataset.{split}.{key}", "sources", _SOURCE_HOW[key]))
        rows += [
            rename(f"dataset.{split}.num_workers", "dataset.workers"),
            ignored(f"dataset.{split}.names", None, "display names of the datasets"),
            ignored(f"dataset.{split}.name", None, "Mask2Former: display name of the dataset"),
            group(
                f"dataset.{split}.target_size",
                "target_size",
                "Mask2Former: images stretched to [h, w] first -> val: "
                "dataset.augmentation.eval_resize, test: inference.resize, train: refused",
            ),
        ]
        if split == "test":
            rows.append(group("dataset.test.batch_size", "test_batch", "-> inference.batch_size"))
        else:
            rows.append(rename(f"dataset.{split}.batch_size", _BATCH_OF[split], "per process"))
    aug = "dataset.augmentation."
    rows += [
        group(
            aug + "train_min_size",
            "train_min_size",
            "Mask2Former: one value s (or none: the crop's) expands as TAO does to "
            "s/2, s/2+64, ... up to 2s; otherwise as given",
        ),
        group(
            "dataset.contiguous_id",
            "contiguous",
            "TAO false: raw category ids are the class channels and num_classes covers them; "
            "oneseg gives each label-map category its own channel in order (same classes, the "
            "same category ids in every output) and takes the count from the label map",
        ),
        rename(aug + "train_crop_size", aug + "crop_size"),
        rename(aug + "test_min_size", aug + "eval_min_size"),
        rename(aug + "test_max_size", aug + "eval_max_size"),
        rename("dataset.task_prob_train", "dataset.task_prob"),
        ignored("dataset.task_prob_val", None, "evaluation runs each task in evaluate.tasks"),
        group("dataset.pixel_mean", "pixel", "OneFormer: 0-255 scale; Mask2Former: 0-1 (x 255)"),
        group("dataset.pixel_std", "pixel", "OneFormer: 0-255 scale; Mask2Former: 0-1 (x 255)"),
        rename("dataset.task_seq_len", "model.task_seq_len"),
        rename("dataset.max_seq_len", "model.text_encoder.context_length"),
        group(
            "dataset.image_size",
            "eval_resize",
            "OneFormer: evaluation images stretched to [s, s] before the test resize -> "
            "dataset.augmentation.eval_resize",
        ),
        group(
            "dataset.min_scale",
            "short_edge_scale",
            "OneFormer: training shortest edge = crop x U(min, max) -> "
            "dataset.augmentation.short_edge_scale",
        ),
        group(
            "dataset.max_scale",
            "short_edge_scale",
            "OneFormer: training shortest edge = crop x U(min, max) -> "
            "dataset.augmentation.short_edge_scale",
        ),
        fixed("dataset.cutmix_prob", 0.0, "no CutMix"),
    ]
    return rows


def _model_rows() -> list[Alias]:
    head = "model.sem_seg_head."
    pd = "model.pixel_decoder."
    rows = [
        rename(head + "num_classes", "model.num_classes", "classes without no-object"),
        rename(head + "ignore_value", "dataset.ignore_value"),
        rename(head + "convs_dim", pd + "conv_dim"),
        rename(head + "mask_dim", pd + "mask_dim"),
        rename(head + "transformer_enc_layers", pd + "enc_layers"),
        fixed(head + "norm", "GN", "GroupNorm in the pixel decoder"),
        fixed(head + "common_stride", 4, "mask features at stride 4"),
        fixed(head + "loss_weight", 1.0, "no separate head weight"),
        fixed(head + "name", "OneFormerHead", "the one head"),
        fixed(head + "pixel_decoder_name", "MSDeformAttnPixelDecoder", "the one pixel decoder"),
        fixed(
            head + "in_features",
            ["res3", "res4", "res5"],
            "OneFormer: the deformable encoder's inputs, strides 8, 16, 32",
        ),
        fixed(
            head + "deformable_transformer_encoder_in_features",
            ["res3", "res4", "res5"],
            "strides 8, 16, 32",
        ),
        rename("model.text_encoder.num_layers", "model.text_encoder.layers"),
        rename("model.text_encoder.proj_num_layers", "model.text_encoder.proj_layers"),
        ignored("model.export", False, "export mode is the export action's own"),
        group("model.mode", "mode", "Mask2Former: the task it trains for; TAO exports it"),
    ]
    rows += [  # Mask2Former has them under model itself, as oneseg
        rename("model.test.object_mask_threshold", "model.object_mask_threshold"),
        rename("model.test.overlap_threshold", "model.overlap_threshold"),
        rename("model.test.test_topk_per_image", "model.test_topk_per_image"),
    ]
    for section in ("model.test.", "model.task_toggling."):
        rows += [
            group(section + f"{task}_on", "tasks", f"{task} in or out of evaluate.tasks")
            for task in ("semantic", "instance", "panoptic")
        ]
    rows.append(ignored("model.test.detection_on", False, "boxes are not evaluated"))
    return rows


def _train_rows() -> list[Alias]:
    o = "train.optim."
    return [
        rename(
            "train.precision",
            "train.precision",
            "fp32 -> 32, fp16 -> 16-mixed, bf16 -> bf16-mixed",
            _lower_map("train.precision", _PRECISION),
        ),
        rename(
            o + "type", o + "type", "AdamW -> adamw", _lower_map(o + "type", {"adamw": "adamw"})
        ),
        rename(
            o + "lr_scheduler",
            o + "lr_scheduler",
            "MultiStep -> multistep, WarmupPoly -> poly",
            _lower_map(o + "lr_scheduler", _SCHEDULER),
        ),
        group(o + "warmup_iters", "warmup", "-> train.optim.warmup_steps (TAO: WarmupPoly only)"),
        group(
            o + "steps",
            "milestones",
            "OneFormer multistep: epochs / train.num_epochs (unused under poly, as in TAO)",
        ),
        group(
            o + "milestones",
            "milestones",
            "Mask2Former multistep: epochs / train.num_epochs (unused under poly, as in TAO); "
            "epochs past the run are never reached, as in TAO; floats: oneseg's fractions",
        ),
        ignored(o + "max_iter", 368750, "the schedule spans train.num_epochs"),
        ignored(o + "momentum", 0.9, "AdamW has no momentum term"),
        rename(
            o + "monitor_name",
            "train.monitor",
            "train_loss/val_loss -> loss (model_best.ckpt)",
            _lower_map(o + "monitor_name", _MONITOR),
        ),
        group("train.freeze", "freeze", "[backbone] -> train.freeze_backbone"),
        group(
            "train.clip_gradients.clip_value",
            "clip",
            "OneFormer: the full-model norm TAO clips to (TAO's OneFormer does not read "
            "train.clip_grad_norm) -> train.clip_grad_norm",
        ),
        group("train.clip_gradients.enabled", "clip", "false -> train.clip_grad_norm 0"),
        group(
            "train.clip_gradients.clip_type", "clip", "only full_model: one norm (value refused)"
        ),
        fixed("train.clip_gradients.norm_type", 2.0, "L2 norm"),
        fixed("train.clip_grad_norm_type", 2.0, "L2 norm"),
        fixed("train.clip_grad_type", "full", "one norm over the whole model"),
        fixed("train.accumulate_grad_batches", 1, "one batch per step"),
        fixed("train.distributed_strategy", "ddp", "DDP"),
        group(
            "train.iters_per_epoch",
            "schedule",
            "TAO's schedule length: -> train.optim.schedule_steps = iters x num_epochs + 1",
        ),
        ignored(
            "train.val_check_interval", 1.0, "validation every train.validation_interval epochs"
        ),
        ignored("train.is_dry_run", False, "no dry-run mode"),
        ignored("train.verbose", False, "status.json and the logs say what happens"),
        rename("train.cudnn.benchmark", "train.cudnn_benchmark", "cuDNN kernel autotuning"),
        rename("train.cudnn.deterministic", "train.cudnn_deterministic", "deterministic cuDNN"),
        rename("train.pretrained_model_path", "train.pretrained_model", "Mask2Former"),
        ignored("train.activation_checkpoint", False, "saves memory only; not built here"),
        ignored(
            "train.use_distributed_sampler",
            False,
            "oneseg's multi-process training always shards the data with a distributed sampler",
        ),
    ]


def _action_rows() -> list[Alias]:
    rows = []
    for action in ("train", "evaluate", "inference", "export", "gen_trt_engine", "quantize"):
        rows.append(ignored(f"{action}.results_dir", None, "results go to results_dir/ACTION"))
    # evaluate/inference num_gpus, gpu_ids, num_nodes are oneseg keys (several processes)
    for action in ("export", "gen_trt_engine"):
        rows += [
            ignored(f"{action}.gpu_id", 0, "the first GPU"),
            ignored(f"{action}.verbose", False, "status.json and the logs say what happens"),
        ]
    trt = "gen_trt_engine.tensorrt."
    rows += [
        rename("evaluate.trt_engine", "evaluate.trt_engine", "", optional=True),
        rename("inference.trt_engine", "inference.trt_engine", "", optional=True),
        rename("export.on_cpu", "export.on_cpu", "", optional=True),
        rename(
            "inference.mode",
            "inference.tasks",
            "one task -> [task]",
            lambda t: [t.lower()] if isinstance(t, str) else t,
        ),
        rename("inference.images_dir", "inference.images"),
        group(
            "inference.image_size",
            "image_size",
            "OneFormer: inference images stretched to [h, w] before the test resize -> "
            "inference.resize",
        ),
        group(
            "inference.batch_size",
            "inference_batch",
            "-1 (TAO: all) -> 1: the batch size changes speed, not results",
        ),
        fixed("export.input_channel", 3, "RGB"),
        fixed("export.format", "onnx", "ONNX"),
        rename(
            trt + "data_type",
            trt + "data_type",
            "FP16 -> fp16",
            _lower_map(trt + "data_type", _TRT_TYPE),
        ),
        rename(trt + "calibration.cal_cache_file", trt + "calibration_cache"),
        ignored(trt + "calibration.cal_image_dir", None, "dataset.quant_calibration_dataset"),
        ignored(trt + "calibration.cal_batch_size", None, "calibration runs image by image"),
        ignored(trt + "calibration.cal_batches", None, "tensorrt.calibration_images"),
        ignored(trt + "layers_precision", None, "one precision for the engine"),
        ignored("gen_trt_engine.timing_cache", None, "no timing cache"),
        ignored("gen_trt_engine.batch_size", None, "tensorrt.min/opt/max_batch_size"),
        group(
            "quantize.model_path",
            "quantize",
            "the model to quantize: an .onnx -> quantize.onnx_file (oneseg quantizes the "
            "exported ONNX)",
        ),
        group(
            "quantize.mode",
            "quantize_mode",
            "static_ptq: calibrated static INT8; weight_only_ptq (TAO's default) refused by "
            "quantize only",
        ),
        rename(
            "quantize.algorithm",
            "quantize.calibration_method",
            "max -> minmax",
            _lower_map("quantize.algorithm", _CALIBRATION),
            optional=True,
        ),
        ignored("quantize.backend", None, "ONNX Runtime quantization"),
        ignored("quantize.device", "cuda", "quantization runs on the CPU"),
        ignored("quantize.layers", None, "INT8 throughout, quantize.keep_float excepted"),
        ignored("quantize.skip_names", None, "quantize.keep_float"),
        ignored("quantize.backend_kwargs", None, "no backend options"),
        ignored("encryption_key", None, "oneseg files are not encrypted"),
        ignored("model_name", None, "the spec sections say which model"),
        ignored("wandb.*", False, "metrics go to TensorBoard, CSV and status.json"),
        ignored("model.backbone.efficientvit.*", None, "read by TAO only with type efficientvit"),
        ignored("model.backbone.radio.*", None, "read by TAO only with name radio"),
    ]
    return rows


ALIASES: dict[str, Alias] = {
    row.tao: row
    for row in [
        *_model_rows(),
        *_decoder_rows("one_former"),
        *_decoder_rows("mask_former"),
        *_backbone_rows(),
        *_dataset_rows(),
        *_train_rows(),
        *_action_rows(),
    ]
}


def lookup(key: str) -> Alias | None:
    """The row of a dotted TAO key: exact, or a `prefix.*` row covering it."""
    row = ALIASES.get(key)
    if row is not None:
        return row
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        row = ALIASES.get(".".join(parts[:cut]) + ".*")
        if row is not None:
            return row
    return None


def is_prefix(key: str) -> bool:
    """Whether some TAO key lies below `key` (so a mapping there may hold TAO keys)."""
    start = key + "."
    return any(tao.startswith(start) for tao in ALIASES) or lookup(start + "x") is not None


def markdown_table() -> str:
    """The docs' table: TAO key | oneseg key | meaning."""
    lines = ["| TAO key | oneseg key | how |", "|---|---|---|"]
    for row in ALIASES.values():
        if row.kind == "fixed":
            target, how = "(built in)", f"only `{row.value!r}`: {row.how}"
        elif row.kind == "ignored":
            target, how = "(ignored, warns)", row.how
        elif row.kind == "group":
            target, how = f"(group: {row.target})", row.how
        else:
            target, how = f"`{row.target}`", row.how
        lines.append(f"| `{row.tao}` | {target} | {how} |")
    return "\n".join(lines) + "\n"
