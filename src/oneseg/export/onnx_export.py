"""From a checkpoint to a checked ONNX file with its JSON sidecar.

`export_onnx` traces `ExportGraph` with the TorchScript exporter (with torch 2.14 it gives a
correct graph with dynamic batch and size; the dynamo exporter is not needed), runs
`onnx.checker`, runs the file once with ONNX Runtime on a real image and compares with PyTorch,
and only then moves the file into place: a file that disagrees is never left behind.

The sidecar (`model.json` beside `model.onnx`) and the ONNX metadata entry "oneseg" hold the
same description: task, classes, input size and layout, normalisation, post-processing settings,
output names, the exporting version and the agreement measured at export.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from oneseg import __version__
from oneseg.data.label_map import LabelMap
from oneseg.export.graph import ExportGraph
from oneseg.io import remove_stale_temporaries, temp_path, write_json_atomic
from oneseg.spec import SpecError
from oneseg.tokenizer import TASK_TEMPLATE, task_text, tokenize

METADATA_KEY = "oneseg"
# Agreement asked of ONNX Runtime against PyTorch: integer maps, classes and counts equal;
# scores within SCORE_ATOL; at most MAX_PIXEL_MISMATCH of the mask / map pixels may differ
# (a logit at 0 or two tied queries can fall either way under another kernel's rounding).
SCORE_ATOL = 1e-4
MAX_PIXEL_MISMATCH = 1e-4


class ExportError(ValueError):
    """An export that cannot be done or whose result disagrees with PyTorch."""


@dataclass
class ExportSettings:
    """What `export_onnx` bakes into the graph (the `export` spec section, resolved)."""

    task: str
    height: int
    width: int
    batch_size: int = -1  # -1: dynamic
    dynamic_size: bool = False
    opset_version: int = 17
    topk: int = 150
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    semantic_probs: bool = False


def task_token_ids(task: str, length: int, template: str | None = None) -> torch.Tensor:
    """[length] ids of the task prompt: the model's `task_text` template (default the
    original's), as the task MLP was trained on it."""
    return tokenize(task_text(task, template or TASK_TEMPLATE), length)[0]


def build_graph(model, label_map: LabelMap, settings: ExportSettings, task_seq_len: int = 77):
    tokens = None
    if model.task_conditioned:
        tokens = task_token_ids(settings.task, task_seq_len, model.task_text)
    return ExportGraph(
        model,
        settings.task,
        isthing=list(label_map.isthing),
        task_tokens=tokens,
        topk=settings.topk,
        object_mask_threshold=settings.object_mask_threshold,
        overlap_threshold=settings.overlap_threshold,
        semantic_probs=settings.semantic_probs,
    ).eval()


def describe(graph: ExportGraph, label_map: LabelMap, settings: ExportSettings, model) -> dict:
    """The sidecar / metadata description of an exported graph."""
    return {
        "format": "oneseg-onnx",
        "oneseg_version": __version__,
        "task": settings.task,
        "arch": "oneformer" if model.task_conditioned else "mask2former",
        "task_text": model.task_text if graph.task_tokens is not None else None,
        "num_classes": len(label_map),
        "classes": label_map.to_categories(),
        "input": {
            "name": "images",
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "height": settings.height,
            "width": settings.width,
            "batch_size": settings.batch_size,
            "dynamic_size": settings.dynamic_size,
            "size_divisibility": int(model.size_divisibility),
        },
        "normalization": {
            "scale": "0-255",
            "mean": [float(v) for v in model.pixel_mean.flatten()],
            "std": [float(v) for v in model.pixel_std.flatten()],
            "inside_graph": True,
        },
        "postprocess": {
            "topk": graph.topk,
            "object_mask_threshold": settings.object_mask_threshold,
            "overlap_threshold": settings.overlap_threshold,
            "max_segments": int(model.num_queries),
        },
        "outputs": graph.output_names,
        "opset_version": settings.opset_version,
    }


def _trace(graph: ExportGraph, example: torch.Tensor, path: Path, settings: ExportSettings):
    """Write the graph to `path`. The TorchScript exporter serves a fixed batch and size and is
    fast; a dynamic batch or size needs the dynamo exporter, whose symbolic shapes follow the
    size arithmetic of the model (attention reshapes, position encodings) where the tracer bakes
    in the sizes of the example and gives a graph that fails at any other size."""
    names = {"input_names": ["images"], "output_names": graph.output_names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic, all expected
        if settings.dynamic_size or settings.batch_size == -1:
            _dynamo_export(graph, example, path, settings, names)
            return
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            opset_version=settings.opset_version,
            dynamo=False,
            **names,
        )


def _dynamo_export(graph, example, path: Path, settings: ExportSettings, names: dict) -> None:
    import contextlib
    import io

    from torch.export import Dim

    divisor = int(graph.model.size_divisibility)
    shapes = {}
    if settings.dynamic_size:
        shapes[2] = divisor * Dim("height_blocks", min=1, max=8192 // divisor)
        shapes[3] = divisor * Dim("width_blocks", min=1, max=8192 // divisor)
    if settings.batch_size == -1:
        shapes[0] = Dim("batch", min=1, max=1024)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes={"images": shapes},
            opset_version=max(settings.opset_version, 18),  # the dynamo exporter's minimum
            optimize=True,
            external_data=False,
            **names,
        )


def compare_outputs(names: list[str], reference: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """How far ONNX Runtime's outputs are from PyTorch's; raises ExportError when too far."""
    report = {}
    for name, ref, out in zip(names, reference, got):
        if ref.shape != out.shape:
            raise ExportError(f"output {name}: shape {out.shape}, PyTorch gives {ref.shape}")
        if name in ("pred_scores", "semantic_probs"):
            diff = float(np.abs(ref.astype(np.float64) - out).max()) if ref.size else 0.0
            report[name] = {"max_abs_diff": diff}
            if diff > SCORE_ATOL:
                raise ExportError(f"output {name}: differs from PyTorch by {diff:.2e}")
        elif name in ("semantic_map", "panoptic_map", "pred_masks"):
            share = float((ref != out).mean()) if ref.size else 0.0
            report[name] = {"pixel_mismatch": share}
            if share > MAX_PIXEL_MISMATCH:
                raise ExportError(f"output {name}: {share:.2%} of the pixels differ from PyTorch")
        else:
            report[name] = {"equal": bool(np.array_equal(ref, out))}
            if not report[name]["equal"]:
                raise ExportError(f"output {name}: differs from PyTorch")
    return report


def check_with_onnxruntime(path: Path, graph: ExportGraph, images: torch.Tensor) -> dict:
    """Run the file with ONNX Runtime and compare with the PyTorch graph on the same input."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.cpu().numpy()})
    with torch.no_grad():
        reference = [t.cpu().numpy() for t in graph(images)]
    return compare_outputs(graph.output_names, reference, got)


def export_onnx(
    model,
    label_map: LabelMap,
    settings: ExportSettings,
    out_path: str | Path,
    check_images: torch.Tensor,
    task_seq_len: int = 77,
    extra: dict | None = None,
) -> dict:
    """Write `out_path` (.onnx) and its `.json` sidecar; returns the description written.

    Arguments:
        model: OneFormer / Mask2Former in eval mode.
        check_images: [B, 3, H, W] uint8 at the export size: traced with, and compared on.
        extra: more entries for the description (e.g. the checkpoint exported).
    """
    out_path = Path(out_path)
    divisor = int(model.size_divisibility)
    if settings.height % divisor or settings.width % divisor:
        raise SpecError(  # the checkpoint's divisibility, which the spec may not repeat
            f"export.input_height/input_width: got {settings.height}x{settings.width}, expected "
            f"multiples of the model's size divisibility {divisor}"
        )
    graph = build_graph(model, label_map, settings, task_seq_len)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_path.parent)  # those of an export killed before
    tmp = temp_path(out_path, ".onnx.tmp")
    try:
        _trace(graph, check_images, tmp, settings)
        onnx.checker.check_model(str(tmp), full_check=True)
        description = describe(graph, label_map, settings, model)
        description.update(extra or {})
        description["check"] = check_with_onnxruntime(tmp, graph, check_images)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(description)})
        onnx.save(proto, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)

    write_json_atomic(out_path.with_suffix(".json"), description)
    return description
