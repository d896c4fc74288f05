"""The dependency direction of docs/code_map.md, checked by import-linter's contract in
pyproject.toml: it holds on the package, and it breaks when a lower layer imports a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    command = [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())",
        "--config",
        str(ROOT / "pyproject.toml"),
        "--no-cache",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=source_root)


def test_the_layers_hold():
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "oneseg", tmp_path / "oneseg")
    layers = tmp_path / "oneseg" / "model" / "layers.py"
    layers.write_text(layers.read_text() + "\nimport oneseg.predictor  # noqa: E402, F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "oneseg layers BROKEN" in result.stdout
    assert "oneseg.model.layers -> oneseg.predictor" in result.stdout
