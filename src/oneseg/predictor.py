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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from oneseg.checkpoint import load_model, read_intensity
from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.cpu_threads import keep_freed_memory, set_intra_op_threads
from oneseg.data.collate import padded_size
from oneseg.data.image_io import read_image, to_rgb
from oneseg.data.intensity import Intensity
from oneseg.data.label_map import LabelMap
from oneseg.data.transforms import eval_size
from oneseg.export.engines import load_engines
from oneseg.model.postprocess import PostprocessConfig, postprocess


# ---------------------------------------------------------------------------- model calls
# ---------------------------------------------------------------------------- results
@dataclass
class SemanticResult:
    labels: np.ndarray  # [H, W] int32 contiguous class index of every pixel
    category_map: np.ndarray  # [H, W] int32 the dataset's category id of every pixel
    classes: list[dict]  # classes present: label, category_id, name, area
    task: str = "semantic"


class QueryMasks:
    """N full-size masks [H, W] stored once per query: what `Predictor` returns as instance
    masks of an image too large for an [N, H, W] array (detections of one query under several
    classes share its mask). Indexes like that array: `masks[i]` is [H, W] bool, `len(masks)`
    is N; `np.asarray(masks)` builds the whole array.

    Arguments:
        query_masks: [U, H, W] bool, one mask per query kept.
        index: [N] int, the row of `query_masks` of each detection.
    """

    def __init__(self, query_masks: np.ndarray, index: np.ndarray):
        self.query_masks = query_masks
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.index), *self.query_masks.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.query_masks[self.index[i]]
        return QueryMasks(self.query_masks, self.index[i])

    def __array__(self, dtype=None, copy=None):
        array = self.query_masks[self.index]
        return array if dtype is None else array.astype(dtype)


@dataclass
class InstanceResult:
    masks: np.ndarray | QueryMasks  # [N, H, W] bool (QueryMasks for very large images)
    scores: np.ndarray  # [N] float32, decreasing class probability
    labels: np.ndarray  # [N] int64 contiguous class index
    category_ids: np.ndarray  # [N] int64 dataset category ids
    names: list[str]  # [N] class names
    task: str = "instance"


@dataclass
class PanopticResult:
    segment_ids: np.ndarray  # [H, W] int32, 0 = void
    segments: list[dict]  # id, label, category_id, name, isthing, score, area
    task: str = "panoptic"


Result = SemanticResult | InstanceResult | PanopticResult


def _semantic_result(labels: torch.Tensor, label_map: LabelMap) -> SemanticResult:
    labels = labels.cpu().numpy().astype(np.int32)
    category_ids = np.asarray(label_map.category_ids, dtype=np.int32)
    areas = np.bincount(labels.ravel(), minlength=len(label_map))
    classes = [
        {
            "label": int(k),
            "category_id": int(category_ids[k]),
            "name": label_map.names[k],
            "area": int(areas[k]),
        }
        for k in np.flatnonzero(areas)
    ]
    return SemanticResult(labels, category_ids[labels], classes)


def _instance_result(detections: dict, label_map: LabelMap) -> InstanceResult:
    labels = detections["labels"].cpu().numpy().astype(np.int64)
    if "query_masks" in detections:  # a very large image: one mask per query
        masks = QueryMasks(
            detections["query_masks"].cpu().numpy(), detections["mask_index"].cpu().numpy()
        )
    else:
        masks = detections["masks"].cpu().numpy().astype(bool)
    return InstanceResult(
        masks=masks,
        scores=detections["scores"].cpu().numpy().astype(np.float32),
        labels=labels,
        category_ids=np.asarray(label_map.category_ids, dtype=np.int64)[labels],
        names=[label_map.names[k] for k in labels],
    )


def _panoptic_result(panoptic: tuple, label_map: LabelMap) -> PanopticResult:
    segment_ids, segments = panoptic
    return PanopticResult(
        segment_ids=segment_ids.cpu().numpy().astype(np.int32),
        segments=[
            {
                "id": int(s["id"]),
                "label": int(s["label"]),
                "category_id": int(label_map.category_ids[s["label"]]),
                "name": label_map.names[s["label"]],
                "isthing": bool(s["isthing"]),
                "score": float(s["score"]),
                "area": int(s["area"]),
            }
            for s in segments
        ],
    )


# ---------------------------------------------------------------------------- predictor
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
    """A model, its classes and the settings that turn its outputs into results.

    Arguments:
        model: a OneFormer / Mask2Former network (see `oneseg.model.build`).
        label_map: its classes.
        min_size, max_size: the shortest edge the model sees, and the cap on the longest.
        postprocess: thresholds and top-k (`PostprocessConfig`; `from_checkpoint` takes the
            checkpoint's).
        intensity: how images of more than 8 bits become 0-255 (`oneseg.data.intensity`);
            `from_checkpoint` takes the rule recorded at training.
        device: where to run; default the GPU if there is one.
        cpu_threads: intra-op threads on the CPU; 0 = the cores this process may use (or
            OMP_NUM_THREADS when set), None = leave torch's setting alone. Unless None, the
            allocator also keeps freed memory for reuse (`cpu_threads.keep_freed_memory`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_map: LabelMap,
        *,
        min_size: int = 512,
        max_size: int = 2048,
        postprocess: PostprocessConfig | None = None,
        intensity: Intensity | None = None,
        device: str | torch.device | None = None,
        cpu_threads: int | None = 0,
    ):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if cpu_threads is not None and self.device.type == "cpu":
            set_intra_op_threads(cpu_threads)
            keep_freed_memory()
        self.model = model.to(self.device).eval()
        self.label_map = label_map
        self.min_size, self.max_size = min_size, max_size
        self.postprocess = postprocess or PostprocessConfig()
        self.intensity = intensity or Intensity()
        self.model_cfg: ModelConfig | None = None  # known when built from a checkpoint
        self.size_divisibility = getattr(model, "size_divisibility", 32)
        # task -> exported engine (ONNX Runtime / TensorRT), used instead of the model
        self.engines: dict | None = None

    @classmethod
    def from_exported(
        cls,
        path: str | Path,
        tasks: Sequence[str] = TASKS,
        *,
        min_size: int = 512,
        max_size: int = 2048,
        intensity: Intensity | None = None,
        key: str = "onnx_file",
    ) -> Predictor:
        """A predictor running a file of `oneseg export` (or a TensorRT engine built from it)
        for those of `tasks` it holds (an `export.task=all` file brings its siblings). Its
        classes, thresholds and intensity rule are those recorded at export."""
        engines = load_engines(path, list(tasks), key)
        first = next(iter(engines.values()))
        recorded = first.description.get("intensity") or {}
        predictor = cls(
            torch.nn.Identity(),
            first.label_map,
            min_size=min_size,
            max_size=max_size,
            intensity=intensity or Intensity.from_config(recorded),
            device="cpu",
        )
        predictor.engines = engines
        predictor.size_divisibility = first.size_divisibility
        return predictor

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        spec_model: ModelConfig | None = None,
        **settings,
    ) -> Predictor:
        """A predictor from any checkpoint `oneseg.checkpoint.load_model` reads. Thresholds are
        the checkpoint's model config's, with those `spec_model` (a spec's `model` section)
        sets to other than their defaults; `settings` (see the constructor) override all."""
        model, label_map, model_cfg = load_model(path)
        defaults = {
            "postprocess": PostprocessConfig.of_model(model_cfg, spec_model),
            "intensity": Intensity.from_config(read_intensity(path) or {}),
        }
        predictor = cls(model, label_map, device=device, **{**defaults, **settings})
        predictor.model_cfg = model_cfg
        return predictor

    def __call__(self, image, task: str = "panoptic") -> Result:
        """The result of one task on one image (path, PIL image or [H, W, 3] uint8 array)."""
        return self.predict([image], (task,))[0][task]

    def predict(self, images: Sequence, tasks: Sequence[str] = ("panoptic",)) -> list[dict]:
        """Results of several images, batched: one dict task -> result per image."""
        arrays = [as_rgb_array(image, self.intensity) for image in images]
        if not arrays:
            return []
        batch, image_sizes = self._batch(arrays)
        orig_sizes = [a.shape[:2] for a in arrays]
        if self.engines is not None:
            outputs = {task: self._engine(task) for task in tasks}
        else:
            outputs = self.model.predict(batch, tasks, image_sizes).outputs
        per_image: list[dict] = [{} for _ in arrays]
        for task, raw in outputs.items():
            if self.engines is not None:
                results = raw.predict(batch, image_sizes, orig_sizes)
            else:
                results = postprocess(
                    raw,
                    task,
                    tuple(batch.shape[-2:]),
                    image_sizes,
                    orig_sizes,
                    num_classes=len(self.label_map),
                    isthing=self.label_map.isthing,
                    config=self.postprocess,
                )
            for store, result in zip(per_image, results):
                if task == "semantic":
                    store[task] = _semantic_result(result["semantic"], self.label_map)
                elif task == "instance":
                    store[task] = _instance_result(result["instance"], self.label_map)
                else:
                    store[task] = _panoptic_result(result["panoptic"], self.label_map)
        return per_image

    def _engine(self, task: str):
        if task not in self.engines:
            path = next(iter(self.engines.values())).path
            raise ValueError(f"{path}: holds no {task} graph (it has {', '.join(self.engines)})")
        return self.engines[task]

    def _batch(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """uint8 [B, 3, Hp, Wp] on the device, zero padded, and the resized (h, w) of each."""
        resized = []
        for array in arrays:
            height, width = eval_size(
                *array.shape[:2], self.min_size, self.max_size, getattr(self, "resize", None)
            )
            if (height, width) != array.shape[:2]:  # bilinear, as the evaluation transform
                array = np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
            resized.append(array)
        sizes = [a.shape[:2] for a in resized]
        height, width = padded_size(sizes, self.size_divisibility)
        batch = torch.zeros(len(resized), 3, height, width, dtype=torch.uint8)
        for i, array in enumerate(resized):
            batch[i, :, : array.shape[0], : array.shape[1]] = torch.tensor(array).permute(2, 0, 1)
        return batch.to(self.device), [(int(h), int(w)) for h, w in sizes]
