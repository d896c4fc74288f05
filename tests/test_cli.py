"""The command line: help, templates, schemas, spec errors, status.json."""

import json

import pytest

from oneseg import cli
from oneseg.experiment import ActionRun
from oneseg.spec import spec_from_dict


def test_help_lists_every_built_action_and_no_other(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for action in cli.ACTION_ENTRY:
        assert action in out
    for action in ("gen_trt_engine", "quantize"):
        if action not in cli.ACTION_ENTRY:
            assert action not in out


@pytest.mark.parametrize("action", list(cli.ACTION_ENTRY))
def test_action_help(capsys, action):
    with pytest.raises(SystemExit):
        cli.main([action, "--help"])
    assert "-e" in capsys.readouterr().out


def test_template_and_schema_print(capsys):
    assert cli.main(["template", "evaluate"]) == 0
    assert "evaluate:" in capsys.readouterr().out
    assert cli.main(["schema", "train"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "oneseg train spec"


def test_spec_error_exits_non_zero_with_one_line(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"results_dir: {tmp_path / 'r'}\n")
    assert cli.main(["train", "-e", str(spec), "model.hiden_dim=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "oneseg: spec error: model.hiden_dim: unknown key; did you mean 'model.hidden_dim'?"
    )
    assert not (tmp_path / "r").exists()  # refused before any work started


def test_unbuilt_action_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(cli.ACTION_ENTRY, "evaluate")
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", f"results_dir={tmp_path}"])
    assert info.value.code == 2
    assert "invalid choice: 'evaluate'" in capsys.readouterr().err


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_status_records_success(tmp_path):
    spec = spec_from_dict({"results_dir": str(tmp_path)})
    with ActionRun(spec, "evaluate") as run:
        run.log(epoch=1, kpi={"pq": 50.0})
        run.kpis["pq"] = 51.0
    lines = _lines(tmp_path / "evaluate" / "status.json")
    assert [line["status"] for line in lines] == ["STARTED", "RUNNING", "SUCCESS"]
    assert lines[1]["kpi"] == {"pq": 50.0} and lines[2]["kpi"] == {"pq": 51.0}
    assert (tmp_path / "evaluate" / "experiment.yaml").is_file()


def test_status_records_failure(tmp_path):
    spec = spec_from_dict({"results_dir": str(tmp_path)})
    with pytest.raises(RuntimeError):
        with ActionRun(spec, "train"):
            raise RuntimeError("loss is NaN at step 7")
    last = _lines(tmp_path / "train" / "status.json")[-1]
    assert last["status"] == "FAILURE"
    assert "loss is NaN at step 7" in last["message"]


def test_failing_action_exits_non_zero(tmp_path, monkeypatch, capsys):
    def boom(spec, run):
        raise ValueError("dataset.val.images: 3 images unreadable")

    monkeypatch.setitem(cli.ACTION_ENTRY, "evaluate", "tests.test_cli:_never")
    monkeypatch.setattr(
        cli.importlib, "import_module", lambda name: type("M", (), {"_never": boom})
    )
    assert (
        cli.main(
            [
                "evaluate",
                f"results_dir={tmp_path}",
                f"dataset.val.images={tmp_path}",
                f"evaluate.checkpoint={tmp_path}",
            ]
        )
        == 1
    )
    assert "3 images unreadable" in capsys.readouterr().err
    assert _lines(tmp_path / "evaluate" / "status.json")[-1]["status"] == "FAILURE"


def test_status_lines_stay_strict_json(tmp_path):
    spec = spec_from_dict({"results_dir": str(tmp_path)})
    with ActionRun(spec, "evaluate") as run:
        run.kpis.update(ap=float("nan"), pq=float("inf"), miou=50.0)
    text = (tmp_path / "evaluate" / "status.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _lines(tmp_path / "evaluate" / "status.json")[-1]["kpi"] == {
        "ap": None,
        "pq": None,
        "miou": 50.0,
    }
