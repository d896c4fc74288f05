"""Segmenting images with a trained model: the Python `Predictor` and the `inference` action.

    predictor = Predictor.from_checkpoint("model.pth")
    result = predictor("street.jpg", task="panoptic")   # a path, a PIL image or an array
    result.segment_ids, result.segments                 # numpy [H, W] and a list of dicts

Images are prepared as for evaluation: shortest edge resized to `min_size` (longest at most
`max_size`), padded to the model's size divisibility; results come back at the original size,
as plain numpy arrays with class names and the dataset's category ids.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from oneseg.config import ModelConfig
from oneseg.cpu_threads import set_intra_op_threads
from oneseg.data.collate import padded_size
from oneseg.data.image_io import read_image, to_rgb
from oneseg.data.intensity import Intensity
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError
from oneseg.data.transforms import shortest_edge_size
from oneseg.model.postprocess import TASKS, postprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")
LIST_SUFFIXES = (".txt", ".lst", ".list")
FLUSH_EVERY_IMAGES = 25
FLUSH_EVERY_SECONDS = 30.0


# ---------------------------------------------------------------------------- model calls
@lru_cache(maxsize=16)
def task_tokens(task: str, length: int = 77, template: str | None = None) -> torch.Tensor:
    """[1, length] CLIP ids of the task prompt `template` (default "The task is {task}") of
    `task` (shared: do not modify in place)."""
    from oneseg.model.tokenizer import TASK_TEMPLATE, task_text, tokenize

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return tokenize(task_text(task, template or TASK_TEMPLATE), length)


def model_outputs(
    model: torch.nn.Module,
    images: torch.Tensor,
    tasks: Sequence[str],
    task_seq_len: int = 77,
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, dict]:
    """Raw outputs of the model for each task, under no_grad.

    Arguments:
        images: [B, 3, H, W] RGB 0-255 (any dtype), already padded, on the model's device.
        image_sizes: (h, w) of each image's content; the padding beyond is set to 0 after
            normalisation, as in training.
    Returns:
        task -> {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H/4, W/4]} in float32.
        OneFormer runs once per task; Mask2Former, which has no task input, runs once.
    """
    with torch.no_grad():
        sizes = [tuple(s) for s in image_sizes] if image_sizes is not None else None
        normalized = model.normalize(images.float(), sizes)
        outputs: dict[str, dict] = {}
        shared = None
        for task in tasks:
            if getattr(model, "arch", "oneformer") == "mask2former":
                if shared is None:
                    shared = model(normalized, None)
                raw = shared
            else:
                template = getattr(model, "task_text", None)
                tokens = task_tokens(task, task_seq_len, template).to(images.device)
                raw = model(normalized, tokens.expand(len(images), -1))
            outputs[task] = {k: raw[k].float() for k in ("pred_logits", "pred_masks")}
    return outputs


# ---------------------------------------------------------------------------- results
@dataclass
class SemanticResult:
    labels: np.ndarray  # [H, W] int32 contiguous class index of every pixel
    category_map: np.ndarray  # [H, W] int32 the dataset's category id of every pixel
    classes: list[dict]  # classes present: label, category_id, name, area
    task: str = "semantic"


@dataclass
class InstanceResult:
    masks: np.ndarray  # [N, H, W] bool
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
    return InstanceResult(
        masks=detections["masks"].cpu().numpy().astype(bool),
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
        object_mask_threshold, overlap_threshold, topk: see `oneseg.model.postprocess`.
        task_seq_len: length of the task token ids the model takes.
        intensity: how images of more than 8 bits become 0-255 (`oneseg.data.intensity`);
            `from_checkpoint` takes the rule recorded at training.
        device: where to run; default the GPU if there is one.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_map: LabelMap,
        *,
        min_size: int = 512,
        max_size: int = 2048,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        topk: int = 150,
        task_seq_len: int = 77,
        intensity: Intensity | None = None,
        device: str | torch.device | None = None,
    ):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.label_map = label_map
        self.min_size, self.max_size = min_size, max_size
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.topk = topk
        self.task_seq_len = task_seq_len
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
        from oneseg.export.runtime import load_engines

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
        cls, path: str | Path, device: str | torch.device | None = None, **settings
    ) -> Predictor:
        """A predictor from a oneseg checkpoint (or transformers folder). Thresholds default to
        the checkpoint's model config; `settings` (see the constructor) override them."""
        from oneseg.checkpoint import load_state_dict_strict, read_checkpoint, read_intensity
        from oneseg.model.build import build_model

        model_cfg, label_map, state_dict = read_checkpoint(path)
        model = build_model(model_cfg, num_classes=len(label_map))
        load_state_dict_strict(model, state_dict, str(path))
        defaults = {
            "object_mask_threshold": model_cfg.object_mask_threshold,
            "overlap_threshold": model_cfg.overlap_threshold,
            "topk": model_cfg.test_topk_per_image,
            "task_seq_len": model_cfg.task_seq_len,
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
            outputs = model_outputs(self.model, batch, tasks, self.task_seq_len, image_sizes)
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
                    topk=self.topk,
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
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
            height, width = shortest_edge_size(*array.shape[:2], self.min_size, self.max_size)
            if (height, width) != array.shape[:2]:  # bilinear, as the evaluation transform
                array = np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))
            resized.append(array)
        sizes = [a.shape[:2] for a in resized]
        height, width = padded_size(sizes, self.size_divisibility)
        batch = torch.zeros(len(resized), 3, height, width, dtype=torch.uint8)
        for i, array in enumerate(resized):
            batch[i, :, : array.shape[0], : array.shape[1]] = torch.tensor(array).permute(2, 0, 1)
        return batch.to(self.device), [(int(h), int(w)) for h, w in sizes]


# ---------------------------------------------------------------------------- the action
def list_images(images: str) -> tuple[list[Path], Path]:
    """The image files named by `inference.images` and the folder they are relative to.

    `images` is a folder (its image files, sorted), a text file listing one path per line
    (relative to the list's folder; '#' starts a comment), one image, or a glob pattern.
    Listed files that do not exist are kept: the run reports and skips them.
    """
    if not images:
        raise ValueError("inference.images is empty: give a folder, a glob, a list file or a file")
    source = Path(images)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        root = source
    elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in source.read_text().splitlines()]
        paths = [source.parent / line for line in lines if line and not line.startswith("#")]
        root = None
    elif source.is_file():
        paths, root = [source], source.parent
    else:
        paths = sorted(Path(p) for p in glob.glob(images, recursive=True) if Path(p).is_file())
        root = None
    paths = list(dict.fromkeys(paths))  # a file listed twice is segmented once
    if not paths:
        raise FileNotFoundError(f"inference.images: {images!r} names no image file")
    if root is None:
        root = Path(os.path.commonpath([p.absolute().parent for p in paths]))
    return paths, root


def relative_paths(paths: list[Path], root: Path) -> list[str]:
    """Each path below `root`, '/'-separated: the `file_name` of the COCO images list."""
    return [p.absolute().relative_to(root.absolute()).as_posix() for p in paths]


def output_names(paths: list[Path], root: Path) -> list[str]:
    """A unique, stable file stem for each image: its path below `root` without the suffix,
    folders joined by '__' (the suffix stays, as '_jpg', where two files share a stem)."""
    rel = relative_paths(paths, root)
    stems = [r.rsplit(".", 1)[0] if "." in Path(r).name else r for r in rel]
    stems = [s.replace("/", "__") for s in stems]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return [
        stem if counts[stem] == 1 else r.replace("/", "__").replace(".", "_")
        for stem, r in zip(stems, rel)
    ]


def spec_postprocess_overrides(spec_model: ModelConfig) -> dict:
    """The post-processing settings (`object_mask_threshold`, `overlap_threshold`,
    `test_topk_per_image`) that the spec sets to other than their defaults. The others come from
    the checkpoint's model config: its thresholds are those chosen for the model."""
    defaults = ModelConfig()
    fields = ("object_mask_threshold", "overlap_threshold", "test_topk_per_image")
    return {
        name: getattr(spec_model, name)
        for name in fields
        if getattr(spec_model, name) != getattr(defaults, name)
    }


def _read_ahead(
    paths: list[Path], depth: int, intensity: Intensity | None = None
) -> Iterator[tuple[Path, np.ndarray | Exception]]:
    """(path, image or its read error) in order, decoding up to `depth` images ahead."""

    def read(path: Path):
        try:
            return read_image(path, intensity)
        except DataError as err:
            return err

    with ThreadPoolExecutor(max_workers=2) as pool:
        queue: deque[tuple[Path, Future]] = deque()
        for path in paths:
            queue.append((path, pool.submit(read, path)))
            if len(queue) > depth:
                done_path, future = queue.popleft()
                yield done_path, future.result()
        while queue:
            done_path, future = queue.popleft()
            yield done_path, future.result()


def _good_batches(reads, batch_size: int, on_bad) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Batches of readable images; `on_bad(path, error)` for each image that is not."""
    batch = []
    for path, image in reads:
        if isinstance(image, Exception):
            on_bad(path, image)
            continue
        batch.append((path, image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_inference(spec, run) -> None:
    """The `inference` action: each task of `inference.tasks` on every image of
    `inference.images`, written into `run.dir` (see `oneseg.results_io.InferenceOutputs`).

    Images whose outputs are all there are skipped unless `inference.overwrite`; an image that
    cannot be read is reported (status.json and stderr) and skipped.
    """
    from rich.progress import Progress

    from oneseg.results_io import InferenceOutputs

    cfg = spec.inference
    set_intra_op_threads(spec.cpu_threads)  # images are read ahead by threads, not processes
    if cfg.onnx_file or cfg.trt_engine:
        predictor, tasks, dropped = _exported_predictor(spec)
        if dropped:
            run.log("RUNNING", f"the exported file holds no {', '.join(dropped)} graph: skipped")
    else:
        predictor, tasks = _checkpoint_predictor(spec, run)
    paths, root = list_images(cfg.images)
    outputs = InferenceOutputs(run.dir, predictor.label_map, tasks, cfg.overlay, cfg.semantic_ids)
    todo = {
        path: (name, rel)
        for path, name, rel in zip(paths, output_names(paths, root), relative_paths(paths, root))
        if cfg.overwrite or not outputs.is_done(name)
    }
    run.log("RUNNING", f"{len(todo)} of {len(paths)} images to segment; the others are done")
    counts = {"images": len(paths), "already_done": len(paths) - len(todo), "segmented": 0}
    bad: list[str] = []
    last_flush, unflushed = time.time(), 0
    try:
        with Progress(transient=True) as progress:
            bar = progress.add_task("inference", total=len(todo))

            def on_bad(path: Path, error: Exception) -> None:
                _report_bad_image(run, path, error, bad)
                progress.advance(bar)

            reads = _read_ahead(list(todo), 2 * cfg.batch_size, predictor.intensity)
            for batch in _good_batches(reads, cfg.batch_size, on_bad):
                results = predictor.predict([image for _, image in batch], tasks)
                for (path, image), result in zip(batch, results):
                    name, rel = todo[path]
                    outputs.add(name, path, rel, image, result)
                counts["segmented"] += len(batch)
                unflushed += len(batch)
                progress.advance(bar, len(batch))
                if (
                    unflushed >= FLUSH_EVERY_IMAGES
                    or time.time() - last_flush > FLUSH_EVERY_SECONDS
                ):
                    outputs.flush()
                    last_flush, unflushed = time.time(), 0
    finally:
        outputs.flush()
    counts["bad_images"] = len(bad)
    run.kpis.update(counts)
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    print(f"inference: {summary}; results in {run.dir}")


def _exported_predictor(spec) -> tuple[Predictor, list[str], list[str]]:
    """The predictor of `inference.onnx_file` / `inference.trt_engine`, the tasks it runs of
    those asked for and those it cannot."""
    from oneseg.data.intensity import choose_intensity

    cfg = spec.inference
    key = "inference.onnx_file" if cfg.onnx_file else "inference.trt_engine"
    aug = spec.dataset.augmentation
    predictor = Predictor.from_exported(
        cfg.onnx_file or cfg.trt_engine,
        list(cfg.tasks),
        min_size=aug.eval_min_size,
        max_size=aug.eval_max_size,
        key=key,
    )
    recorded = next(iter(predictor.engines.values())).description.get("intensity")
    predictor.intensity = choose_intensity(spec.dataset.intensity, recorded)
    tasks = [t for t in dict.fromkeys(cfg.tasks) if t in predictor.engines]
    dropped = [t for t in dict.fromkeys(cfg.tasks) if t not in predictor.engines]
    return predictor, tasks, dropped


def _checkpoint_predictor(spec, run) -> tuple[Predictor, list[str]]:
    from oneseg.checkpoint import read_intensity
    from oneseg.data.intensity import choose_intensity
    from oneseg.model.build import supported_tasks

    cfg = spec.inference
    checkpoint = cfg.checkpoint or spec.model.pretrained
    if not checkpoint:
        raise ValueError(
            "inference.checkpoint is empty (and model.pretrained, inference.onnx_file and "
            "inference.trt_engine too): name a model"
        )
    aug = spec.dataset.augmentation
    predictor = Predictor.from_checkpoint(
        checkpoint,
        min_size=aug.eval_min_size,
        max_size=aug.eval_max_size,
        **{
            "topk" if name == "test_topk_per_image" else name: value
            for name, value in spec_postprocess_overrides(spec.model).items()
        },
        intensity=choose_intensity(spec.dataset.intensity, read_intensity(checkpoint)),
    )
    tasks, dropped = supported_tasks(predictor.model_cfg, list(cfg.tasks))
    if dropped:
        message = (
            f"a mask2former model in {predictor.model_cfg.mode} mode does {', '.join(tasks)}: "
            f"skipping {', '.join(dropped)}"
        )
        run.log("RUNNING", message)
        print(f"oneseg inference: {message}", file=sys.stderr)
    return predictor, tasks


def _report_bad_image(run, path: Path, error: Exception, bad: list[str]) -> None:
    reason = str(error) if str(path) in str(error) else f"{path}: {error}"
    bad.append(str(path))
    run.log("RUNNING", f"skipped a bad image: {reason}", bad_image=str(path))
    print(f"oneseg inference: skipped a bad image: {reason}", file=sys.stderr)
