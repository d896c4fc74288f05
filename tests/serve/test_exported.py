"""Serving an exported ONNX file: the same API, the tasks the file holds, results equal to
`Predictor.from_exported` on the same image (ONNX Runtime in both)."""

from __future__ import annotations

import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from oneseg.cli import main
from oneseg.predictor import Predictor
from tests.serve.conftest import ServerProcess, serve_overrides


@pytest.fixture(scope="module")
def panoptic_onnx(tmp_path_factory, tiny_checkpoint):
    """A fixed-size (64x64), batch-1 panoptic export of the tiny model."""
    out = tmp_path_factory.mktemp("served_export")
    code = main(
        [
            "export",
            f"results_dir={out}",
            f"export.checkpoint={tiny_checkpoint}",
            f"export.onnx_file={out / 'tiny.onnx'}",
            "export.task=panoptic",
            "export.batch_size=1",
            "export.input_height=64",
            "export.input_width=64",
            "model.object_mask_threshold=0.0",
        ]
    )
    assert code == 0
    return out / "tiny.onnx"


def test_an_onnx_file_is_served_like_a_checkpoint(tmp_path, panoptic_onnx, scene_png):
    server = ServerProcess(serve_overrides(tmp_path, panoptic_onnx, "serve.max_batch=4"))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            model = client.get("/v1/model").json()
            assert model["kind"] == "exported" and model["tasks"] == ["panoptic"]
            assert model["input"]["fixed_size"] == [64, 64]
            missing = client.post("/v1/segment?task=semantic", content=scene_png)
            assert missing.status_code == 422 and "semantic" in missing.json()["error"]
            answers = []

            def ask():  # several at once: a batch of 4 through a batch-1 graph
                answers.append(client.post("/v1/segment?task=all", content=scene_png).json())

            threads = [threading.Thread(target=ask) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
    finally:
        server.stop()
    assert len(answers) == 4 and all(list(a) == ["panoptic"] for a in answers)
    image = np.asarray(Image.open(io.BytesIO(scene_png)).convert("RGB"))
    reference = Predictor.from_exported(panoptic_onnx, ["panoptic"], min_size=64)(image)
    expected = sorted((int(s["id"]), int(s["area"])) for s in _areas(reference))
    assert expected, "the export gives segments to compare"
    for answer in answers:
        assert sorted((s["id"], s["area"]) for s in answer["panoptic"]["segments"]) == expected


def _areas(result):
    ids, counts = np.unique(result.segment_ids, return_counts=True)
    return [{"id": i, "area": n} for i, n in zip(ids, counts) if i]
