"""The HTTP API of `oneseg serve`, over real HTTP against a server process on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from oneseg.io import rgb_to_id
from tests.serve.conftest import png_bytes

TASKS = ("panoptic", "instance", "semantic")
SEGMENT_KEYS = {"id", "name", "category_id", "isthing", "score", "area", "bbox", "segmentation"}


def decode(rle: dict) -> np.ndarray:
    return mask_util.decode({**rle, "counts": rle["counts"].encode("ascii")}).astype(bool)


def check_task(result: dict, task: str, size: tuple[int, int], names: set[str]) -> None:
    assert result["task"] == task
    assert (result["height"], result["width"]) == size
    assert result["segments"], f"{task}: no segment"
    for segment in result["segments"]:
        assert set(segment) == SEGMENT_KEYS
        assert segment["name"] in names
        mask = decode(segment["segmentation"])
        assert mask.shape == size
        assert int(mask.sum()) == segment["area"] > 0
        rows, cols = np.nonzero(mask)
        x, y, w, h = segment["bbox"]
        assert (x, y) == (cols.min(), rows.min()) and (x + w, y + h) == (
            cols.max() + 1,
            rows.max() + 1,
        )
        assert (segment["score"] is None) == (task == "semantic")


@pytest.fixture(scope="module")
def class_names(client) -> set[str]:
    return {c["name"] for c in client.get("/v1/model").json()["classes"]}


@pytest.mark.parametrize("task", [*TASKS, "all"])
def test_every_task_over_http(client, scene_png, class_names, task):
    size = Image.open(io.BytesIO(scene_png)).size[::-1]
    response = client.post(f"/v1/segment?task={task}", content=scene_png)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = TASKS if task == "all" else (task,)
    assert sorted(body) == sorted(expected)
    for name in expected:
        check_task(body[name], name, size, class_names)
    if task == "semantic":  # one segment per class: the masks tile the image
        coverage = sum(decode(s["segmentation"]).astype(int) for s in body[task]["segments"])
        assert (coverage == 1).all()


def test_all_equals_each_task_alone(client, scene_png):
    together = client.post("/v1/segment?task=all", content=scene_png).json()
    for task in TASKS:
        alone = client.post(f"/v1/segment?task={task}", content=scene_png).json()[task]
        assert [(s["category_id"], s["area"]) for s in alone["segments"]] == [
            (s["category_id"], s["area"]) for s in together[task]["segments"]
        ]


def test_multipart_equals_raw_body(client, scene_png):
    raw = client.post("/v1/segment?task=semantic", content=scene_png).json()
    form = client.post(
        "/v1/segment?task=semantic", files={"image": ("scene.png", scene_png, "image/png")}
    ).json()
    assert form == raw


def test_png_formats(client, scene_png):
    segments = client.post("/v1/segment?task=all", content=scene_png).json()
    panoptic = client.post("/v1/segment?task=panoptic&format=png", content=scene_png)
    assert panoptic.headers["content-type"] == "image/png"
    ids = rgb_to_id(np.asarray(Image.open(io.BytesIO(panoptic.content)).convert("RGB")))
    listed = {s["id"]: s["area"] for s in segments["panoptic"]["segments"]}
    present = {int(i): int(n) for i, n in zip(*np.unique(ids, return_counts=True)) if i}
    assert present == listed
    semantic = client.post("/v1/segment?task=semantic&format=png", content=scene_png)
    values = np.asarray(Image.open(io.BytesIO(semantic.content)))
    assert values.ndim == 2
    areas = {s["category_id"]: s["area"] for s in segments["semantic"]["segments"]}
    assert {int(v): int(n) for v, n in zip(*np.unique(values, return_counts=True))} == areas


def test_png_is_embedded_on_request(client, scene_png):
    body = client.post("/v1/segment?task=all&png=true", content=scene_png).json()
    assert "png" in body["panoptic"] and "png" in body["semantic"]
    assert "png" not in body["instance"]


def _truncated(scene_png: bytes) -> bytes:
    return scene_png[: len(scene_png) // 2]


BAD_UPLOADS = {
    # name: (body or a function of the scene, query, status, words the error must hold)
    "not an image": (b"hello, this is text", "task=panoptic", 415, "not an image"),
    "truncated": (_truncated, "task=panoptic", 422, "cut short"),
    "empty body": (b"", "task=panoptic", 422, "empty body"),
    "too large": (b"\x89PNG" + bytes(2 * 2**20), "task=panoptic", 413, "serve.max_request_mb"),
    "too many pixels": (
        png_bytes(np.zeros((1001, 1000, 3), np.uint8)),
        "task=panoptic",
        413,
        "dataset.max_image_pixels",
    ),
    "1x1 image": (png_bytes(np.zeros((1, 1, 3), np.uint8)), "task=panoptic", 422, "min_image_side"),
    "unknown task": (None, "task=everything", 422, "task: got 'everything'"),
    "png of instances": (None, "task=instance&format=png", 422, "format=png"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_is_one_json_line_and_the_server_goes_on(client, scene_png, name):
    body, query, status, words = BAD_UPLOADS[name]
    body = scene_png if body is None else body(scene_png) if callable(body) else body
    response = client.post(f"/v1/segment?{query}", content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert list(error) == ["error"] and "\n" not in error["error"]
    assert words in error["error"]
    after = client.post("/v1/segment?task=semantic", content=scene_png)
    assert after.status_code == 200


def test_sixteen_bit_tiff_is_segmented(client):
    ramp = (np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 20).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    response = client.post("/v1/segment?task=semantic", content=buffer.getvalue())
    assert response.status_code == 200, response.text
    assert (response.json()["semantic"]["height"], response.json()["semantic"]["width"]) == (48, 40)


def test_model_health_and_metrics(client, scene_png):
    model = client.get("/v1/model").json()
    assert model["tasks"] == list(TASKS)
    assert model["input"]["min_size"] == 64 and model["limits"]["max_image_pixels"] == 1000000
    assert client.get("/healthz").json()["status"] == "ok"
    client.post("/v1/segment?task=semantic", content=scene_png)
    client.post("/v1/segment?task=semantic", content=b"")
    text = client.get("/metrics").text
    ok = re.search(r'oneseg_requests_total\{path="/v1/segment",status="200"\} (\S+)', text)
    bad = re.search(r'oneseg_errors_total\{path="/v1/segment",status="422"\} (\S+)', text)
    assert ok and float(ok.group(1)) >= 1 and bad and float(bad.group(1)) >= 1
    assert "oneseg_request_seconds_bucket" in text and "oneseg_queue_depth" in text
    assert re.search(r"oneseg_batch_size_count (\S+)", text)


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas>" in page.text
    for name in re.findall(r'(?:src|href)="(/page/[^"]+)"', page.text):
        assert client.get(name).status_code == 200, name
    assert "http" not in re.sub(r"http://www.w3.org", "", page.text)  # nothing from elsewhere
    assert json.loads(client.get("/openapi.json").text)["paths"]["/v1/segment"]
