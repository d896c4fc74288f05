"""One way to run a model: uint8 images and their sizes in, results (`oneseg.results`) out.

    opened = open_model("model.ckpt")                 # or an .onnx file, or a TensorRT engine
    results = opened.runner.run(images, image_sizes, output_sizes, ["panoptic"])
    results[0]["panoptic"].segment_ids                # [H, W] int32 at output_sizes[0]

A runner takes a padded batch as the evaluation loader makes it (`[B, 3, H, W]` uint8, RGB,
images at the top left, each resized to the evaluation size) and returns, per image, a dict
task -> result at the size asked for. `TorchRunner` runs a PyTorch model (`model.predict` +
`postprocess`), `ExportedRunner` the graphs of `oneseg export` in ONNX Runtime or TensorRT.
`Predictor`, `evaluate`, `inference`, quantize's accuracy report and the training validation
step all run models through this interface, and so do the server, tiles and multi-process
evaluation built on it.

`open_model` opens any model source once (checkpoint, transformers folder, exported file,
engine) and returns the runner with what goes around it: label map, recorded intensity rule,
input size contract and the tasks it can run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.data.label_map import LabelMap
from oneseg.model.postprocess import (
    PostprocessConfig,
    postprocess,
    resize_mask_logits,
    semantic_inference,
)
from oneseg.precision import choose_precision
from oneseg.results import Result

EXPORTED_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")


@runtime_checkable
class Runner(Protocol):
    """What every way of running a model offers.

    Attributes:
        label_map: the model's classes.
        tasks: the tasks it can run.
        size_divisibility: input heights and widths it takes are multiples of this.
    """

    label_map: LabelMap
    tasks: tuple[str, ...]
    size_divisibility: int

    def run(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        output_sizes: Sequence[tuple[int, int]] | None = None,
        tasks: Sequence[str] = ("panoptic",),
    ) -> list[dict[str, Result]]:
        """Results of `tasks` for each image.

        Arguments:
            images: [B, 3, H, W] uint8 RGB, each image at the top left, zero padded.
            image_sizes: B x (h, w), the part of each input that is image.
            output_sizes: B x (h, w) to give results at (the original sizes); default
                `image_sizes`.
            tasks: tasks of `self.tasks`.
        Returns:
            B dicts task -> `SemanticResult` / `InstanceResult` / `PanopticResult`.
        """
        ...


def _check_tasks(tasks: Sequence[str], runnable: Sequence[str], source: str) -> list[str]:
    tasks = list(dict.fromkeys(tasks))
    missing = [t for t in tasks if t not in runnable]
    if missing:
        raise ValueError(
            f"{source}: cannot run {', '.join(missing)} (it runs {', '.join(runnable)})"
        )
    return tasks


class TorchRunner:
    """A PyTorch OneFormer / Mask2Former: one forward for every task asked (the backbone and
    pixel decoder run once), then `postprocess` per task.

    Arguments:
        model: the network, in eval mode, on its device.
        label_map: its classes.
        postprocess: thresholds and top-k.
        tasks: the tasks the model does (a Mask2Former trained for one task does that one).
        precision: the forward's, "fp32", "bf16", "fp16" or "auto" (`oneseg.precision`);
            `self.precision` holds the one picked. Post-processing is float32 in every case.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_map: LabelMap,
        postprocess: PostprocessConfig | None = None,
        tasks: Sequence[str] = TASKS,
        precision: str = "fp32",
    ):
        num_classes = getattr(model, "num_classes", len(label_map))
        if num_classes != len(label_map):
            raise ValueError(
                f"the model predicts {num_classes} classes, the label map has {len(label_map)}"
            )
        self.model = model
        self.label_map = label_map
        self.postprocess = postprocess or PostprocessConfig()
        self.tasks = tuple(tasks)
        self.size_divisibility = int(getattr(model, "size_divisibility", 32))
        self.precision = choose_precision(precision, self.device)

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.inference_mode()
    def run(self, images, image_sizes, output_sizes=None, tasks=("panoptic",)):
        tasks = _check_tasks(tasks, self.tasks, "the model")
        image_sizes = [tuple(map(int, s)) for s in image_sizes]
        output_sizes = [tuple(map(int, s)) for s in (output_sizes or image_sizes)]
        images = images.to(self.device, non_blocking=True)
        prediction = self.model.predict(images, tasks, image_sizes, self.precision)
        per_image: list[dict[str, Result]] = [{} for _ in image_sizes]
        self._postprocess(prediction, tasks, output_sizes, per_image)
        return per_image

    def _postprocess(self, prediction, tasks, output_sizes, per_image: list[dict]) -> None:
        """Each task's results of `prediction`, at `output_sizes`, into `per_image`."""
        for task in tasks:
            results = postprocess(
                prediction.outputs[task],
                task,
                prediction.padded_size,
                prediction.image_sizes,
                output_sizes,
                label_map=self.label_map,
                config=self.postprocess,
            )
            for store, result in zip(per_image, results):
                store[task] = result

    @torch.inference_mode()
    def run_scored(self, images, image_sizes, tasks=("semantic",)):
        """As `run` at the input sizes, but the semantic task gives its per-class score maps
        instead of their arg-max: what tiled inference (`oneseg.tiling`) blends across windows.

        Returns:
            B dicts task -> result; "semantic" -> [K, h, w] float32 scores, whose `argmax(0)`
            is the label map `run` gives; with "panoptic" also "panoptic_scores": the same
            class scores of the panoptic forward (they decide the stuff of a tiled image).
        """
        tasks = _check_tasks(tasks, self.tasks, "the model")
        image_sizes = [tuple(map(int, s)) for s in image_sizes]
        others = [t for t in tasks if t != "semantic"]
        images = images.to(self.device, non_blocking=True)
        prediction = self.model.predict(images, tasks, image_sizes, self.precision)
        per_image: list[dict] = [{} for _ in image_sizes]
        for task, key in (("semantic", "semantic"), ("panoptic", "panoptic_scores")):
            if task not in tasks:
                continue
            outputs = prediction.outputs[task]
            for i, (store, size) in enumerate(zip(per_image, image_sizes)):
                masks = resize_mask_logits(
                    outputs["pred_masks"][i : i + 1], prediction.padded_size, size, size
                )[0]
                store[key] = semantic_inference(outputs["pred_logits"][i], masks)
        self._postprocess(prediction, others, image_sizes, per_image)
        return per_image


class ExportedRunner:
    """The graphs of `oneseg export` (one per task) in ONNX Runtime or TensorRT.

    Arguments:
        engines: task -> engine (`oneseg.export.engines.load_engines`), of one label map.
    """

    def __init__(self, engines: dict):
        if not engines:
            raise ValueError("an exported runner needs at least one graph")
        self.engines = dict(engines)
        first = next(iter(self.engines.values()))
        self.path = first.path
        self.description = first.description
        self.label_map = first.label_map
        self.size_divisibility = first.size_divisibility
        self.tasks = tuple(self.engines)

    def run(self, images, image_sizes, output_sizes=None, tasks=("panoptic",)):
        tasks = _check_tasks(tasks, self.tasks, str(self.path))
        image_sizes = [tuple(map(int, s)) for s in image_sizes]
        output_sizes = [tuple(map(int, s)) for s in (output_sizes or image_sizes)]
        per_image: list[dict[str, Result]] = [{} for _ in image_sizes]
        for task in tasks:
            results = self.engines[task].predict(images, image_sizes, output_sizes)
            for store, result in zip(per_image, results):
                store[task] = result
        return per_image


def run_batch(runner: Runner, batch: dict, tasks: Sequence[str]) -> list[dict[str, Result]]:
    """A runner's results on a batch of the evaluation loader, at the images' original sizes."""
    return runner.run(batch["images"], batch["image_sizes"], batch["orig_sizes"], tasks)


@dataclass
class OpenedModel:
    """A model source opened once, with what is needed around its runner.

    Attributes:
        runner: runs it.
        source: what was opened (path or name).
        label_map: its classes.
        tasks: the tasks asked for that it runs (all it runs when none were asked).
        dropped: the tasks asked for that it cannot run.
        intensity: the intensity rule recorded at training or export, or None.
        size_divisibility: its inputs' sides are multiples of this.
        input_size: (height, width) of a fixed-size exported graph, None when any size goes.
        model_cfg: the model config of a checkpoint, None for an exported file.
        description: what `oneseg export` recorded in an exported file, empty for checkpoints.
    """

    runner: Runner
    source: str
    label_map: LabelMap
    tasks: list[str]
    dropped: list[str]
    intensity: dict | None = None
    size_divisibility: int = 32
    input_size: tuple[int, int] | None = None
    model_cfg: ModelConfig | None = None
    description: dict = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch model of a checkpoint, None for an exported file."""
        return getattr(self.runner, "model", None)

    def dropped_message(self, doing: str) -> str:
        """One line on the tasks in `dropped`: what the model does instead, and `doing` with
        them (e.g. "skipping")."""
        dropped = ", ".join(self.dropped)
        if self.model_cfg is not None:
            return (
                f"a {self.model_cfg.arch} model in {self.model_cfg.mode} mode does "
                f"{', '.join(self.tasks)}: {doing} {dropped}"
            )
        return f"{self.source} holds no {dropped} graph: {doing} it"


def is_exported(source: str | Path) -> bool:
    """Whether a source names an exported graph or engine rather than a checkpoint."""
    return Path(str(source)).suffix.lower() in EXPORTED_SUFFIXES


def open_model(
    source: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    device: str | torch.device | None = None,
    spec_model: ModelConfig | None = None,
    postprocess: PostprocessConfig | None = None,
    key: str = "model",
    precision: str = "fp32",
) -> OpenedModel:
    """Open a checkpoint (any source `oneseg.checkpoint.read_checkpoint` reads), an ONNX file of
    `oneseg export` or a TensorRT engine built from one, reading it once.

    Arguments:
        tasks: the tasks wanted; those the model cannot run are listed in `dropped` (when it
            runs none of them, its own are taken). None: all it runs.
        device: for a checkpoint; default the GPU when there is one.
        spec_model: a spec's `model` section, whose post-processing settings apply over the
            checkpoint's (see `PostprocessConfig.of_model`).
        postprocess: settings that override both.
        key: the spec key that named the source, for errors.
        precision: a checkpoint's forward precision (`TorchRunner`); an exported file runs in
            the precision it was built in, and bf16 / fp16 asked for one are refused.
    """
    wanted = list(dict.fromkeys(tasks if tasks is not None else TASKS))
    if is_exported(source):
        if precision in ("bf16", "fp16"):
            raise ValueError(f"{source}: an exported file runs in the precision it was built in")
        return _open_exported(source, wanted, key)
    return _open_checkpoint(source, wanted, device, spec_model, postprocess, precision)


def _open_exported(source, wanted: list[str], key: str) -> OpenedModel:
    from oneseg.export.engines import load_engines

    engines = load_engines(source, wanted, key)
    runner = ExportedRunner(engines)
    first = next(iter(engines.values()))
    return OpenedModel(
        runner=runner,
        source=str(source),
        label_map=runner.label_map,
        tasks=list(runner.tasks),
        dropped=[t for t in wanted if t not in engines],
        intensity=runner.description.get("intensity") or None,
        size_divisibility=runner.size_divisibility,
        input_size=None if first.dynamic_size else (first.height, first.width),
        description=runner.description,
    )


def _open_checkpoint(
    source, wanted, device, spec_model, postprocess_cfg, precision="fp32"
) -> OpenedModel:
    from oneseg.checkpoint import open_checkpoint
    from oneseg.model.build import supported_tasks

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = open_checkpoint(source, device)
    post = postprocess_cfg or PostprocessConfig.of_model(loaded.model_cfg, spec_model)
    own, _ = supported_tasks(loaded.model_cfg, list(TASKS))
    tasks, dropped = supported_tasks(loaded.model_cfg, wanted)
    runner = TorchRunner(loaded.model, loaded.label_map, post, own, precision)
    return OpenedModel(
        runner=runner,
        source=str(source),
        label_map=loaded.label_map,
        tasks=tasks,
        dropped=dropped,
        intensity=loaded.intensity,
        size_divisibility=runner.size_divisibility,
        model_cfg=loaded.model_cfg,
    )
