"""A Triton Inference Server model repository for exported graphs.

    DIR/
      NAME/
        config.pbtxt      platform onnxruntime_onnx; inputs and outputs as the graph has them
        labels.txt        one class name per line, in class-index order (pred_classes)
        1/model.onnx      the exported graph, unchanged

Names, data types and dims are read from the ONNX file itself. When the graph's batch axis is
free (`export.batch_size=-1`) on its input and every output, the model is batched by Triton:
`max_batch_size` is set, dims leave the batch axis out and `dynamic_batching` is on. A fixed
batch gives `max_batch_size: 0` and full shapes. A free axis is written -1, as Triton does.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import onnx

from oneseg.export.onnx_export import METADATA_KEY
from oneseg.io import write_atomic

MAX_BATCH_SIZE = 8  # of a graph with a free batch axis
QUEUE_DELAY_US = 2000  # how long Triton waits to fill a batch
LABELS_FILE = "labels.txt"

# ONNX TensorProto element type -> Triton DataType
ONNX_TO_TRITON = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


def tensor_specs(values) -> list[tuple[str, str, list[int]]]:
    """(name, Triton data type, dims with -1 for free axes) of ONNX graph inputs or outputs."""
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type not in ONNX_TO_TRITON:
            raise ValueError(f"{value.name}: ONNX type {tensor.elem_type} has no Triton type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        specs.append((value.name, ONNX_TO_TRITON[tensor.elem_type], dims))
    return specs


def model_name(onnx_path: Path) -> str:
    """A Triton model name from a file name: letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", onnx_path.stem) or "model"


def config_text(name: str, inputs, outputs, max_batch_size: int, labels: bool) -> str:
    """config.pbtxt of a model (protobuf text format of Triton's ModelConfig)."""
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    for section, specs in (("input", inputs), ("output", outputs)):
        entries = []
        for tensor_name, data_type, dims in specs:
            shown = dims[1:] if batched else dims
            entry = [
                f'    name: "{tensor_name}"',
                f"    data_type: {data_type}",
                f"    dims: [ {', '.join(str(d) for d in shown)} ]",
            ]
            if labels and tensor_name == "pred_classes":
                entry.append(f'    label_filename: "{LABELS_FILE}"')
            entries.append("  {\n" + "\n".join(entry) + "\n  }")
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}")
    return "\n".join(lines) + "\n"


def write_triton_model(
    onnx_path: str | Path, repository: str | Path, max_batch_size: int = MAX_BATCH_SIZE
) -> Path:
    """Write DIR/NAME/{config.pbtxt, labels.txt, 1/model.onnx} for one exported graph; returns
    the model's folder. The batch axis counts as free only if it is free on every tensor."""
    onnx_path = Path(onnx_path)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = tensor_specs([v for v in graph.input if v.name not in initializers])
    outputs = tensor_specs(graph.output)
    free_batch = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
    name = model_name(onnx_path)
    folder = Path(repository) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    props = {p.key: p.value for p in proto.metadata_props}
    classes = json.loads(props.get(METADATA_KEY, "{}")).get("classes", [])
    if classes:
        text = "".join(f"{c['name']}\n" for c in classes)
        write_atomic(folder / LABELS_FILE, lambda tmp: tmp.write_text(text))
    config = config_text(name, inputs, outputs, max_batch_size if free_batch else 0, bool(classes))
    write_atomic(folder / "config.pbtxt", lambda tmp: tmp.write_text(config))
    write_atomic(folder / "1" / "model.onnx", lambda tmp: shutil.copyfile(onnx_path, tmp))
    return folder
