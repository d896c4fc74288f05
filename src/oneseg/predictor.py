"""Segmenting images in Python: `Predictor` and the results it returns.

    predictor = Predictor.from_checkpoint("model.pth")
    result = predictor("street.jpg", task="panoptic")   # a path, a PIL image or an array
    result.segment_ids, result.segments                 # numpy [H, W] and a list of dicts

Images are prepared as for evaluation: shortest edge resized to `min_size` (longest at most
`max_size`), padded to the model's size divisibility; results come back at the original size,
as plain numpy arrays with class names and the dataset's category ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.cpu_threads import keep_freed_memory, set_intra_op_threads
from oneseg.data.collate import padded_size
from oneseg.data.image_io import read_image, to_rgb
from oneseg.data.intensity import Intensity
from oneseg.data.label_map import LabelMap
from oneseg.data.transforms import eval_size
from oneseg.model.postprocess import PostprocessConfig
from oneseg.precision import choose_precision
from oneseg.results import (  # noqa: F401 - the result types are part of the predictor's API
    InstanceResult,
    PanopticResult,
    QueryMasks,
    Result,
    SemanticResult,
)
from oneseg.runner import OpenedModel, Runner, TorchRunner, open_model
from oneseg.tiling import run_tiled, should_tile, tile_settings


def as_rgb_array(image, intensity: Intensity | None = None) -> np.ndarray:
    """[H, W, 3] uint8 RGB from a path, a PIL image (EXIF orientation applied) or an array
    ([H, W, 3] or [H, W, 4] uint8, or [H, W] grayscale). Paths and PIL images of more than
    8 bits are stretched to 0-255 by `intensity`."""
    if isinstance(image, str | os.PathLike):
        return read_image(image, intensity)
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(ImageOps.exif_transpose(image), intensity))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 0-255, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or 0 in array.shape:
        raise ValueError(f"an image array must be [H, W, 3] RGB, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3])


class Predictor:
    """A model, its classes and the settings that turn images into results.

    Arguments:
        model: a OneFormer / Mask2Former network (see `oneseg.model.build`), or any runner
            (`oneseg.runner.Runner`: an exported graph, an engine).
        label_map: the network's classes (a runner brings its own).
        min_size, max_size: the shortest edge the model sees, and the cap on the longest.
        postprocess: thresholds and top-k for a network (`PostprocessConfig`;
            `from_checkpoint` takes the checkpoint's).
        intensity: how images of more than 8 bits become 0-255 (`oneseg.data.intensity`);
            `from_checkpoint` takes the rule recorded at training.
        device: where a network runs; default the GPU if there is one.
        cpu_threads: intra-op threads on the CPU; 0 = the cores this process may use (or
            OMP_NUM_THREADS when set), None = leave torch's setting alone. Unless None, the
            allocator also keeps freed memory for reuse (`cpu_threads.keep_freed_memory`).
        precision: a network's forward precision, "fp32", "bf16", "fp16" or "auto"
            (`oneseg.precision`; default fp32, or the runner's own). `self.precision` is the
            one picked, None for an exported graph (it runs in the precision it was built in).
        tile: tiled inference (`oneseg.tiling`): a `TileConfig`, a mapping of its keys (mode
            "on" unless given), "on", "auto" or "off"/None; windows of `size` (0 = `min_size`)
            at each image's own scale instead of resizing it.
    """

    def __init__(
        self,
        model: torch.nn.Module | Runner,
        label_map: LabelMap | None = None,
        *,
        min_size: int = 512,
        max_size: int = 2048,
        postprocess: PostprocessConfig | None = None,
        intensity: Intensity | None = None,
        device: str | torch.device | None = None,
        cpu_threads: int | None = 0,
        precision: str | None = None,
        tile=None,
    ):
        if isinstance(model, torch.nn.Module):
            if label_map is None:
                raise ValueError("a Predictor of a network needs its label_map")
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = model.to(device).eval()
            model = TorchRunner(model, label_map, postprocess, precision=precision or "fp32")
        elif isinstance(model, TorchRunner) and precision is not None:
            model.precision = choose_precision(precision, model.device)
        elif precision in ("bf16", "fp16"):
            raise ValueError(f"precision {precision}: an exported graph runs in its own precision")
        self.runner: Runner = model
        self.device = getattr(model, "device", torch.device("cpu"))
        if cpu_threads is not None and self.device.type == "cpu":
            set_intra_op_threads(cpu_threads)
            keep_freed_memory()
        self.label_map = self.runner.label_map
        self.min_size, self.max_size = min_size, max_size
        self.tile = tile_settings(tile, min_size)  # (mode, size, overlap, batch_size, join)
        self.intensity = intensity or Intensity()
        self.model_cfg: ModelConfig | None = None  # known when built from a checkpoint

    @classmethod
    def from_opened(cls, opened: OpenedModel, **settings) -> Predictor:
        """A predictor of a model `oneseg.runner.open_model` opened; `settings` (see the
        constructor) take over from the recorded intensity rule."""
        settings.setdefault("intensity", Intensity.from_config(opened.intensity or {}))
        predictor = cls(opened.runner, **settings)
        predictor.model_cfg = opened.model_cfg
        return predictor

    @classmethod
    def from_exported(
        cls, path: str | Path, tasks: Sequence[str] = TASKS, *, key: str = "onnx_file", **settings
    ) -> Predictor:
        """A predictor running a file of `oneseg export` (or a TensorRT engine built from it)
        for those of `tasks` it holds (an `export.task=all` file brings its siblings). Its
        classes, thresholds and intensity rule are those recorded at export."""
        return cls.from_opened(open_model(path, tasks, key=key), **settings)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        spec_model: ModelConfig | None = None,
        **settings,
    ) -> Predictor:
        """A predictor from any checkpoint `oneseg.checkpoint.read_checkpoint` reads. Thresholds
        are the checkpoint's model config's, with those `spec_model` (a spec's `model` section)
        sets taking over; `settings` (see the constructor) override all."""
        opened = open_model(
            path,
            device=device,
            spec_model=spec_model,
            postprocess=settings.pop("postprocess", None),
            precision=settings.pop("precision", None) or "fp32",
        )
        return cls.from_opened(opened, **settings)

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch network, None for an exported graph."""
        return getattr(self.runner, "model", None)

    @property
    def precision(self) -> str | None:
        """The network's forward precision (`oneseg.precision`), None for an exported graph."""
        return getattr(self.runner, "precision", None)

    @property
    def postprocess(self) -> PostprocessConfig | None:
        """The network's thresholds (an exported graph has its own inside)."""
        return getattr(self.runner, "postprocess", None)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the model runs."""
        return tuple(self.runner.tasks)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        revision: str | None = None,
        device: str | torch.device | None = None,
        **settings,
    ) -> Predictor:
        """A predictor from a model on the Hugging Face Hub, named as transformers names it
        (`shi-labs/oneformer_ade20k_swin_tiny`, `facebook/mask2former-swin-large-coco-panoptic`,
        or `hf://ORG/NAME[@REVISION]`), or from a local folder or checkpoint of that name.
        revision: a branch, tag or commit (default: the repository's main branch)."""
        from oneseg.hub import as_hub_source, split_source  # imported on use

        source = as_hub_source(name) or name
        hub = split_source(source)
        if revision is not None and hub is not None:
            file = f"/{hub.filename}" if hub.filename else ""
            source = f"hf://{hub.repo_id}@{revision}{file}"
        return cls.from_checkpoint(source, device=device, **settings)

    def __call__(self, image, task: str = "panoptic") -> Result:
        """The result of one task on one image (path, PIL image or [H, W, 3] uint8 array)."""
        return self.predict([image], (task,))[0][task]

    def predict(self, images: Sequence, tasks: Sequence[str] = ("panoptic",)) -> list[dict]:
        """Results of several images, batched: one dict task -> result per image."""
        arrays = [as_rgb_array(image, self.intensity) for image in images]
        if not arrays:
            return []
        mode, size, overlap, windows, join = self.tile
        tiled = [should_tile(mode, *a.shape[:2], self.min_size, self.max_size) for a in arrays]
        plain = [a for a, t in zip(arrays, tiled) if not t]
        results = []
        if plain:
            batch, image_sizes = self._batch(plain)
            orig_sizes = [a.shape[:2] for a in plain]
            results = self.runner.run(batch, image_sizes, orig_sizes, tasks)
        results = iter(results)
        return [
            run_tiled(self.runner, a, tasks, size, overlap, windows, join) if t else next(results)
            for a, t in zip(arrays, tiled)
        ]

    def _batch(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """uint8 [B, 3, Hp, Wp], zero padded, and the resized (h, w) of each."""
        resized = []
        for array in arrays:
            height, width = eval_size(
                *array.shape[:2], self.min_size, self.max_size, getattr(self, "resize", None)
            )
            if (height, width) != array.shape[:2]:  # bilinear, as the evaluation transform
                array = np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
            resized.append(array)
        sizes = [a.shape[:2] for a in resized]
        height, width = padded_size(sizes, self.runner.size_divisibility)
        batch = torch.zeros(len(resized), 3, height, width, dtype=torch.uint8)
        for i, array in enumerate(resized):
            batch[i, :, : array.shape[0], : array.shape[1]] = torch.tensor(array).permute(2, 0, 1)
        return batch, [(int(h), int(w)) for h, w in sizes]
