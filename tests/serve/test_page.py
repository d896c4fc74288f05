"""The page at `/` in headless Chromium: upload, every task and all three, legend rows against
the API's JSON, hover highlight, downloads, a refused file. Screenshots are kept in the test's
tmp folder (and copied to $ONESEG_SCREENSHOT_DIR when set).

Skipped only when Chromium is absent outside CI; in CI (CI=true) its absence is a failure."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from oneseg.io import rgb_to_id

CHROMIUM = "/usr/bin/chromium"
TASKS = ("panoptic", "instance", "semantic")


def _browser_or_skip():
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if found is None or sync_playwright is None:
        missing = "chromium" if found is None else "playwright"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} is missing in CI; .ci/run installs it")
        pytest.skip(f"{missing} is not installed")
    return found, sync_playwright


@pytest.fixture(scope="module")
def browser_page(server):
    executable, sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1400, "height": 900}
        )
        page = context.new_page()
        page.goto(server.url + "/")
        page.wait_for_function(
            "document.getElementById('model-name').textContent.includes('classes')"
        )
        yield page
        browser.close()


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory, scene_png) -> Path:
    path = tmp_path_factory.mktemp("upload") / "scene.png"
    path.write_bytes(scene_png)
    return path


def _wait_after(page, action) -> str:
    page.evaluate("document.body.dataset.state = 'idle'")
    action()
    page.wait_for_function(
        "['done', 'refused'].includes(document.body.dataset.state)", timeout=60000
    )
    return page.evaluate("document.body.dataset.state")


def _canvas_digest(panel) -> int:
    return panel.eval_on_selector(
        "canvas",
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
        ".reduce((s, v, i) => (s + v * (i % 251 + 1)) % 1000000007, 0)",
    )


def _tinted_pixels(panel, scene_png: bytes) -> int:
    picture = np.asarray(Image.open(io.BytesIO(scene_png)).convert("RGB")).astype(int)
    drawn = panel.eval_on_selector(
        "canvas", "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    drawn = np.asarray(drawn).reshape(*picture.shape[:2], 4)[..., :3]
    return int((np.abs(drawn - picture).sum(-1) > 6).sum())


def _legend(panel) -> list[tuple[int, str, int]]:
    return [
        (
            int(row.get_attribute("data-segment-id")),
            row.eval_on_selector(".name", "e => e.textContent"),
            int(row.eval_on_selector(".area", "e => e.dataset.area")),
        )
        for row in panel.query_selector_all("tbody tr")
    ]


def _check_rle_decoder(page, rle: dict) -> None:
    """The page's RLE decoder gives pycocotools' mask (row-major)."""
    decoded = np.asarray(page.evaluate("rle => Array.from(rleDecode(rle))", rle), dtype=np.uint8)
    reference = mask_util.decode({**rle, "counts": rle["counts"].encode("ascii")})
    assert np.array_equal(decoded.reshape(reference.shape), reference)


def _download(page, anchor, folder: Path) -> Path:
    with page.expect_download() as info:
        anchor.click()
    target = folder / info.value.suggested_filename
    info.value.save_as(target)
    return target


def _check_file(path: Path, task: str, api: dict) -> None:
    segments = api["segments"]
    if path.name.endswith("_panoptic.png"):
        ids = rgb_to_id(np.asarray(Image.open(path).convert("RGB")))
        present = {int(i): int(n) for i, n in zip(*np.unique(ids, return_counts=True)) if i}
        assert present == {s["id"]: s["area"] for s in segments}
    elif path.name.endswith("_panoptic.json"):
        info = json.loads(path.read_text())
        assert [(s["id"], s["category_id"], s["area"]) for s in info["segments_info"]] == [
            (s["id"], s["category_id"], s["area"]) for s in segments
        ]
    elif path.name.endswith("_instance.json"):
        results = json.loads(path.read_text())
        assert len(results) == len(segments)
        for result, segment in zip(results, segments):
            rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
            assert int(mask_util.area(rle)) == segment["area"]
            assert result["category_id"] == segment["category_id"]
    elif path.name.endswith("_semantic.png"):
        values = np.asarray(Image.open(path))
        found = {int(v): int(n) for v, n in zip(*np.unique(values, return_counts=True))}
        assert found == {s["category_id"]: s["area"] for s in segments}
    else:
        raise AssertionError(f"unexpected download {path.name} for {task}")


EXPECTED_DOWNLOADS = {"panoptic": 2, "instance": 1, "semantic": 1}


@pytest.mark.parametrize("choice", [*TASKS, "all"])
def test_page_shows_each_task(
    browser_page, client, server, scene_file, scene_png, choice, tmp_path
):
    page = browser_page
    page.eval_on_selector("#threshold", "e => { e.value = 0; e.dispatchEvent(new Event('input')) }")
    page.check(f"input[name=task][value={choice}]")
    state = _wait_after(page, lambda: page.set_input_files("#file", str(scene_file)))
    assert state == "done", page.inner_text("#message")
    api = client.post(f"/v1/segment?task={choice}", content=scene_png).json()
    panels = page.query_selector_all(".panel")
    expected = TASKS if choice == "all" else (choice,)
    assert [p.get_attribute("data-task") for p in panels] == list(expected)
    for panel, task in zip(panels, expected):
        assert _legend(panel) == [(s["id"], s["name"], s["area"]) for s in api[task]["segments"]]
        _check_rle_decoder(page, api[task]["segments"][0]["segmentation"])
        assert _tinted_pixels(panel, scene_png) > 0
        before = _canvas_digest(panel)
        row = panel.query_selector("tbody tr")
        row.hover()
        assert "hot" in row.get_attribute("class") and _canvas_digest(panel) != before
        page.mouse.move(0, 0)
        anchors = panel.query_selector_all("a.download")
        assert len(anchors) == EXPECTED_DOWNLOADS[task]
        for anchor in anchors:
            _check_file(_download(page, anchor, tmp_path), task, api[task])
    _keep_screenshot(page, tmp_path / f"page_{choice}.png")


def test_threshold_hides_low_scores(browser_page, scene_file, scene_png, client):
    page = browser_page
    page.check("input[name=task][value=instance]")
    _wait_after(page, lambda: page.set_input_files("#file", str(scene_file)))
    scores = [
        s["score"]
        for s in client.post("/v1/segment?task=instance", content=scene_png).json()["instance"][
            "segments"
        ]
    ]
    cut = float(np.median(scores))
    page.eval_on_selector(
        "#threshold", f"e => {{ e.value = {cut}; e.dispatchEvent(new Event('input')) }}"
    )
    rows = page.query_selector_all(".panel tbody tr")
    assert len(rows) == sum(s >= round(cut, 2) for s in scores) < len(scores)


def test_a_refused_file_is_explained(browser_page, tmp_path):
    page = browser_page
    state = _wait_after(
        page,
        lambda: page.evaluate(
            """() => {
                const data = new DataTransfer();
                data.items.add(new File(['not a picture'], 'notes.txt', {type: 'text/plain'}));
                document.getElementById('drop').dispatchEvent(
                    new DragEvent('drop', {dataTransfer: data, bubbles: true}));
            }"""
        ),
    )
    assert state == "refused"
    message = page.inner_text("#message")
    assert "415" in message and "not an image" in message
    assert page.query_selector_all(".panel") == []
    _keep_screenshot(page, tmp_path / "page_refused.png")


def _keep_screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert Image.open(path).size[0] > 0
    folder = os.environ.get("ONESEG_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def test_server_still_answers(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
