"""Original (detectron2) and TAO OneFormer checkpoints load through `load_model` and give the
outputs of the transformers model they were made from.

The original-layout state dict is built from a transformers model by inverting transformers'
own conversion script (`convert_to_hf_oneformer.py`: original name -> transformers name)."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    OneFormerConfig,
    OneFormerForUniversalSegmentation,
    SwinConfig,
)

from oneseg.checkpoint import load_model, read_checkpoint  # noqa: E402

PD, PRED = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
SWIN = "model.pixel_level_module.encoder.swin."
DEC = "model.pixel_level_module.decoder."
TRF = "model.transformer_module."

# transformers (in-memory names) -> original, one substitution per line of the conversion script
TO_ORIGINAL = [
    (SWIN + r"embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
    (SWIN + r"embeddings\.norm\.", "backbone.patch_embed.norm."),
    (SWIN + r"encoder\.layers\.(\d+)\.", r"backbone.layers.\1."),
    (r"\.attention\.relative_position_bias\.", ".attn."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.",
     lambda m: f"backbone.norm{int(m[1]) - 1}."),
    (DEC + r"level_embed", PD + "transformer.level_embed"),
    (DEC + r"input_projections\.", PD + "input_proj."),
    (DEC + r"encoder\.layers\.(\d+)\.", PD + r"transformer.encoder.layers.\1."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"\.final_layer_norm\.", ".norm2."),
    (r"(encoder\.layers\.\d+)\.fc(\d)\.", r"\1.linear\2."),
    (DEC + r"mask_projection\.", PD + "mask_features."),
    (DEC + r"(adapter|layer)_(\d+)\.0\.", PD + r"\1_\2."),
    (DEC + r"(adapter|layer)_(\d+)\.1\.", PD + r"\1_\2.norm."),
    (TRF + r"queries_embedder\.", PRED + "query_embed."),
    (TRF + r"level_embed\.", PRED + "level_embed."),
    (TRF + r"decoder\.query_transformer\.decoder\.", PRED + "class_transformer.decoder."),
    (TRF + r"decoder\.layers\.(\d+)\.(cross|self)_attn\.",
     PRED + r"transformer_\2_attention_layers.\1."),
    (TRF + r"decoder\.layers\.(\d+)\.ffn\.", PRED + r"transformer_ffn_layers.\1."),
    (TRF + r"decoder\.query_input_projection\.", PRED + "class_input_proj."),
    (TRF + r"decoder\.mask_embed\.layers\.(\d)\.0\.", PRED + r"mask_embed.layers.\1."),
    (TRF + r"decoder\.", PRED),
    (r"model\.task_encoder\.task_mlp\.layers\.(\d)\.0\.", r"task_mlp.layers.\1."),
    (r"model\.text_mapper\.text_encoder\.transformer\.layers\.",
     "text_encoder.transformer.resblocks."),
    (r"(resblocks\.\d+)\.self_attn\.", r"\1.attn."),
    (r"(resblocks\.\d+)\.layer_norm(\d)\.", r"\1.ln_\2."),
    (r"(resblocks\.\d+)\.mlp\.fc1\.", r"\1.mlp.c_fc."),
    (r"(resblocks\.\d+)\.mlp\.fc2\.", r"\1.mlp.c_proj."),
    (r"model\.text_mapper\.text_projector\.layers\.(\d)\.0\.", r"text_projector.layers.\1."),
    (r"model\.text_mapper\.", ""),
]  # fmt: skip
FUSED = [  # separate q, k, v in transformers; one projection in the original
    (r"(.+)\.attention\.[qkv]_proj\.(weight|bias)", r"\1.attn.qkv.\2", "attention.{}_proj"),
    (r"(.+)\.self_attn\.self_attn\.[qkv]_proj\.(weight|bias)", r"\1.self_attn.self_attn.in_proj_\2",
     "self_attn.self_attn.{}_proj"),
]  # fmt: skip


def original_state_dict(hf_state: dict) -> dict:
    """The detectron2-layout state dict of a transformers OneFormer (Swin backbone)."""
    out = {}
    for key, value in hf_state.items():
        if key.startswith(SWIN + "layernorm."):
            continue  # the classifier's final norm: the detectron2 Swin has none
        fused = next((f for f in FUSED if re.fullmatch(f[0], key)), None)
        if fused is not None:
            if "q_proj" in key:  # q, k, v concatenated once, at the query
                parts = [hf_state[key.replace("q_proj", f"{p}_proj")] for p in "qkv"]
                key, value = re.sub(fused[0], fused[1], key), torch.cat(parts)
            else:
                continue
        for pattern, template in TO_ORIGINAL:
            key = re.sub(pattern, template, key)
        out[key] = value.clone()
    return out


def hf_oneformer(seed: int = 0) -> OneFormerForUniversalSegmentation:
    torch.manual_seed(seed)
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3,
        out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0,
    )  # fmt: skip
    config = OneFormerConfig(
        backbone_config=backbone, is_training=True, dropout=0.0, num_queries=6, hidden_dim=64,
        conv_dim=64, mask_dim=64, num_attention_heads=2, dim_feedforward=48,
        encoder_feedforward_dim=64, encoder_layers=2, decoder_layers=4, query_dec_layers=1,
        text_encoder_width=64, text_encoder_num_layers=1, text_encoder_n_ctx=2, num_labels=3,
    )  # fmt: skip
    model = OneFormerForUniversalSegmentation(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # transformers starts some tensors at zero (offsets, level embeds)
        for name, param in model.named_parameters():
            if not name.endswith("logit_scale"):
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    model.model.is_training = False  # built with the text branch, run without texts
    return model.eval()


@pytest.fixture(scope="module")
def hf_and_original():
    hf = hf_oneformer()
    original = original_state_dict(hf.state_dict())
    original["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(9, 9).long()
    return hf, original


def assert_same_outputs(ours, hf):
    pixels = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    task_tokens = torch.randint(0, 400, (1, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, task_inputs=task_tokens)
        out = ours(pixels, task_tokens)
    assert (out["pred_logits"] - ref.class_queries_logits).abs().max().item() < 1e-4
    assert (out["pred_masks"] - ref.masks_queries_logits).abs().max().item() < 1e-4
    assert out["pred_masks"].std() > 0.05  # not trivially flat


def test_original_checkpoint_gives_transformers_outputs(tmp_path, hf_and_original):
    hf, original = hf_and_original
    path = tmp_path / "oneformer_swin.pth"
    torch.save({"model": original, "iteration": 100}, path)  # detectron2's checkpointer layout
    ours, label_map, _ = load_model(path)
    assert len(label_map) == 3
    assert_same_outputs(ours, hf)


class TaoExperimentConfig:
    """Stands for the spec object TAO saves among a checkpoint's hyper-parameters."""

    def __init__(self):
        self.model = {"backbone": {"name": "D2SwinTransformer"}}


def test_tao_lightning_checkpoint_read_weights_only(tmp_path, hf_and_original):
    hf, original = hf_and_original
    state = {("criterion." + k[10:] if k.startswith("criterion.") else "model." + k): v
             for k, v in original.items()}  # fmt: skip
    path = tmp_path / "oneformer_model_latest.pth"
    torch.save({"epoch": 3, "state_dict": state,
                "hyper_parameters": {"cfg": TaoExperimentConfig()}}, path)  # fmt: skip
    with pytest.raises(Exception, match="Unsupported global"):  # plain weights-only refuses it
        torch.load(path, weights_only=True)
    ours, _, _ = load_model(path)
    assert_same_outputs(ours, hf)
    assert not hasattr(TaoExperimentConfig, "loaded")  # nothing of it ran


def test_missing_and_unexpected_keys_in_one_error(tmp_path, hf_and_original):
    _, original = hf_and_original
    broken = dict(original)
    del broken[PRED + "transformer_ffn_layers.1.norm.weight"]
    del broken["backbone.norm2.bias"]
    broken[PRED + "extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save({"model": broken}, path)
    with pytest.raises(ValueError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "backbone.norm2.bias" in message and "transformer_ffn_layers.1.norm.weight" in message
    assert "extra_head.weight" in message and "unexpected" in message


def test_inference_checkpoint_without_text_branch(tmp_path, hf_and_original):
    hf, original = hf_and_original
    text_branch = ("text_encoder.", "text_projector.", "prompt_ctx")
    inference_only = {k: v for k, v in original.items() if not k.startswith(text_branch)}
    path = tmp_path / "inference.pth"
    torch.save({"model": inference_only}, path)
    ours, _, _ = load_model(path)
    assert_same_outputs(ours, hf)


# --------------------------------------------------------------------------- Mask2Former
# transformers' Mask2Former decoder -> original (`convert_mask2former_original_pytorch_...py`)
M2F_TO_ORIGINAL = [
    (TRF + r"queries_features\.", PRED + "query_feat."),
    (TRF + r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     PRED + r"transformer_self_attention_layers.\1.norm."),
    (TRF + r"decoder\.layers\.(\d+)\.self_attn\.",
     PRED + r"transformer_self_attention_layers.\1.self_attn."),
    (TRF + r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.",
     PRED + r"transformer_cross_attention_layers.\1.norm."),
    (TRF + r"decoder\.layers\.(\d+)\.cross_attn\.",
     PRED + r"transformer_cross_attention_layers.\1.multihead_attn."),
    (TRF + r"decoder\.layers\.(\d+)\.fc(\d)\.", PRED + r"transformer_ffn_layers.\1.linear\2."),
    (TRF + r"decoder\.layers\.(\d+)\.final_layer_norm\.",
     PRED + r"transformer_ffn_layers.\1.norm."),
    (TRF + r"decoder\.layernorm\.", PRED + "decoder_norm."),
    (TRF + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", PRED + r"mask_embed.layers.\1."),
    (r"^class_predictor\.", PRED + "class_embed."),
]  # fmt: skip


def original_mask2former_state_dict(hf_state: dict) -> dict:
    renamed = {}
    for key, value in hf_state.items():
        match = re.fullmatch(TRF + r"decoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key)
        if match:
            parts = [hf_state[key.replace("q_proj", f"{p}_proj")] for p in "qkv"]
            key = (
                PRED + f"transformer_self_attention_layers.{match[1]}.self_attn.in_proj_{match[2]}"
            )
            renamed[key] = torch.cat(parts)
        elif not re.search(r"decoder\.layers\.\d+\.self_attn\.[kv]_proj", key):
            for pattern, template in M2F_TO_ORIGINAL:
                key = re.sub(pattern, template, key)
            renamed[key] = value
    return original_state_dict(renamed)


def test_original_mask2former_gives_transformers_outputs(tmp_path):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3,
        out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0,
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, num_queries=5, hidden_dim=32, feature_size=32,
        mask_feature_size=32, num_attention_heads=2, dim_feedforward=48,
        encoder_feedforward_dim=64, encoder_layers=2, decoder_layers=4, num_labels=3, dropout=0.0,
    )  # fmt: skip
    hf = Mask2FormerForUniversalSegmentation(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    hf.eval()
    # the model zoo's layout: a pickle of numpy arrays
    original = {k: v.numpy() for k, v in original_mask2former_state_dict(hf.state_dict()).items()}
    path = tmp_path / "model_final_mask2former.pkl"
    with open(path, "wb") as file:
        pickle.dump({"model": original, "__author__": "Mask2Former"}, file)
    ours, label_map, _ = load_model(path)
    assert len(label_map) == 3 and not hasattr(ours.decoder, "query_transformer")
    pixels = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=pixels)
        out = ours(pixels)
    assert (out["pred_logits"] - ref.class_queries_logits).abs().max().item() < 1e-4
    assert (out["pred_masks"] - ref.masks_queries_logits).abs().max().item() < 1e-4
    assert out["pred_masks"].std() > 0.05


def test_original_dinat_oneformer_sizes_read_from_shapes(tmp_path, tiny_model_cfg):
    """A DiNAT OneFormer in the original names: every size comes back from the tensors."""
    from dataclasses import replace

    from oneseg.convert.detectron2 import backbone_rules, head_rules
    from oneseg.model.build import build_model

    cfg = replace(
        tiny_model_cfg, backbone="dinat_small", backbone_embed_dim=16, backbone_depths=[2, 2, 1, 1],
        backbone_num_heads=[1, 2, 2, 4], backbone_window_size=3, num_queries=6,
        # the published GroupNorm groups: a group count leaves no trace in the tensors
        pixel_decoder=replace(tiny_model_cfg.pixel_decoder, norm_groups=32),
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3).eval()
    rules = [(re.compile(p), t) for p, t in backbone_rules("dinat") + head_rules(1)]
    original = {}
    for key, value in model.state_dict().items():
        pattern, template = next((p, t) for p, t in rules if p.fullmatch(key))
        match = pattern.fullmatch(key)
        original[template(match) if callable(template) else match.expand(template)] = value
    assert "backbone.levels.1.blocks.1.attn.rpb" in original
    torch.save({"model": original}, tmp_path / "oneformer_dinat.pth")
    loaded, _, _ = load_model(tmp_path / "oneformer_dinat.pth")
    assert loaded.backbone.levels[0].blocks[1].attn.dilation == 8  # 224-px schedule
    assert loaded.backbone.levels[0].blocks[0].attn.kernel_size == 3
    pixels = torch.randn(1, 3, 64, 64)
    task_tokens = torch.randint(0, 400, (1, 77))
    with torch.no_grad():
        expected, got = model(pixels, task_tokens), loaded(pixels, task_tokens)
    assert torch.equal(expected["pred_masks"], got["pred_masks"])


def test_pickle_with_anything_but_arrays_is_refused(tmp_path):
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as file:
        pickle.dump({"model": {"backbone.x": TaoExperimentConfig()}}, file)
    with pytest.raises(ValueError, match="TaoExperimentConfig has no place in a weights file"):
        read_checkpoint(path)
