"""The `export` action: a checkpoint to one ONNX file per task, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oneseg.checkpoint import load_model, read_intensity
from oneseg.constants import IMAGE_SUFFIXES
from oneseg.data.image_io import read_image
from oneseg.data.intensity import choose_intensity
from oneseg.data.synth_draw import STUFF, paint_thing, shape_mask, stuff_layout, stuff_texture
from oneseg.errors import InputFileError
from oneseg.export.onnx_export import ExportSettings, export_onnx
from oneseg.export.runtime import TASKS
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


def drawn_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured picture with shapes, for when no photograph is at hand."""
    rng = np.random.default_rng(seed)
    layout = stuff_layout(rng, height, width)
    picture = np.zeros((height, width, 3), dtype=np.float32)
    for index, (name, _) in enumerate(STUFF):
        region = layout == index
        picture[region] = stuff_texture(name, rng, height, width)[region]
    for color, (cx, cy) in (((200, 40, 40), (0.3, 0.6)), ((40, 40, 200), (0.7, 0.7))):
        mask = shape_mask("circle", cx * width, cy * height, 0.15 * width, 0.0, height, width)
        picture[mask] = paint_thing(color, rng, height, width)[mask]
    return picture.clip(0, 255).astype(np.uint8)


def resized_batch(image: np.ndarray, height: int, width: int, batch: int) -> torch.Tensor:
    """[batch, 3, height, width] uint8 of `image` resized bilinearly (copies for a batch)."""
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return tensor[None].expand(max(batch, 1), -1, -1, -1).contiguous()


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
    model, label_map, model_cfg = load_model(checkpoint, device)
    paths = output_paths(spec, model_tasks(model_cfg))
    if not cfg.overwrite:
        for path in paths.values():
            if path.exists():
                raise InputFileError(f"{path}: exists (set export.overwrite=true to replace it)")
    post = PostprocessConfig.of_model(model_cfg, spec.model)
    # done before the graph: how images of more than 8 bits become its uint8 input
    intensity = choose_intensity(spec.dataset.intensity, read_intensity(checkpoint)).to_dict()
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
