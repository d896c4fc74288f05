"""Parity with transformers' OneFormer at identical weights, and the converter's errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    ConvNextConfig,
    OneFormerConfig,
    OneFormerForUniversalSegmentation,
    SwinConfig,
)

from oneseg.checkpoint import convert_checkpoint, load_model, read_checkpoint  # noqa: E402
from oneseg.config import ModelConfig  # noqa: E402
from oneseg.convert.hf import (  # noqa: E402
    ConversionError,
    load_hf_oneformer,
    model_values,
)
from oneseg.model.build import build_model  # noqa: E402
from oneseg.spec import section_from_dict  # noqa: E402
from oneseg.tokenizer import task_text, text_list, tokenize  # noqa: E402
from tests.convert.tiny_hf import perturbed  # noqa: E402

STAGES = ["stage1", "stage2", "stage3", "stage4"]
TASKS = ("semantic", "instance", "panoptic")

# Two configurations differing in queries, layers, widths, window and image size.
CONFIGS = {
    "a": dict(
        backbone=dict(embed_dim=16, depths=[1, 1, 2, 2], num_heads=[1, 1, 2, 2], window_size=2),
        head=dict(num_queries=8, hidden_dim=64, conv_dim=64, mask_dim=64, num_attention_heads=4,
                  dim_feedforward=64, encoder_feedforward_dim=32, encoder_layers=2,
                  decoder_layers=4, query_dec_layers=2, text_encoder_width=64,
                  text_encoder_num_layers=2, text_encoder_n_ctx=2, num_labels=4),
        image=(96, 128),
    ),
    "b": dict(
        backbone=dict(embed_dim=24, depths=[2, 1, 1, 2], num_heads=[1, 2, 2, 4], window_size=3),
        head=dict(num_queries=5, hidden_dim=32, conv_dim=32, mask_dim=32, num_attention_heads=2,
                  dim_feedforward=48, encoder_feedforward_dim=64, encoder_layers=1,
                  decoder_layers=5, query_dec_layers=1, text_encoder_width=64,
                  text_encoder_num_layers=1, text_encoder_n_ctx=1, num_labels=3),
        image=(128, 64),
    ),
}  # fmt: skip


def hf_config(name: str, *, is_training: bool = False, backbone: str = "swin") -> OneFormerConfig:
    spec = CONFIGS[name]
    if backbone == "swin":
        bb = SwinConfig(**spec["backbone"], out_features=STAGES, drop_path_rate=0.0)
    else:
        bb = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                            out_features=STAGES, drop_path_rate=0.0)  # fmt: skip
    return OneFormerConfig(backbone_config=bb, is_training=is_training, dropout=0.0, **spec["head"])


def save_hf(tmp_path, name, *, is_training=False, backbone="swin", seed=0):
    torch.manual_seed(seed)
    model = perturbed(
        OneFormerForUniversalSegmentation(
            hf_config(name, is_training=is_training, backbone=backbone)
        ),
        seed,
    )
    folder = tmp_path / f"hf_{name}_{backbone}_{int(is_training)}"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def swin_b(tmp_path_factory):
    """transformers model, its folder and our conversion, for config "b" with Swin."""
    hf, folder = save_hf(tmp_path_factory.mktemp("hf"), "b")
    return hf, folder, ours_from(folder)


@pytest.fixture(scope="module")
def convnext_a(tmp_path_factory):
    hf, folder = save_hf(tmp_path_factory.mktemp("hf"), "a", backbone="convnext")
    return hf, folder, ours_from(folder)


def ours_from(folder) -> torch.nn.Module:
    values, state, _ = load_hf_oneformer(folder)
    model = build_model(section_from_dict(ModelConfig, values, "model"))
    model.load_state_dict(state)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_inference_parity_all_tasks_and_layers(tmp_path, request, name):
    if name == "b":
        hf, _, ours = request.getfixturevalue("swin_b")
    else:
        hf, folder = save_hf(tmp_path, name)
        ours = ours_from(folder)
    hf.eval(), ours.eval()
    height, width = CONFIGS[name]["image"]
    batch = 2 if name == "a" else 1
    pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    num_layers = CONFIGS[name]["head"]["decoder_layers"] - 1
    for task in TASKS:
        task_tokens = tokenize([task_text(task)] * batch)
        with torch.no_grad():
            ref = hf(pixel_values=pixels, task_inputs=task_tokens)
            out = ours(pixels, task_tokens)
        assert len(out["aux_outputs"]) == num_layers == len(ref.auxiliary_predictions)
        assert out["pred_masks"].shape[-2:] == (height // 4, width // 4)
        assert max_diff(out["pred_logits"], ref.class_queries_logits) < 1e-4
        assert max_diff(out["pred_masks"], ref.masks_queries_logits) < 1e-4
        for aux, ref_aux in zip(out["aux_outputs"], ref.auxiliary_predictions):
            assert max_diff(aux["pred_logits"], ref_aux["class_queries_logits"]) < 1e-4
            assert max_diff(aux["pred_masks"], ref_aux["masks_queries_logits"]) < 1e-4
        # the network's outputs are not trivially flat
        assert out["pred_masks"].std() > 0.05 and out["pred_logits"].std() > 0.05


def test_backbone_features_equal(swin_b, convnext_a):
    for hf, _, ours in (swin_b, convnext_a):
        pixels = torch.randn(1, 3, 128, 64)  # stage sizes not multiples of the Swin window
        with torch.no_grad():
            ref = hf.model.pixel_level_module.encoder(pixels).feature_maps
            maps = ours.backbone(pixels)
        assert len(maps) == 4
        for a, b in zip(maps, ref):
            assert max_diff(a, b) < 1e-4


def test_convnext_parity(convnext_a):
    hf, _, ours = convnext_a
    hf.eval(), ours.eval()
    pixels = torch.randn(1, 3, 64, 96)
    task_tokens = tokenize([task_text("panoptic")])
    with torch.no_grad():
        ref = hf(pixel_values=pixels, task_inputs=task_tokens)
        out = ours(pixels, task_tokens)
    assert max_diff(out["pred_logits"], ref.class_queries_logits) < 1e-4
    assert max_diff(out["pred_masks"], ref.masks_queries_logits) < 1e-4


class _CausalAttention(torch.nn.Module):
    """Passes the text layer's stored causal mask on: transformers stores it but never uses it."""

    def __init__(self, attn, mask):
        super().__init__()
        self.attn, self.mask = attn, mask

    def forward(self, query, key, value, need_weights=False, key_padding_mask=None):
        return self.attn(query, key, value, need_weights=need_weights, attn_mask=self.mask,
                         key_padding_mask=key_padding_mask)  # fmt: skip


def test_training_text_branch_parity(tmp_path):
    hf, folder = save_hf(tmp_path, "a", is_training=True)
    ours = ours_from(folder)
    hf.train(), ours.train()  # dropout and drop-path are 0 in this config
    n_text = CONFIGS["a"]["head"]["num_queries"] - CONFIGS["a"]["head"]["text_encoder_n_ctx"]
    names = [["cat", "dog"], ["person"]]
    texts = torch.stack([tokenize(text_list(n, "panoptic", n_text)) for n in names])
    task_tokens = tokenize([task_text("panoptic")] * 2)
    pixels = torch.randn(2, 3, 64, 64)
    out = ours(pixels, task_tokens, texts)
    assert out["texts"].shape == (2, CONFIGS["a"]["head"]["num_queries"], 64)
    assert out["logit_scale"].item() == pytest.approx(hf.criterion.logit_scale.item())

    ref = hf(pixel_values=pixels, task_inputs=task_tokens, text_inputs=texts)
    assert max_diff(out["contrastive_logits"], ref.transformer_decoder_contrastive_queries) < 1e-4
    # transformers' text encoder ignores its causal mask: ours (like the original) applies it
    assert max_diff(out["texts"], ref.text_queries) > 1e-3
    for layer in hf.model.text_mapper.text_encoder.transformer.layers:
        layer.self_attn = _CausalAttention(layer.self_attn, layer.attn_mask)
    ref = hf(pixel_values=pixels, task_inputs=task_tokens, text_inputs=texts)
    assert max_diff(out["texts"], ref.text_queries) < 1e-4
    assert max_diff(out["pred_masks"], ref.masks_queries_logits) < 1e-4


def test_config_values():
    values = model_values(hf_config("a").to_dict())
    assert values["dec_layers"] == 3  # transformers' decoder_layers=4 builds 3 layers
    assert values["backbone"] == "swin_tiny" and values["backbone_embed_dim"] == 16
    assert values["backbone_window_size"] == 2 and values["num_classes"] == 4
    assert values["pixel_decoder"]["enc_heads"] == 4 and values["query_dropout"] == 0.0
    full = model_values(OneFormerConfig().to_dict())  # the published swin-tiny layout
    assert full["backbone"] == "swin_tiny" and full["backbone_embed_dim"] == 0
    assert full["dec_layers"] == 9 and full["num_queries"] == 150


def test_unsupported_configs_are_refused():
    config = hf_config("a").to_dict()
    config["backbone_config"] = {"model_type": "focalnet", "out_features": STAGES}
    with pytest.raises(ConversionError, match="focalnet"):
        model_values(config)
    config["backbone_config"] = {"model_type": "dinat", "out_features": STAGES}
    with pytest.raises(ConversionError, match="DiNAT config lacks 'embed_dim'"):
        model_values(config)
    config = hf_config("a").to_dict()
    config["hidden_dim"] = 32
    with pytest.raises(ConversionError, match="input projections"):
        model_values(config)


def test_missing_and_unexpected_tensors_are_named(tmp_path, swin_b):
    folder = tmp_path / "edited"
    shutil.copytree(swin_b[1], folder)
    weights = load_file(str(folder / "model.safetensors"))
    key = "model.transformer_module.decoder.class_embed.weight"
    weights["model.extra.tensor"] = torch.zeros(3)
    del weights[key]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ConversionError, match="class_embed") as info:
        load_hf_oneformer(folder)
    assert "model.extra.tensor"[len("model.") :] in str(info.value)


def test_checkpoint_file_round_trip(tmp_path, swin_b):
    hf, folder, _ = swin_b
    out_file = convert_checkpoint(folder, tmp_path / "converted.pth")
    ckpt = torch.load(out_file, weights_only=True)
    assert ckpt["format"] == "oneseg" and ckpt["version"] == 1
    assert [c["name"] for c in ckpt["label_map"]] == list(hf.config.id2label.values())
    json.dumps(ckpt["model_cfg"])  # plain types only
    model, label_map, _ = load_model(out_file)
    assert len(label_map) == 3 and model.num_classes == 3
    _, _, state = read_checkpoint(folder)  # a transformers folder is a source too
    assert set(state) == set(model.state_dict())
    pixels = torch.randn(1, 3, 64, 64)
    task_tokens = tokenize([task_text("instance")])
    with torch.no_grad():
        ref = hf.eval()(pixel_values=pixels, task_inputs=task_tokens)
        out = model(pixels, task_tokens)
    assert max_diff(out["pred_masks"], ref.masks_queries_logits) < 1e-4


def test_sharded_bin_checkpoint(tmp_path, swin_b):
    """Older folders hold pytorch_model.bin, large ones shards listed in an index."""
    hf, folder, ours = swin_b
    weights = load_file(str(folder / "model.safetensors"))
    keys = sorted(weights)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(folder / "config.json", sharded / "config.json")
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        torch.save({k: weights[k] for k in part}, sharded / f"pytorch_model-{i}.bin")
        weight_map.update({k: f"pytorch_model-{i}.bin" for k in part})
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    _, state, _ = load_hf_oneformer(sharded)
    converted = {k: v for k, v in ours.state_dict().items() if not k.startswith("text_queries.")}
    assert converted and all(torch.equal(state[k], v) for k, v in converted.items())


def test_cli_convert_and_folder_as_a_checkpoint(tmp_path, swin_b, capsys):
    import numpy as np

    from oneseg import cli
    from oneseg.predictor import Predictor

    _, folder, _ = swin_b
    out_file = tmp_path / "cli.pth"
    assert cli.main(["convert", "--from-hf", str(folder), "--out", str(out_file)]) == 0
    assert f"wrote {out_file}" in capsys.readouterr().out
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    from_file = Predictor.from_checkpoint(out_file)(image, task="semantic")
    from_folder = Predictor.from_checkpoint(folder)(image, task="semantic")
    assert from_file.labels.shape == (48, 80)
    assert np.array_equal(from_file.labels, from_folder.labels)
    # a missing source is bad input (exit 2)
    assert cli.main(["convert", "--from-hf", str(tmp_path / "nope"), "--out", "x.pth"]) == 2
