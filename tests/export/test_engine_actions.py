"""`evaluate` and `inference` through an exported ONNX file give what the checkpoint gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from oneseg.checkpoint import make_checkpoint, save_atomic
from oneseg.cli import main
from oneseg.data.label_map import LabelMap
from oneseg.predictor import Predictor
from tests.export.conftest import confident_tiny_model


@pytest.fixture(scope="module")
def synth_model(tmp_path_factory, synth_data, tiny_model_cfg) -> dict:
    """A confident tiny OneFormer for the synthetic classes, its checkpoint and its export of
    every task at the synthetic image size (64x64, batch 1)."""
    folder = tmp_path_factory.mktemp("synth_model")
    label_map = LabelMap.from_json(synth_data["label_map"])
    cfg, model = confident_tiny_model(tiny_model_cfg, "oneformer", len(label_map))
    checkpoint = folder / "model.pth"
    save_atomic(make_checkpoint(cfg, label_map, model.state_dict()), checkpoint)
    code = main(
        [
            "export",
            f"results_dir={folder}",
            f"export.checkpoint={checkpoint}",
            f"export.onnx_file={folder / 'model.onnx'}",
            "export.task=all",
            "export.batch_size=1",
            "export.input_height=64",
            "export.input_width=64",
            f"dataset.val.images={synth_data['val']['images']}",
        ]
    )
    assert code == 0
    return {"checkpoint": checkpoint, "onnx": folder / "model_panoptic.onnx", "folder": folder}


def dataset_args(synth_data) -> list[str]:
    val = synth_data["val"]
    return [
        f"dataset.val.images={val['images']}",
        f"dataset.val.annotations={val['panoptic_json']}",
        f"dataset.val.panoptic={val['panoptic']}",
        f"dataset.label_map={synth_data['label_map']}",
        "dataset.augmentation.eval_min_size=64",
        "dataset.workers=0",
    ]


def evaluate(tmp_path, synth_data, name: str, source: str) -> dict:
    results = tmp_path / name
    code = main(["evaluate", f"results_dir={results}", source, *dataset_args(synth_data)])
    assert code == 0
    return json.loads((results / "evaluate/metrics.json").read_text())["metrics"]


def test_evaluate_through_onnx_equals_checkpoint(tmp_path, synth_data, synth_model):
    torch_metrics = evaluate(
        tmp_path, synth_data, "torch", f"evaluate.checkpoint={synth_model['checkpoint']}"
    )
    onnx_metrics = evaluate(
        tmp_path, synth_data, "onnx", f"evaluate.onnx_file={synth_model['onnx']}"
    )
    assert torch_metrics["miou"] > 0
    for key in ("pq", "sq", "rq", "miou", "pixel_acc", "ap", "ap50"):
        if torch_metrics[key] is None:
            assert onnx_metrics[key] is None, key
        else:
            assert abs(onnx_metrics[key] - torch_metrics[key]) <= 0.1, key


def test_inference_through_onnx_writes_the_same_files(tmp_path, synth_data, synth_model):
    outputs = {}
    for name, source in (
        ("torch", f"inference.checkpoint={synth_model['checkpoint']}"),
        ("onnx", f"inference.onnx_file={synth_model['onnx']}"),
    ):
        results = tmp_path / name
        args = [
            "inference",
            f"results_dir={results}",
            source,
            f"inference.images={synth_data['val']['images']}",
            "inference.tasks=[semantic,panoptic,instance]",
            "inference.overlay=false",
            *dataset_args(synth_data),
        ]
        assert main(args) == 0
        outputs[name] = results / "inference"
    files = sorted(p.relative_to(outputs["torch"]) for p in outputs["torch"].rglob("*"))
    files = [f for f in files if f.name not in ("status.json", "experiment.yaml")]
    assert files == [
        f
        for f in sorted(p.relative_to(outputs["onnx"]) for p in outputs["onnx"].rglob("*"))
        if f.name not in ("status.json", "experiment.yaml")
    ]
    pngs = [f for f in files if f.suffix == ".png"]
    assert pngs
    for png in pngs:
        a = np.asarray(Image.open(outputs["torch"] / png))
        b = np.asarray(Image.open(outputs["onnx"] / png))
        assert np.array_equal(a, b), png


def test_predictor_from_onnx(synth_data, synth_model):
    from oneseg.data.image_io import read_image

    images = sorted(synth_data["val"]["images"].iterdir())[:2]
    by_torch = Predictor.from_checkpoint(synth_model["checkpoint"], min_size=64, device="cpu")
    by_onnx = Predictor.from_exported(synth_model["onnx"], min_size=64)
    for path in images:
        image = read_image(path)
        want, got = by_torch(image, "semantic"), by_onnx(image, "semantic")
        assert np.array_equal(want.labels, got.labels)
        want, got = by_torch(image, "panoptic"), by_onnx(image, "panoptic")
        assert np.array_equal(want.segment_ids, got.segment_ids)
        assert [s["name"] for s in want.segments] == [s["name"] for s in got.segments]
