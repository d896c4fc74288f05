"""The model card (README.md) of a model published with `oneseg push`.

Metadata (YAML front matter, read by the Hub): `library_name: transformers` (the folder is a
transformers folder), `pipeline_tag: image-segmentation`, tags naming oneseg and the
architecture. The text: architecture and backbone, the classes, the training data and spec
summary, the metrics of `oneseg evaluate` (metrics.json), the intensity rule, and how to load
the model with oneseg and with transformers.
"""

from __future__ import annotations

from pathlib import Path

from oneseg.config import ExperimentConfig, ModelConfig
from oneseg.data.label_map import LabelMap

METRIC_NAMES = {"pq": "PQ", "pq_th": "PQ (things)", "pq_st": "PQ (stuff)", "ap": "AP",
                "ap50": "AP50", "miou": "mIoU"}  # fmt: skip


def _front_matter(model_cfg: ModelConfig) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["oneseg", model_cfg.arch, model_cfg.backbone, "image-segmentation"],
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _classes(label_map: LabelMap) -> list[str]:
    lines = ["| index | category id | name | kind |", "|---:|---:|---|---|"]
    for i, (cid, name, thing) in enumerate(
        zip(label_map.category_ids, label_map.names, label_map.isthing)
    ):
        lines.append(f"| {i} | {cid} | {name} | {'thing' if thing else 'stuff'} |")
    return lines


def _metrics(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["No evaluation was given (`push.metrics_file`); run `oneseg evaluate` first."]
    values = metrics.get("metrics", {})
    rows = [
        f"| {METRIC_NAMES.get(k, k)} | {v:.2f} |"
        for k, v in values.items()
        if isinstance(v, int | float) and k in METRIC_NAMES
    ]
    where = f"`{metrics.get('split', '?')}` split"
    return [f"Measured by `oneseg evaluate` on the {where}:", "", "| metric | value |",
            "|---|---:|", *rows]  # fmt: skip


def _data_summary(spec: ExperimentConfig) -> list[str]:
    ds, train = spec.dataset, spec.train
    sources = [Path(s.images).name or "(unset)" for s in ds.train]
    crop = "x".join(map(str, ds.augmentation.crop_size)) or "none"
    return [
        f"- dataset format: `{ds.type}`; training images: {', '.join(sources)}",
        f"- epochs: {train.num_epochs}; batch size per process: {spec.dataset.batch_size}; "
        f"lr: {train.optim.lr}; schedule: {train.optim.lr_scheduler}; precision: {train.precision}",
        f"- training crop: {crop}; shortest-edge sizes: {ds.augmentation.train_min_size}",
    ]


def _intensity(intensity: dict | None) -> str:
    if not intensity:
        return "8-bit images are used as they are (no rule for images of more bits was recorded)."
    rule = ", ".join(f"{k}={v}" for k, v in intensity.items())
    return (
        f"Images of more than 8 bits are brought to 0-255 by the rule ({rule}) recorded at "
        "training; oneseg applies it when loading this model. 8-bit images are not changed."
    )


def model_card(
    repo_id: str,
    model_cfg: ModelConfig,
    label_map: LabelMap,
    spec: ExperimentConfig,
    metrics: dict | None,
    intensity: dict | None,
    onnx_files: list[str],
) -> str:
    """README.md text of the published folder."""
    arch = {"oneformer": "OneFormer", "mask2former": "Mask2Former"}[model_cfg.arch]
    cls = f"{arch}ForUniversalSegmentation"
    processor = f"{arch}ImageProcessor"
    tasks = (
        "semantic, instance and panoptic (one model, the task chosen at run time)"
        if model_cfg.arch == "oneformer"
        else f"{model_cfg.mode}"
    )
    lines = [
        _front_matter(model_cfg),
        f"# {repo_id}",
        "",
        f"{arch} with a `{model_cfg.backbone}` backbone, trained with "
        "[oneseg](https://pypi.org/project/oneseg/); tasks: " + tasks + ".",
        "",
        "## Architecture",
        "",
        f"- {arch}, backbone `{model_cfg.backbone}`, {model_cfg.num_queries} queries, "
        f"hidden width {model_cfg.hidden_dim}, {model_cfg.dec_layers} masked-attention decoder "
        f"layers, {model_cfg.pixel_decoder.enc_layers} deformable pixel-decoder layers",
        f"- input: RGB normalised with mean {model_cfg.pixel_mean} and std {model_cfg.pixel_std} "
        f"(0-255 scale), padded to a multiple of {model_cfg.size_divisibility}",
        "",
        f"## Classes ({len(label_map)})",
        "",
        *_classes(label_map),
        "",
        "## Training data and spec",
        "",
        *_data_summary(spec),
        "",
        "## Metrics",
        "",
        *_metrics(metrics),
        "",
        "## Intensity",
        "",
        _intensity(intensity),
        "",
        "## Use with oneseg",
        "",
        "```python",
        "from oneseg.predictor import Predictor",
        "",
        f'predictor = Predictor.from_pretrained("{repo_id}")',
        'result = predictor("image.png", task="panoptic")',
        "```",
        "",
        f"or `oneseg inference -e spec.yaml inference.checkpoint=hf://{repo_id}`.",
        "",
        "## Use with transformers",
        "",
        "```python",
        f"from transformers import {cls}, {processor}",
        "",
        f'model = {cls}.from_pretrained("{repo_id}")',
        f'processor = {processor}.from_pretrained("{repo_id}")',
        "```",
        "",
        "`oneseg.json` holds what transformers' config has no place for (oneseg's model config, "
        "the label map with colours, the intensity rule).",
    ]
    if onnx_files:
        intro = "Exported graphs (post-processing inside), each with its description sidecar:"
        lines += ["", "## ONNX", "", intro, "", *[f"- `onnx/{name}`" for name in onnx_files]]
    return "\n".join(lines) + "\n"
