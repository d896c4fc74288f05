"""`oneseg demo` as the README runs it, and its refusal to succeed when a step produced nothing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import oneseg
from oneseg import cli


def test_demo_as_the_readme_runs_it(tmp_path):
    """From the top of a checkout with the default, relative results_dir (here: a fresh folder
    standing in for a clone); --fast keeps it short."""
    env = {**os.environ, "PYTHONPATH": str(Path(oneseg.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "oneseg.cli", "demo", "--fast"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped a bad image" not in done.stderr
    assert "demo finished" in done.stdout
    root = tmp_path / "results" / "demo"
    for action in ("train", "evaluate", "inference"):
        status = (root / action / "status.json").read_text().splitlines()
        assert json.loads(status[-1])["status"] == "SUCCESS", action
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())["metrics"]
    # every headline number is a real percentage (a NaN or a stray scale would pass "in")
    for key in ("pq", "sq", "rq", "miou", "pixel_acc", "ap", "ap50"):
        value = metrics[key]
        assert isinstance(value, float) and math.isfinite(value), (key, value)
        assert 0.0 <= value <= 100.0, (key, value)
    assert metrics["num_images"] == 4
    overlays = sorted((root / "inference" / "overlays").rglob("*.png"))
    assert len(overlays) == 4 * 3  # 4 images x 3 tasks
    assert json.loads(status[-1])["kpi"]["bad_images"] == 0
    assert (root / "inference" / "panoptic.json").is_file()


def test_demo_fails_when_a_step_produces_nothing(tmp_path, monkeypatch, capsys):
    import oneseg.engine.train

    monkeypatch.setattr(oneseg.engine.train, "run_train", lambda spec, run: None)
    assert cli.main(["demo", "--results-dir", str(tmp_path), "--fast"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"oneseg: failed: demo: training wrote no checkpoint in {tmp_path / 'train'}"
