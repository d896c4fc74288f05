"""ONNX Runtime against PyTorch: every task, both architectures, two input sizes.

The reference is the model's own forward pass and `oneseg.model.postprocess.postprocess`, not the
export wrapper, so these tests check the wrapper's fixed-size post-processing and ONNX Runtime's
arithmetic together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oneseg.export.onnx_export import ExportSettings, export_onnx
from oneseg.export.runtime import OnnxEngine
from oneseg.model.postprocess import PostprocessConfig, postprocess
from tests.export.conftest import confident_tiny_model

TASKS = ("semantic", "instance", "panoptic")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, deploy_label_map, tiny_model_cfg) -> dict:
    """(arch, task) -> (model, engine) of a 64x64 export for batches of 2 (TorchScript)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    torch.manual_seed(0)
    check = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for arch in ("oneformer", "mask2former"):
        cfg, model = confident_tiny_model(tiny_model_cfg, arch)
        for task in TASKS:
            settings = ExportSettings(
                task=task,
                height=64,
                width=64,
                batch_size=2,
                dynamic_size=False,
                topk=12,
                object_mask_threshold=0.5,
            )
            path = folder / f"{arch}_{task}.onnx"
            export_onnx(model, deploy_label_map, settings, path, check)
            out[arch, task] = (model, OnnxEngine(path, threads=1))
    return out


def reference(model, images: torch.Tensor, task: str, label_map) -> list[dict]:
    raw = model.predict(images, [task]).outputs[task]
    size = tuple(images.shape[-2:])
    return postprocess(
        raw,
        task,
        size,
        [size] * len(images),
        num_classes=len(label_map),
        isthing=label_map.isthing,
        config=PostprocessConfig(topk=12, object_mask_threshold=0.5, overlap_threshold=0.8),
    )


@pytest.mark.parametrize("arch", ["oneformer", "mask2former"])
@pytest.mark.parametrize("task", TASKS)
def test_onnxruntime_equals_pytorch(exported, deploy_label_map, arch, task):
    model, engine = exported[arch, task]
    torch.manual_seed(7)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert_same_results(engine, model, images, task, deploy_label_map)


def test_dynamic_size_export_at_other_sizes(tmp_path, deploy_label_map, tiny_model_cfg):
    """A dynamic batch and size export (the dynamo exporter) agrees at batches and sizes it was
    not traced at."""
    _, model = confident_tiny_model(tiny_model_cfg, "oneformer")
    settings = ExportSettings(
        task="panoptic",
        height=64,
        width=64,
        batch_size=-1,
        dynamic_size=True,
        topk=12,
        object_mask_threshold=0.5,
    )
    torch.manual_seed(0)
    check = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    description = export_onnx(model, deploy_label_map, settings, tmp_path / "m.onnx", check)
    assert description["input"]["dynamic_size"]
    engine = OnnxEngine(tmp_path / "m.onnx", threads=1)
    for shape in [(1, 3, 96, 64), (3, 3, 64, 128)]:
        images = torch.randint(0, 256, shape, dtype=torch.uint8)
        assert_same_results(engine, model, images, "panoptic", deploy_label_map)


def assert_same_results(engine, model, images, task, label_map):
    expected = reference(model, images, task, label_map)
    got = engine.run(images.numpy())
    for i, want in enumerate(expected):
        if task == "semantic":
            np.testing.assert_array_equal(got["semantic_map"][i], want.labels)
        elif task == "instance":
            kept = got["pred_classes"][i] >= 0
            np.testing.assert_array_equal(got["pred_classes"][i][kept], want.labels)
            np.testing.assert_allclose(got["pred_scores"][i][kept], want.scores, atol=1e-4)
            np.testing.assert_array_equal(got["pred_masks"][i][kept], want.masks)
            assert (got["pred_scores"][i][~kept] == 0).all()
        else:
            segment_ids, segments = want.segment_ids, want.segments
            count = int(got["num_segments"][i])
            assert count == len(segments)
            np.testing.assert_array_equal(got["panoptic_map"][i], segment_ids)
            labels = got["pred_classes"][i]
            assert labels[:count].tolist() == [s["label"] for s in segments]
            assert (labels[count:] == -1).all()
            np.testing.assert_allclose(
                got["pred_scores"][i][:count], [s["score"] for s in segments], atol=1e-4
            )


def test_engine_results_match_postprocess_format(exported, deploy_label_map):
    """`OnnxEngine.predict` crops padding and resizes to the output size like `postprocess`."""
    model, engine = exported["oneformer", "panoptic"]
    torch.manual_seed(3)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    results = engine.predict(images, [(64, 64)], [(64, 64)])
    expected = reference(model, images, "panoptic", deploy_label_map)
    segment_ids, segments = results[0].segment_ids, results[0].segments
    want_ids, want_segments = expected[0].segment_ids, expected[0].segments
    assert np.array_equal(segment_ids, want_ids)
    assert [(s["id"], s["label"], s["area"]) for s in segments] == [
        (s["id"], s["label"], s["area"]) for s in want_segments
    ]
