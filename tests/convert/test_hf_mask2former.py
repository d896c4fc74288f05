"""transformers' Mask2Former folders load as our Mask2Former, equal to
`Mask2FormerForUniversalSegmentation` at the same weights (reference: transformers)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
from oneseg.checkpoint import load_model, read_checkpoint  # noqa: E402
from oneseg.convert.hf import ConversionError, load_hf_folder  # noqa: E402
from oneseg.convert.hf_mask2former import task_from_name  # noqa: E402
from oneseg.errors import CheckpointError  # noqa: E402
from tests.convert.tiny_hf import max_diff, save_folder, tiny_mask2former  # noqa: E402


@pytest.mark.parametrize("hidden_dim", [32, 48])
def test_mask2former_parity_all_layers(tmp_path, hidden_dim):
    hf = tiny_mask2former(seed=hidden_dim, hidden_dim=hidden_dim)
    folder = save_folder(hf, tmp_path / "mask2former-swin-tiny-coco-instance")
    ours, label_map, cfg = load_model(folder)
    assert cfg.arch == "mask2former" and cfg.mode == "instance" and cfg.dec_layers == 3
    assert label_map.names == ["wall", "person", "car"]
    # the processor's 0-1 mean, on our 0-255 scale
    assert cfg.pixel_mean == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    pixels = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_auxiliary_logits=True)
        out = ours(pixels)
    assert max_diff(out["pred_logits"], ref.class_queries_logits) < 1e-4
    assert max_diff(out["pred_masks"], ref.masks_queries_logits) < 1e-4
    assert len(out["aux_outputs"]) == len(ref.auxiliary_logits) == 3
    for aux, ref_aux in zip(out["aux_outputs"], ref.auxiliary_logits):
        assert max_diff(aux["pred_logits"], ref_aux["class_queries_logits"]) < 1e-4
        assert max_diff(aux["pred_masks"], ref_aux["masks_queries_logits"]) < 1e-4
    assert out["pred_masks"].std() > 0.05 and out["pred_logits"].std() > 0.05


def test_task_from_the_name():
    assert task_from_name("facebook/mask2former-swin-large-coco-panoptic") == "panoptic"
    assert task_from_name("facebook/mask2former-swin-small-ade-semantic") == "semantic"
    assert task_from_name("mask2former-swin-base-coco-instance") == "instance"
    assert task_from_name("my_model") == "panoptic"


def test_other_model_types_are_refused(tmp_path):
    hf = tiny_mask2former()
    folder = save_folder(hf, tmp_path / "m2f")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="detr", architectures=["DetrForObjectDetection"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="a 'detr' model \\(DetrForObjectDetection\\)"):
        load_hf_folder(folder)
    config.update(model_type="mask2former", activation_function="gelu")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="activation_function 'gelu'"):
        read_checkpoint(folder)
