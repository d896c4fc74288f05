"""The `export` action: a checkpoint to one ONNX file per task, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oneseg.checkpoint import open_checkpoint
from oneseg.constants import IMAGE_SUFFIXES, TASKS
from oneseg.data.image_io import read_image
from oneseg.data.intensity import choose_intensity
from oneseg.data.synth_draw import drawn_scene
from oneseg.export.inputs import resized_batch
from oneseg.export.onnx_export import ExportSettings, export_onnx
from oneseg.export.triton import write_triton_model
from oneseg.model.build import model_tasks
from oneseg.model.postprocess import PostprocessConfig


def check_image(spec) -> tuple[np.ndarray, str]:
    """[H, W, 3] uint8 picture to compare ONNX Runtime with PyTorch on, and where it is from:
    `export.check_image`, else the first image of `dataset.val.images`, else a drawn scene."""
    if spec.export.check_image:
        return read_image(spec.export.check_image), spec.export.check_image
    folder = Path(spec.dataset.val.images) if spec.dataset.val.images else None
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                return read_image(path), str(path)
    return drawn_scene(256, 256), "a drawn scene (no export.check_image nor dataset.val.images)"


def output_paths(spec, tasks: tuple[str, ...] = TASKS) -> dict[str, Path]:
    """task -> ONNX file; `tasks`: those the model does (`all` exports each of them)."""
    cfg = spec.export
    path = Path(cfg.onnx_file) if cfg.onnx_file else Path(spec.results_dir) / "export/model.onnx"
    if cfg.task != "all":
        if cfg.task not in tasks:
            raise ValueError(
                f"export.task: {cfg.task}; this model segments {', '.join(tasks)} only"
            )
        return {cfg.task: path}
    return {task: path.with_name(f"{path.stem}_{task}{path.suffix}") for task in tasks}


def run_export(spec, run) -> None:
    cfg = spec.export
    checkpoint = cfg.checkpoint or spec.model.pretrained
    if not checkpoint:
        raise ValueError("export.checkpoint is empty (and model.pretrained too): name a model")
    device = "cuda" if torch.cuda.is_available() and not cfg.on_cpu else "cpu"
    model, label_map, model_cfg, recorded = open_checkpoint(checkpoint, device)
    paths = output_paths(spec, model_tasks(model_cfg))
    if not cfg.overwrite:
        for path in paths.values():
            if path.exists():
                raise ValueError(f"{path}: exists (set export.overwrite=true to replace it)")
    post = PostprocessConfig.of_model(model_cfg, spec.model)
    # done before the graph: how images of more than 8 bits become its uint8 input
    intensity = choose_intensity(spec.dataset.intensity, recorded).to_dict()
    picture, source = check_image(spec)
    batch = 2 if cfg.batch_size == -1 else cfg.batch_size
    images = resized_batch(picture, cfg.input_height, cfg.input_width, batch).to(device)
    for task, path in paths.items():
        settings = ExportSettings(
            task=task,
            height=cfg.input_height,
            width=cfg.input_width,
            batch_size=cfg.batch_size,
            dynamic_size=cfg.dynamic_size,
            opset_version=cfg.opset_version,
            topk=post.topk,
            object_mask_threshold=post.object_mask_threshold,
            overlap_threshold=post.overlap_threshold,
            semantic_probs=cfg.semantic_probs,
        )
        run.log("RUNNING", f"exporting the {task} graph to {path}")
        description = export_onnx(
            model,
            label_map,
            settings,
            path,
            images,
            task_seq_len=model_cfg.task_seq_len,
            extra={"checkpoint": str(checkpoint), "check_image": source, "intensity": intensity},
        )
        run.kpis[f"{task}_onnx_mb"] = round(path.stat().st_size / 2**20, 2)
        print(f"export: {path} ({task}); ONNX Runtime agrees with PyTorch on {source}")
        run.log("RUNNING", f"{path}: checked", check=description["check"])
        if cfg.triton_repository:
            folder = write_triton_model(path, cfg.triton_repository)
            print(f"export: Triton model {folder}")
