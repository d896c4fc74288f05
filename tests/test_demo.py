"""`oneseg demo --fast` runs the whole chain through the CLI: synth, train, evaluate, inference."""

import json

from oneseg import cli


def test_demo_fast_runs_every_step(tmp_path, capsys):
    assert cli.main(["demo", "--results-dir", str(tmp_path), "--fast"]) == 0
    out = capsys.readouterr().out
    assert "demo finished" in out
    for action in ("train", "evaluate", "inference"):
        status = (tmp_path / action / "status.json").read_text().splitlines()
        assert json.loads(status[-1])["status"] == "SUCCESS", action
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["metrics"]
    for key in ("pq", "miou", "ap"):
        assert key in metrics
    overlays = list((tmp_path / "inference" / "overlays").rglob("*.png"))
    assert len(overlays) == 4 * 3  # 4 images x 3 tasks
    assert (tmp_path / "inference" / "panoptic.json").is_file()
