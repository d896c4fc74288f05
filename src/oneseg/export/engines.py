"""The engine for an exported file: ONNX Runtime for `.onnx`, TensorRT for an engine built
from one (the TensorRT module builds on `runtime`, so the choice lives here)."""

from __future__ import annotations

from pathlib import Path

from oneseg.errors import InputFileError
from oneseg.export.runtime import OnnxEngine, task_files
from oneseg.export.tensorrt import TensorRTEngine, engine_task_files


def load_engines(path: str | Path, tasks: list[str], key: str) -> dict:
    """task -> engine for those of `tasks` that an exported file (ONNX, or a TensorRT engine
    built from one) and its `all` siblings hold; when it holds none of them, one error naming
    the file and the spec `key`."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        files, make = task_files(path), OnnxEngine
    else:
        files, make = engine_task_files(path), TensorRTEngine
    present = [task for task in tasks if task in files]
    if not present:
        raise InputFileError(
            f"{key}: {path} holds the {', '.join(files)} graph(s), not {', '.join(tasks)}; "
            "export the task asked for (or export.task=all)"
        )
    engines = {task: make(files[task]) for task in present}
    first = next(iter(engines.values()))
    for engine in engines.values():
        engine.check(label_map=first.label_map)
    return engines
