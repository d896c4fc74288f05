"""`oneseg push`: the folder it writes, its upload to a loopback hub (HfApi against 127.0.0.1,
no internet) and the model loading back through hf:// with identical outputs (reference: the
checkpoint pushed) and in transformers (reference: oneseg's outputs)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")
from transformers import OneFormerForUniversalSegmentation  # noqa: E402

from oneseg import cli  # noqa: E402
from oneseg.checkpoint import load_model  # noqa: E402
from oneseg.tokenizer import task_text, tokenize  # noqa: E402
from tests.convert.tiny_hf import max_diff, save_folder, tiny_oneformer  # noqa: E402
from tests.loopback_hub import LoopbackHub  # noqa: E402

REPO = "acme/tiny-oneformer"


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    hf = tiny_oneformer("swin", seed=7)
    ckpt = tmp_path / "m.ckpt"
    assert cli.main(["convert", "--from-hf", str(save_folder(hf, tmp_path / "hf")),
                     "--out", str(ckpt)]) == 0  # fmt: skip
    results = tmp_path / "results"
    (results / "evaluate").mkdir(parents=True)
    metrics = {"split": "val", "metrics": {"pq": 41.25, "miou": 50.5, "ap": 30.0}}
    (results / "evaluate" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    (tmp_path / "model.json").write_text("{}")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"results_dir: {results}\ndataset:\n  train:\n    - images: data/train\n")
    server = LoopbackHub(write_token="hf_writer")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    args = ["push", "-e", str(spec), f"push.checkpoint={ckpt}", f"push.repo_id={REPO}"]
    yield args, ckpt, results, server
    server.close()


def test_dry_run_writes_the_folder(setup, capsys):
    args, _, results, server = setup
    onnx = str(results.parent / "model.onnx")
    assert cli.main([*args, "push.dry_run=true", f"push.onnx_files=[{onnx}]"]) == 0
    folder = results / "push" / "hub"
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert names == [
        "README.md", "config.json", "label_map.json", "metrics.json", "model.safetensors",
        "oneseg.json", "oneseg_text_branch.safetensors", "onnx/model.json", "onnx/model.onnx",
        "preprocessor_config.json",
    ]  # fmt: skip
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-segmentation" in card
    assert "library_name: transformers" in card and "| PQ | 41.25 |" in card
    assert f'Predictor.from_pretrained("{REPO}")' in card and "| 1 | 1 | person | thing |" in card
    assert "OneFormerForUniversalSegmentation.from_pretrained" in card and "train" in card
    assert server.requests == []  # nothing uploaded


def test_push_loads_back_identically(setup, capsys, monkeypatch):
    args, ckpt, _, server = setup
    monkeypatch.setenv("HF_TOKEN", "hf_writer")
    assert cli.main([*args, "push.private=true"]) == 0
    assert f"push: {REPO}" in capsys.readouterr().out
    created = server.created[0]  # huggingface_hub 1.x+ sends "visibility"
    assert created["name"] == "tiny-oneformer" and created.get("visibility") == "private"
    pushed = server.repos[REPO].commits[server.repos[REPO].refs["main"]]
    assert {"model.safetensors", "README.md", "oneseg.json", "label_map.json"} <= set(pushed)
    ours, labels, cfg = load_model(ckpt)
    back, labels_back, cfg_back = load_model(f"hf://{REPO}")
    assert cfg_back == cfg and labels_back == labels
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = tokenize([task_text("panoptic")])
    with torch.no_grad():
        a, b = ours(pixels, tokens), back(pixels, tokens)
        folder = max((p for p in (setup[2].parent / "cache").rglob("config.json")), key=str).parent
        ref = OneFormerForUniversalSegmentation.from_pretrained(folder).eval()
        c = ref(pixel_values=pixels, task_inputs=tokens)
    assert max_diff(a["pred_masks"], b["pred_masks"]) == 0.0
    assert max_diff(a["pred_logits"], b["pred_logits"]) == 0.0
    assert max_diff(a["pred_masks"], c.masks_queries_logits) < 1e-4
    # the training-only text branch comes back too (for fine-tuning)
    text = {k: v for k, v in ours.state_dict().items() if k.startswith("text_queries.")}
    assert text and all(torch.equal(back.state_dict()[k], v) for k, v in text.items())


def test_push_failures_are_one_line(setup, capsys):
    args, _, _, _ = setup
    assert cli.main(args) == 2  # no token
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "refused the upload (HTTP 401); set HF_TOKEN" in line
    assert cli.main([*args[:-1], "push.repo_id=no-slash"]) == 2
    assert "push.repo_id: got 'no-slash'" in capsys.readouterr().err
