"""Running an exported model with ONNX Runtime, with results shaped as PyTorch's.

    engine = OnnxEngine("model_panoptic.onnx")
    results = engine.predict(images, image_sizes, output_sizes)   # one result per image

An ONNX file holds one task. Files written together by `export.task=all` (`NAME_semantic.onnx`,
`NAME_instance.onnx`, `NAME_panoptic.onnx`) are found from any one of them, so evaluation and
inference can run every task from one spec key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oneseg.constants import TASKS
from oneseg.data.label_map import LabelMap
from oneseg.export.onnx_export import METADATA_KEY
from oneseg.results import InstanceResult, PanopticResult, Result, SemanticResult


def read_description(path: str | Path) -> dict:
    """The oneseg description stored in an exported ONNX file; one error naming the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - any parse failure means an unusable file
        raise ValueError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        from oneseg.export.tao_onnx import tao_refusal  # TAO's exports: say what they lack

        refusal = tao_refusal(path, proto)
        if refusal:
            raise ValueError(refusal)
        raise ValueError(f"{path}: not exported by `oneseg export` (no '{METADATA_KEY}' metadata)")
    return json.loads(props[METADATA_KEY])


def task_files(path: str | Path) -> dict[str, Path]:
    """task -> file of an export: the file itself, and its siblings of an `all` export."""
    path = Path(path)
    files = {read_description(path)["task"]: path}
    stem = path.stem
    for task in TASKS:
        if stem.endswith(f"_{task}"):
            base = stem[: -len(task) - 1]
            for other in TASKS:
                sibling = path.with_name(f"{base}_{other}{path.suffix}")
                if other not in files and sibling.is_file():
                    files[other] = sibling
    return files


class ExportedEngine:
    """What every runtime of an exported graph shares: its description, the checks of task and
    classes, fitting a batch to the graph's input, and results (`oneseg.results`).
    A subclass sets `path` and `description` and implements `run`."""

    path: Path
    description: dict

    def _read_description(self) -> None:
        self.task = self.description["task"]
        self.label_map = LabelMap.from_categories(self.description["classes"])
        spec = self.description["input"]
        self.height, self.width = int(spec["height"]), int(spec["width"])
        self.batch_size = int(spec["batch_size"])
        self.dynamic_size = bool(spec["dynamic_size"])
        self.size_divisibility = int(spec["size_divisibility"])

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs by name for [B, 3, H, W] uint8 images of an accepted size."""
        raise NotImplementedError

    def check(self, task: str | None = None, label_map: LabelMap | None = None) -> None:
        """Refuse, naming the file, a graph of another task or of other classes."""
        if task is not None and task != self.task:
            raise ValueError(f"{self.path}: a {self.task} graph; {task} was asked for")
        if label_map is not None and label_map.category_ids != self.label_map.category_ids:
            raise ValueError(
                f"{self.path}: exported for {len(self.label_map)} classes (category ids "
                f"{self.label_map.category_ids[:8]}...), the dataset has {len(label_map)} "
                f"({label_map.category_ids[:8]}...)"
            )

    def fit_inputs(
        self, images: torch.Tensor, image_sizes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The batch as the graph takes it, and the part of each input that is image.

        A dynamic-size graph takes the padded batch as it is; a fixed-size graph takes each
        image (its unpadded part) resized to the export size, bilinearly as in evaluation."""
        if self.dynamic_size:
            divisor = self.size_divisibility
            height, width = images.shape[-2:]
            pad_h, pad_w = (-height) % divisor, (-width) % divisor
            if pad_h or pad_w:
                images = F.pad(images, (0, pad_w, 0, pad_h))
            return self._pad_with_mean(images, image_sizes), list(image_sizes)
        size = (self.height, self.width)
        resized = [
            F.interpolate(image[None, :, :h, :w].float(), size=size, mode="bilinear")
            .round()
            .clamp(0, 255)
            .to(torch.uint8)[0]
            if (h, w) != size
            else image[:, :h, :w]
            for image, (h, w) in zip(images, image_sizes)
        ]
        return torch.stack(resized), [size] * len(resized)

    def _pad_with_mean(self, images: torch.Tensor, image_sizes) -> torch.Tensor:
        """Padding set to the mean colour: about 0 once normalised, as the model pads."""
        mean = torch.tensor(self.description["normalization"]["mean"]).round().to(torch.uint8)
        images = images.clone()
        for image, (h, w) in zip(images, image_sizes):
            image[:, h:, :] = mean[:, None, None]
            image[:, :, w:] = mean[:, None, None]
        return images

    def predict(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        output_sizes: list[tuple[int, int]] | None = None,
    ) -> list[Result]:
        """The result of this graph's task for each image, at `output_sizes`.

        Arguments:
            images: [B, 3, H, W] uint8, images padded at the bottom and right.
            image_sizes: B x (h, w), the unpadded part of each.
            output_sizes: B x size to report results at; default `image_sizes`.
        """
        output_sizes = output_sizes or image_sizes
        inputs, sizes = self.fit_inputs(images.cpu(), image_sizes)
        batches = [inputs] if self.batch_size == -1 else inputs.split(self.batch_size)
        raw: dict[str, list] = {}
        for chunk in batches:
            count = len(chunk)
            if self.batch_size != -1 and count < self.batch_size:  # a fixed batch: fill it
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch_size - count, -1, -1, -1)])
            for name, value in self.run(chunk.numpy()).items():
                raw.setdefault(name, []).extend(value[:count])
        return [self._result(raw, i, sizes[i], output_sizes[i]) for i in range(len(output_sizes))]

    def _result(self, raw: dict, i: int, size, output_size) -> Result:
        if self.task == "semantic":
            labels = _resize_map(torch.from_numpy(raw["semantic_map"][i]), size, output_size)
            return SemanticResult(labels, label_map=self.label_map)
        if self.task == "instance":
            classes = torch.from_numpy(raw["pred_classes"][i])
            kept = classes >= 0
            masks = torch.from_numpy(raw["pred_masks"][i])[kept]
            return InstanceResult(
                masks=_resize_map(masks, size, output_size),
                scores=torch.from_numpy(raw["pred_scores"][i])[kept],
                labels=classes[kept],
                label_map=self.label_map,
            )
        count = int(raw["num_segments"][i])
        segment_ids = _resize_map(torch.from_numpy(raw["panoptic_map"][i]), size, output_size)
        areas = torch.bincount(segment_ids.flatten().long(), minlength=count + 1)
        segments = []
        for k in range(count):
            label = int(raw["pred_classes"][i][k])
            segments.append(
                {
                    "id": k + 1,
                    "label": label,
                    "isthing": bool(self.label_map.isthing[label]),
                    "score": float(raw["pred_scores"][i][k]),
                    "area": int(areas[k + 1]),
                }
            )
        return PanopticResult(segment_ids, segments, label_map=self.label_map)


class OnnxEngine(ExportedEngine):
    """One exported task graph in an ONNX Runtime session.

    Arguments:
        path: the .onnx file written by `oneseg export` (or `oneseg quantize`).
        providers: ONNX Runtime execution providers; default CUDA when available, else CPU.
        threads: intra-op threads (0 = ONNX Runtime's choice).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        self.description = read_description(self.path)
        self._read_description()
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider",) if p in available]
            providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning, as oneseg's OpenMP setting for torch: a
        # spinning pool takes the cores from a data-loader worker, another session or process
        # (sessions that alternate in one process slowed each other 2-3x).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own types for bad graphs
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({err})") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images, np.uint8)})
        return dict(zip(self.output_names, outputs))


def _resize_map(values: torch.Tensor, size, output_size) -> torch.Tensor:
    """[..., H, W] map cropped to `size` (h, w) and resized (nearest) to `output_size`."""
    values = values[..., : size[0], : size[1]]
    if tuple(values.shape[-2:]) == tuple(output_size):
        return values
    dtype = values.dtype
    flat = values.reshape(-1, 1, *values.shape[-2:]).float()
    flat = F.interpolate(flat, size=tuple(output_size), mode="nearest-exact")
    return flat.reshape(*values.shape[:-2], *output_size).to(dtype)
