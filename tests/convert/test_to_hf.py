"""`oneseg convert --to-hf`: the folder transformers loads gives our outputs (reference:
transformers' OneFormer / Mask2Former ForUniversalSegmentation), and reads back as the same
model; transformers -> oneseg -> transformers is the identity on outputs."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoImageProcessor,
    Mask2FormerForUniversalSegmentation,
    OneFormerForUniversalSegmentation,
)

from oneseg import cli  # noqa: E402
from oneseg.checkpoint import (  # noqa: E402
    convert_to_hf,
    load_model,
    make_checkpoint,
    save_atomic,
)
from oneseg.config import ModelConfig  # noqa: E402
from oneseg.convert.hf import ConversionError  # noqa: E402
from oneseg.data.label_map import LabelMap  # noqa: E402
from oneseg.model.build import build_model  # noqa: E402
from oneseg.spec import section_from_dict  # noqa: E402
from oneseg.tokenizer import task_text, tokenize  # noqa: E402
from tests.convert.tiny_hf import (  # noqa: E402
    max_diff,
    perturbed,
    save_folder,
    tiny_mask2former,
    tiny_oneformer,
)

PIXELS = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))


def outputs(model, hf: bool, task: str | None = "panoptic"):
    tokens = tokenize([task_text(task)]) if task else None
    with torch.no_grad():
        if hf:
            out = model(pixel_values=PIXELS, task_inputs=tokens) if task else model(PIXELS)
            return out.class_queries_logits, out.masks_queries_logits
        out = model(PIXELS, tokens) if task else model(PIXELS)
        return out["pred_logits"], out["pred_masks"]


def diff(a, b) -> float:
    return max(max_diff(x, y) for x, y in zip(a, b))


def test_oneformer_round_trip(tmp_path, capsys):
    hf = tiny_oneformer("swin", seed=4)
    ckpt = tmp_path / "m.ckpt"
    assert cli.main(["convert", "--from-hf", str(save_folder(hf, tmp_path / "in")), "--out",
                     str(ckpt)]) == 0  # fmt: skip
    out = tmp_path / "out"
    assert cli.main(["convert", "--to-hf", str(ckpt), "--out", str(out)]) == 0
    back = OneFormerForUniversalSegmentation.from_pretrained(out).eval()
    ours, label_map, _ = load_model(ckpt)
    for task in ("semantic", "instance", "panoptic"):
        assert diff(outputs(back, True, task), outputs(ours, False, task)) < 1e-4
        assert diff(outputs(back, True, task), outputs(hf, True, task)) < 1e-4
    processor = AutoImageProcessor.from_pretrained(out)
    assert type(processor).__name__.startswith("OneFormerImageProcessor")
    assert processor.metadata["class_names"] == label_map.names
    again, _, _ = load_model(out)  # read back (through oneseg.json): the same model
    assert diff(outputs(again, False), outputs(ours, False)) == 0.0


def test_mask2former_round_trip(tmp_path):
    hf = tiny_mask2former(seed=5, hidden_dim=48)
    folder = save_folder(hf, tmp_path / "m2f-coco-semantic")
    out = convert_to_hf(folder, tmp_path / "out")
    back = Mask2FormerForUniversalSegmentation.from_pretrained(out).eval()
    ours, _, cfg = load_model(folder)
    assert cfg.mode == "semantic" and load_model(out).model_cfg.mode == "semantic"
    assert diff(outputs(back, True, None), outputs(ours, False, None)) < 1e-4
    assert diff(outputs(back, True, None), outputs(hf, True, None)) < 1e-4
    assert json.loads((out / "preprocessor_config.json").read_text())["size_divisor"] == 32
    processor = AutoImageProcessor.from_pretrained(out)
    assert type(processor).__name__.startswith("Mask2FormerImageProcessor")
    assert processor.image_mean == pytest.approx([0.485, 0.456, 0.406])


def native_checkpoint(tmp_path, **values) -> tuple:
    """A model made by oneseg (not read from transformers), saved as a checkpoint."""
    values = {
        "backbone": "convnext_tiny", "backbone_embed_dim": 16, "backbone_depths": [1, 1, 1, 1],
        "num_classes": 2, "hidden_dim": 32, "num_queries": 6, "nheads": 2,
        "dim_feedforward": 48, "dec_layers": 2, "query_dec_layers": 1,
        "pixel_decoder": {"conv_dim": 32, "mask_dim": 32, "enc_layers": 1, "enc_heads": 2,
                          "enc_ffn_dim": 64},
        "text_encoder": {"width": 32, "layers": 1, "n_ctx": 2},
        **values,
    }  # fmt: skip
    cfg = section_from_dict(ModelConfig, values, "model")
    torch.manual_seed(0)
    model = perturbed(build_model(cfg), 0)
    labels = LabelMap.from_categories([{"id": 7, "name": "cell"}, {"id": 9, "name": "gel"}])
    path = tmp_path / "native.ckpt"
    save_atomic(make_checkpoint(cfg, labels, model.state_dict()), path)
    return path, model


def test_a_model_made_here_loads_in_transformers(tmp_path):
    path, model = native_checkpoint(tmp_path)
    back = OneFormerForUniversalSegmentation.from_pretrained(convert_to_hf(path, tmp_path / "o"))
    for task in ("semantic", "panoptic"):
        assert diff(outputs(back.eval(), True, task), outputs(model, False, task)) < 1e-4


def test_what_transformers_cannot_express_is_refused(tmp_path):
    path, _ = native_checkpoint(tmp_path, task_text="This task is {task}.")
    with pytest.raises(ConversionError, match="task_text 'This task is {task}.'"):
        convert_to_hf(path, tmp_path / "a")
    path, _ = native_checkpoint(tmp_path, backbone="resnet50", backbone_embed_dim=0,
                                backbone_depths=[])  # fmt: skip
    with pytest.raises(ConversionError, match="backbone 'resnet50'"):
        convert_to_hf(path, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dinat_round_trip(tmp_path, monkeypatch):
    """DiNAT back to transformers (its attention run by our kernel: transformers' needs NATTEN,
    see tests/convert/test_hf_dinat.py)."""
    import transformers.models.dinat.modeling_dinat as md

    from tests.convert.test_hf_dinat import attention_forward

    monkeypatch.setattr(md, "requires_backends", lambda *args, **kwargs: None)
    monkeypatch.setattr(md.NeighborhoodAttention, "forward", attention_forward)
    hf = tiny_oneformer("dinat", seed=6)
    folder = save_folder(hf, tmp_path / "dinat")
    back = OneFormerForUniversalSegmentation.from_pretrained(convert_to_hf(folder, tmp_path / "o"))
    ours, _, _ = load_model(folder)
    assert diff(outputs(back.eval(), True), outputs(ours, False)) < 1e-4
    assert diff(outputs(back, True), outputs(hf, True)) < 1e-4
