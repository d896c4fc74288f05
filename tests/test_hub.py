"""Models by name through a Hugging Face Hub on 127.0.0.1 (no internet): downloads, revisions,
the cache offline, and each failure as one line (exit 2). Parity reference: transformers."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")
from oneseg import cli  # noqa: E402
from oneseg.checkpoint import load_model  # noqa: E402
from oneseg.hub import HubError, as_hub_source, split_source  # noqa: E402
from oneseg.predictor import Predictor  # noqa: E402
from oneseg.tokenizer import task_text, tokenize  # noqa: E402
from tests.convert.tiny_hf import (  # noqa: E402
    max_diff,
    save_folder,
    tiny_mask2former,
    tiny_oneformer,
)
from tests.loopback_hub import LoopbackHub  # noqa: E402

ONEFORMER = "shi-labs/oneformer_tiny_swin"
DINAT = "shi-labs/oneformer_tiny_dinat"
MASK2FORMER = "facebook/mask2former-tiny-coco-instance"
GATED = "acme/gated-oneformer"
TOKEN = "hf_loopbacktoken"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_models")
    made = {
        "oneformer": tiny_oneformer("swin", seed=0),
        "oneformer_v2": tiny_oneformer("swin", seed=1),
        "dinat": tiny_oneformer("dinat", seed=2),
        "mask2former": tiny_mask2former(seed=3),
    }
    return {k: (m, save_folder(m, root / k)) for k, m in made.items()}


@pytest.fixture()
def hub(models, tmp_path, monkeypatch):
    """The loopback hub serving the tiny models, HF_ENDPOINT at it, an empty cache, no token."""
    server = LoopbackHub()
    server.add_commit(ONEFORMER, models["oneformer"][1])
    server.add_commit(ONEFORMER, models["oneformer_v2"][1], ref="v2")
    server.add_commit(DINAT, models["dinat"][1])
    server.add_commit(MASK2FORMER, models["mask2former"][1])
    server.add_commit(GATED, models["oneformer"][1])
    server.repos[GATED].gated_token = TOKEN
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login
    yield server
    server.close()


def oneformer_outputs(hf, ours, task="panoptic"):
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    tokens = tokenize([task_text(task)])
    with torch.no_grad():
        ref = hf(pixel_values=pixels, task_inputs=tokens)
        out = ours(pixels, tokens)
    return max(
        max_diff(out["pred_logits"], ref.class_queries_logits),
        max_diff(out["pred_masks"], ref.masks_queries_logits),
    )


def test_names():
    assert split_source("hf://org/name@v1.0") == ("org/name", "v1.0", None)
    assert split_source("hf://org/name") == ("org/name", None, None)
    assert split_source("hf://org/name@v2/ckpt/m.pth") == ("org/name", "v2", "ckpt/m.pth")
    assert split_source("/tmp/x.ckpt") is None
    assert as_hub_source("shi-labs/oneformer_ade20k_swin_tiny") == (
        "hf://shi-labs/oneformer_ade20k_swin_tiny"
    )
    assert as_hub_source("model.ckpt") is None
    assert as_hub_source("results/model.ckpt") is None  # a missing local file, not a repository
    with pytest.raises(HubError, match="not a hub model name"):
        split_source("hf://no-slash")


def test_oneformer_by_name_equals_transformers(hub, models):
    ours, label_map, cfg = load_model(f"hf://{ONEFORMER}")
    assert cfg.arch == "oneformer" and label_map.names == ["wall", "person", "car"]
    for task in ("semantic", "panoptic"):
        assert oneformer_outputs(models["oneformer"][0], ours, task) < 1e-4
    fetched = sorted({p.rsplit("/", 1)[-1] for _, p in hub.requests})
    # only what a model needs: config, processor config, weights (and probes for oneseg's files)
    assert fetched == [
        "config.json", "model.safetensors", "oneseg.json", "oneseg_text_branch.safetensors",
        "preprocessor_config.json",
    ]  # fmt: skip


def test_revision_pinning(hub, models):
    v2, _, _ = load_model(f"hf://{ONEFORMER}@v2")
    assert oneformer_outputs(models["oneformer_v2"][0], v2) < 1e-4
    assert oneformer_outputs(models["oneformer"][0], v2) > 1e-2  # another model indeed
    commit = hub.repos[ONEFORMER].refs["v2"]
    by_commit = Predictor.from_pretrained(ONEFORMER, revision=commit)
    assert oneformer_outputs(models["oneformer_v2"][0], by_commit.model) < 1e-4


def test_mask2former_by_name_equals_transformers(hub, models):
    predictor = Predictor.from_pretrained(MASK2FORMER)
    assert predictor.model_cfg.arch == "mask2former" and predictor.model_cfg.mode == "instance"
    hf = models["mask2former"][0]
    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = hf(pixel_values=pixels)
        out = predictor.model(pixels)
    assert max_diff(out["pred_logits"], ref.class_queries_logits) < 1e-4
    assert max_diff(out["pred_masks"], ref.masks_queries_logits) < 1e-4
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    result = predictor(image, task="instance")
    assert result.masks.shape[1:] == (40, 56)


def test_dinat_by_name_equals_transformers(hub, models, monkeypatch):
    """The DiNAT OneFormer (the published DiNAT-L layout): kernel and dilations come through the
    hub, outputs equal transformers' (its neighbourhood attention run by our kernel, as in
    tests/convert/test_hf_dinat.py: transformers' own needs NATTEN)."""
    import transformers.models.dinat.modeling_dinat as md

    from tests.convert.test_hf_dinat import attention_forward

    monkeypatch.setattr(md, "requires_backends", lambda *args, **kwargs: None)
    monkeypatch.setattr(md.NeighborhoodAttention, "forward", attention_forward)
    ours, _, cfg = load_model(f"hf://{DINAT}")
    assert cfg.backbone_window_size == 5 and cfg.backbone_dilations == [[1, 3], [2], [1], [1]]
    assert oneformer_outputs(models["dinat"][0], ours) < 1e-4


def test_cli_convert_by_name(hub, tmp_path, capsys):
    out = tmp_path / "m.ckpt"
    assert cli.main(["convert", "--from-hf", MASK2FORMER, "--out", str(out)]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model_cfg"]["arch"] == "mask2former"


def test_offline_uses_the_cache(hub, models, monkeypatch):
    load_model(f"hf://{ONEFORMER}")  # fills the cache
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours, _, _ = load_model(f"hf://{ONEFORMER}")
    assert hub.requests == []  # nothing asked of the network
    assert oneformer_outputs(models["oneformer"][0], ours) < 1e-4
    with pytest.raises(HubError) as err:
        load_model(f"hf://{MASK2FORMER}")
    assert "HF_HUB_OFFLINE=1 forbids downloading" in str(err.value)


def failure(argv, capsys) -> str:
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def convert_line(name, tmp_path, capsys) -> str:
    return failure(["convert", "--from-hf", name, "--out", str(tmp_path / "x.ckpt")], capsys)


def test_errors_are_one_line(hub, tmp_path, capsys, monkeypatch):
    missing = convert_line("acme/does-not-exist", tmp_path, capsys)
    assert "no such model repository" in missing and "set HF_TOKEN" in missing
    gated = convert_line(GATED, tmp_path, capsys)
    assert "a gated repository" in gated
    revision = convert_line(f"hf://{ONEFORMER}@v9", tmp_path, capsys)
    assert "revision 'v9' does not exist" in revision
    print(missing, gated, revision, sep="\n", file=open(tmp_path / "lines.txt", "w"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["convert", "--from-hf", GATED, "--out", str(tmp_path / "g.ckpt")]) == 0


def test_other_model_type_is_refused(hub, models, tmp_path, capsys):
    folder = tmp_path / "detr"
    folder.mkdir()
    config = json.loads((models["mask2former"][1] / "config.json").read_text())
    config.update(model_type="detr", architectures=["DetrForObjectDetection"])
    (folder / "config.json").write_text(json.dumps(config))
    weights = models["mask2former"][1] / "model.safetensors"
    (folder / "model.safetensors").write_bytes(weights.read_bytes())
    hub.add_commit("facebook/detr-resnet-50", folder)
    hub.requests.clear()
    line = convert_line("facebook/detr-resnet-50", tmp_path, capsys)
    assert "a 'detr' model (DetrForObjectDetection)" in line
    assert all(not p.endswith(".safetensors") for _, p in hub.requests)  # weights not fetched


def test_no_network(hub, tmp_path, capsys, monkeypatch):
    """A refused connection. huggingface_hub retries it with backoff (about 23 s); the waits
    are skipped here, the retries are not."""
    import huggingface_hub.utils._http as hub_http

    load_model(f"hf://{ONEFORMER}")  # the cache holds main
    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)
    with socket.socket() as sock:  # a port nothing listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    cold = convert_line(MASK2FORMER, tmp_path, capsys)
    assert "cannot reach" in cold and "does not hold it" in cold
    warm = convert_line(f"hf://{ONEFORMER}@v2", tmp_path, capsys)
    assert f"the cache holds only main: run with HF_HUB_OFFLINE=1 and hf://{ONEFORMER}@main" in warm
    # the asked revision in the cache: huggingface_hub uses it without the network
    assert cli.main(["convert", "--from-hf", ONEFORMER, "--out", str(tmp_path / "ok.ckpt")]) == 0


def test_timm_hub_backbone(hub, tmp_path):
    """train.pretrained_backbone=hf-hub:ORG/NAME: timm's hub name, read as timm reads it, the
    weights fetched from the hub (safetensors here) and loaded as a timm classifier file."""
    import timm
    from safetensors.torch import save_file

    from oneseg.convert.backbone_weights import load_pretrained_backbone
    from oneseg.model.backbone import build_backbone
    from oneseg.spec import check_inputs, spec_from_dict

    torch.manual_seed(0)
    classifier = timm.create_model(
        "swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 2, 1, 1)
    )
    folder = tmp_path / "timm_repo"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()},
              str(folder / "model.safetensors"))  # fmt: skip
    (folder / "config.json").write_text(
        json.dumps({"architecture": "swin_tiny_patch4_window7_224"})
    )
    hub.add_commit("timm/swin_tiny_patch4_window7_224.ms_in1k", folder, ref="v1")
    name = "hf-hub:timm/swin_tiny_patch4_window7_224.ms_in1k@v1"
    spec = spec_from_dict({"train": {"pretrained_backbone": name}})
    check_inputs(spec, "train")  # a hub name is not refused as a missing file
    backbone = build_backbone("swin_tiny", embed_dim=24, depths=[1, 2, 1, 1])
    assert load_pretrained_backbone(backbone, name) == len(backbone.body.state_dict())
    expected = classifier.state_dict()["layers.1.blocks.1.mlp.fc2.weight"]
    assert torch.equal(backbone.body.state_dict()["layers_1.blocks.1.mlp.fc2.weight"], expected)
    with pytest.raises(HubError, match="no such model repository"):
        load_pretrained_backbone(backbone, "hf-hub:timm/not-there")


def test_a_broken_download_is_never_read(hub, models, tmp_path, capsys, monkeypatch):
    """A connection that breaks off mid-file: huggingface_hub resumes it (Range) and the model
    equals transformers'; one that always breaks fails in one line, and the cache holds no
    weights file (the partial one stays an .incomplete blob, never linked). The backoff waits
    between huggingface_hub's retries are skipped."""
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)
    hub.cut["model.safetensors"] = 1
    ours, _, _ = load_model(f"hf://{ONEFORMER}")
    assert oneformer_outputs(models["oneformer"][0], ours) < 1e-4
    hub.cut["model.safetensors"] = 100
    line = convert_line(MASK2FORMER, tmp_path, capsys)
    assert line.startswith(f"oneseg: error: hf://{MASK2FORMER}: ")
    cache = tmp_path / "hub_cache" / "models--facebook--mask2former-tiny-coco-instance"
    assert not list(cache.rglob("snapshots/*/model.safetensors"))
    assert not (tmp_path / "x.ckpt").exists()
    # an optional file that cannot be fetched is an error, not a file taken as absent (the
    # processor config holds the input normalisation)
    hub.cut = {"preprocessor_config.json": 100}
    line = convert_line(DINAT, tmp_path, capsys)
    assert f"hf://{DINAT}: the transfer from" in line


def test_one_checkpoint_file_of_a_repository(hub, models, tmp_path, capsys):
    """hf://ORG/NAME[@REV]/FILE: a checkpoint file (here a oneseg one) read as a local file."""
    ckpt = tmp_path / "files" / "model.ckpt"
    ckpt.parent.mkdir()
    assert cli.main(["convert", "--from-hf", str(models["oneformer"][1]), "--out", str(ckpt)]) == 0
    hub.add_commit("acme/checkpoints", ckpt.parent, ref="v1")
    ours, _, _ = load_model("hf://acme/checkpoints@v1/model.ckpt")
    assert oneformer_outputs(models["oneformer"][0], ours) < 1e-4
    line = convert_line("hf://acme/checkpoints@v1/other.pth", tmp_path, capsys)
    assert line.endswith("hf://acme/checkpoints@v1: the repository has no other.pth")


def test_inference_action_takes_a_hub_name(hub, tmp_path, capsys):
    """`oneseg inference inference.checkpoint=hf://...`: the spec check lets the name through,
    the action fetches it and writes its outputs."""
    from PIL import Image

    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    results = tmp_path / "results"
    argv = ["inference", f"inference.checkpoint=hf://{MASK2FORMER}", f"inference.images={image}",
            "inference.tasks=[instance]", f"results_dir={results}"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert any((results / "inference").rglob("*photo*"))


def test_convert_records_a_task_prompt(hub, models, tmp_path, capsys):
    """`convert --task-text`: the prompt a file does not record (NV-OneFormer's) is kept in the
    checkpoint, and the task tokens come from it (reference: transformers fed those tokens)."""
    out = tmp_path / "nv.ckpt"
    argv = ["convert", "--from-hf", ONEFORMER, "--out", str(out), "--task-text",
            "This task is {task}."]  # fmt: skip
    assert cli.main(argv) == 0
    ours, _, cfg = load_model(out)
    assert cfg.task_text == "This task is {task}."
    hf = models["oneformer"][0]
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    tokens = tokenize(["This task is panoptic."])
    panoptic = ours.task_token_ids[2:3]  # the stored prompt's ids (TASKS order)
    assert torch.equal(panoptic, tokens)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, task_inputs=tokens)
        mine = ours(pixels, panoptic)
    assert max_diff(mine["pred_masks"], ref.masks_queries_logits) < 1e-4
    assert cli.main([*argv[:-1], "no task here"]) == 2
    assert "a OneFormer's prompt, with {task}" in capsys.readouterr().err
