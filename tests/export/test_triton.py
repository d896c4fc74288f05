"""The Triton model repository of `oneseg export ... export.triton_repository=DIR`, read back
with Triton's own model-config protobuf (tritonclient) and checked against the ONNX file."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from oneseg.cli import main
from oneseg.data.label_map import LabelMap
from oneseg.export.triton import write_triton_model

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

ONNX_TYPE_NAMES = {
    TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.BOOL: "TYPE_BOOL",
}


def read_config(folder):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def check_against_onnx(config, onnx_path) -> None:
    """Every input and output of the graph, in order, with its Triton type and dims."""
    graph = onnx.load(str(onnx_path)).graph
    batched = config.max_batch_size > 0
    for tensors, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in tensors] == [v.name for v in values]
        for tensor, value in zip(tensors, values):
            shape = value.type.tensor_type.shape.dim
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape]
            if batched:
                assert dims[0] == -1
                dims = dims[1:]
            assert list(tensor.dims) == dims, tensor.name
            expected = ONNX_TYPE_NAMES[value.type.tensor_type.elem_type]
            assert model_config_pb2.DataType.Name(tensor.data_type) == expected


def test_export_writes_a_triton_repository(tmp_path, tiny_checkpoint, synth_data):
    repository = tmp_path / "triton"
    code = main(
        [
            "export",
            f"results_dir={tmp_path}",
            f"export.checkpoint={tiny_checkpoint}",
            f"export.onnx_file={tmp_path / 'seg.onnx'}",
            "export.task=instance",
            "export.batch_size=-1",
            "export.input_height=64",
            "export.input_width=64",
            f"export.triton_repository={repository}",
        ]
    )
    assert code == 0
    folder = repository / "seg"
    config = read_config(folder)
    assert config.name == "seg" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    model_file = folder / "1" / "model.onnx"
    assert model_file.read_bytes() == (tmp_path / "seg.onnx").read_bytes()
    check_against_onnx(config, model_file)
    labels = (folder / "labels.txt").read_text().splitlines()
    assert labels == LabelMap.from_json(synth_data["label_map"]).names
    classes = [t for t in config.output if t.name == "pred_classes"][0]
    assert classes.label_filename == "labels.txt"


def test_a_fixed_batch_graph_keeps_full_shapes(tmp_path):
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, [2, 3, "h", "w"])
    out = helper.make_tensor_value_info("semantic_map", TensorProto.INT64, [2, "h", "w"])
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Cast", ["m"], ["semantic_map"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(nodes, "g", [images], [out])
    path = tmp_path / "fixed batch.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    folder = write_triton_model(path, tmp_path / "repo")
    assert folder.name == "fixed_batch"
    config = read_config(folder)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, -1, -1]
    check_against_onnx(config, folder / "1" / "model.onnx")
    assert not (folder / "labels.txt").exists()  # a graph oneseg did not describe has no classes
