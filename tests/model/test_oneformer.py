"""The assembled network: shapes, both architectures, training outputs and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from oneseg.config import ModelConfig, PixelDecoderConfig, TextEncoderConfig
from oneseg.constants import TASKS
from oneseg.model.build import build_model
from oneseg.model.transformer_decoder import LearnedQueries, TaskConditionedQueries
from oneseg.tokenizer import task_text, text_list, tokenize


def tiny_cfg(**overrides) -> ModelConfig:
    values = dict(
        backbone="swin_tiny",
        backbone_embed_dim=16,
        backbone_depths=[1, 1, 2, 1],
        backbone_num_heads=[1, 1, 2, 2],
        backbone_window_size=2,
        hidden_dim=32,
        num_queries=6,
        nheads=2,
        dim_feedforward=64,
        dec_layers=2,
        query_dec_layers=1,
        pixel_decoder=PixelDecoderConfig(
            conv_dim=32, mask_dim=32, enc_layers=1, enc_heads=2, enc_ffn_dim=64
        ),
        text_encoder=TextEncoderConfig(width=32, layers=1, n_ctx=2),
    )
    values.update(overrides)
    return ModelConfig(**values)


def task_tokens(task: str, batch: int) -> torch.Tensor:
    return tokenize([task_text(task)] * batch)


def text_tokens(cfg: ModelConfig, names: list[list[str]]) -> torch.Tensor:
    length = cfg.num_queries - cfg.text_encoder.n_ctx
    return torch.stack([tokenize(text_list(n, "panoptic", length)) for n in names])


def test_inference_outputs():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(dec_layers=4), num_classes=3).eval()
    assert (model.task_conditioned, model.num_classes, model.num_queries) == (True, 3, 6)
    assert model.size_divisibility == 32
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), task_tokens("semantic", 2))
    assert set(out) == {"pred_logits", "pred_masks", "aux_outputs"}
    assert out["pred_logits"].shape == (2, 6, 4)
    assert out["pred_masks"].shape == (2, 6, 16, 24)
    assert len(out["aux_outputs"]) == 4  # before the first layer and after layers 1-3
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 6, 4) and aux["pred_masks"].shape == (2, 6, 16, 24)
    assert len(model.decoder.layers) == 4


def test_training_outputs_and_backward():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg, num_classes=2).train()
    texts = text_tokens(cfg, [["cat"], ["dog", "cat", "sky"]])
    out = model(torch.randn(2, 3, 64, 64), task_tokens("panoptic", 2), texts)
    assert out["contrastive_logits"].shape == (2, 6, 32)
    assert out["texts"].shape == (2, 6, 32)  # 4 text entries + 2 learned contexts
    assert out["logit_scale"].dim() == 0
    assert out["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    loss = out["pred_masks"].mean() + out["pred_logits"].mean()
    loss = loss + sum(a["pred_masks"].mean() for a in out["aux_outputs"])
    loss = loss + (out["contrastive_logits"] * out["texts"]).sum() * out["logit_scale"]
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert backbone_params and len(backbone_params) < len(list(model.parameters()))


def test_mask2former_single_class():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(arch="mask2former", num_classes=1))
    assert not model.task_conditioned and model.task_mlp is None and model.text_queries is None
    names = [n for n, _ in model.named_parameters()]
    assert not any(
        n.startswith(("decoder.query_init.query_transformer", "text_queries")) for n in names
    )
    assert isinstance(model.decoder.query_init, LearnedQueries)
    assert "decoder.query_init.query_feat.weight" in names and not hasattr(model, "logit_scale")
    out = model(torch.randn(2, 3, 64, 64))
    assert out["pred_logits"].shape == (2, 6, 2)
    (out["pred_logits"].sum() + out["pred_masks"].mean()).backward()
    with pytest.raises(ValueError, match="no task"):
        model(torch.randn(1, 3, 64, 64), task_tokens("panoptic", 1))


def test_class_count_rules():
    with pytest.raises(ValueError, match="num_classes"):
        build_model(tiny_cfg())
    assert build_model(tiny_cfg(num_classes=5), num_classes=2).num_classes == 2
    with pytest.raises(ValueError, match="task_tokens"):
        build_model(tiny_cfg(), num_classes=2)(torch.randn(1, 3, 64, 64))


def test_normalize_uses_pixel_statistics():
    model = build_model(tiny_cfg(), num_classes=1)
    images = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(model.normalize(images), torch.zeros(1, 3, 2, 2), atol=1e-5)
    assert model.pixel_mean.shape == (3, 1, 1) and model.pixel_std.shape == (3, 1, 1)
    assert "pixel_mean" not in model.state_dict()


def test_batched_equals_per_image_and_tasks_differ():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    tasks = torch.cat([task_tokens("semantic", 1), task_tokens("instance", 1)])
    with torch.no_grad():
        batched = model(images, tasks)
        for i in range(2):
            single = model(images[i : i + 1], tasks[i : i + 1])
            assert torch.allclose(single["pred_masks"][0], batched["pred_masks"][i], atol=1e-4)
            assert torch.allclose(single["pred_logits"][0], batched["pred_logits"][i], atol=1e-4)
        other = model(images, task_tokens("panoptic", 2))
    assert not torch.allclose(other["pred_logits"], batched["pred_logits"])


def test_dropout_follows_train_mode():
    torch.manual_seed(0)
    cfg = tiny_cfg(query_dropout=0.5, drop_path_rate=0.0)
    cfg.pixel_decoder.dropout = 0.5
    model = build_model(cfg, num_classes=2)
    images, tasks = torch.randn(1, 3, 64, 64), task_tokens("panoptic", 1)
    model.eval()
    with torch.no_grad():
        first, second = model(images, tasks), model(images, tasks)
    assert torch.equal(first["pred_masks"], second["pred_masks"])
    model.train()
    with torch.no_grad():
        noisy = model(images, tasks)
    assert not torch.allclose(noisy["pred_masks"], first["pred_masks"])


@pytest.mark.parametrize("inference", [False, True])
def test_attention_mask_unmasks_empty_rows(inference):
    """Training gets a boolean mask (True: masked), inference an additive one (0 / lowest)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), num_classes=2).eval()
    decoder = model.decoder
    x = torch.randn(2, 6, 32)
    for bias, weight in ((-100.0, 0.0), (100.0, 0.0), (0.0, 1.0)):
        with torch.no_grad():
            decoder.mask_embed.layers[-1].bias.fill_(bias)  # -100: every mask empty
            decoder.mask_embed.layers[-1].weight.fill_(weight)
        with torch.set_grad_enabled(not inference):
            features = torch.randn(2, 32, 4, 4) if weight else torch.ones(2, 32, 4, 4)
            _, _, attn_mask = decoder.predict(x, torch.ones(2, 32, 16, 16), features)
        assert attn_mask.shape == (2, 6, 16)  # one mask for all heads
        assert attn_mask.dtype == (torch.float32 if inference else torch.bool)
        masked = attn_mask < 0 if inference else attn_mask
        if weight == 0:  # fully masked rows look everywhere; sigmoid >= 0.5: nothing masked
            assert not masked.any()
        else:
            assert 0 < masked.float().mean() < 1
            if inference:
                assert set(attn_mask.unique().tolist()) == {torch.finfo().min, 0.0}


def test_additive_mask_gives_the_boolean_masks_attention():
    """`additive_mask` of mask logits in attention against the boolean mask (sigmoid < 0.5,
    empty rows unmasked) through PyTorch's attention, float64; in bf16 it decides by the sign
    where sigmoid rounds to 0.5."""
    import torch.nn.functional as F

    from oneseg.model.transformer_decoder import additive_mask

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 40, dtype=torch.float64)
    logits[0, 1] = -torch.rand(40, dtype=torch.float64) - 0.1  # a query with an empty mask
    masked = logits.sigmoid() < 0.5
    masked &= ~masked.all(-1, keepdim=True)
    q, k, v = (torch.randn(2, 3, n, 8, dtype=torch.float64) for n in (5, 40, 40))
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=~masked[:, None])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(logits)[:, None])
    assert (out - reference).abs().max() < 1e-12 and masked.float().mean() > 0.3
    near = torch.tensor([-0.003, -1e-6, 0.0, 2e-3], dtype=torch.bfloat16)
    assert (near.sigmoid() < 0.5).tolist() == [False, False, False, False]
    assert (additive_mask(near[None].expand(2, -1))[0] < 0).tolist() == [True, True, False, False]


def test_text_encoder_is_causal():
    torch.manual_seed(0)
    encoder = build_model(tiny_cfg(), num_classes=1).text_queries.encoder.eval()
    tokens = tokenize(["a photo with a cat", "a photo with a cat"])
    tokens[1, 5] = 1234  # change a later token
    with torch.no_grad():
        features = encoder.token_features(tokens)
    assert torch.allclose(features[0, :5], features[1, :5], atol=1e-6)
    assert not torch.allclose(features[0, 5:], features[1, 5:], atol=1e-4)
    pooled = encoder(tokens)  # read at the end-of-text token
    eot = tokens[0].argmax().item()
    assert torch.allclose(pooled[0], features[0, eot], atol=1e-6)


def test_padding_is_zero_after_normalisation():
    """Outside each image's content the normalised input is 0 (the mean colour), as the original
    pads; inside it is (x - mean) / std."""
    model = build_model(tiny_cfg(), num_classes=3)
    images = torch.randint(0, 256, (2, 3, 64, 96)).float()
    normalized = model.normalize(images, [(64, 96), (40, 50)])
    expected = (images - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(normalized[0], expected[0])
    torch.testing.assert_close(normalized[1, :, :40, :50], expected[1, :, :40, :50])
    assert normalized[1, :, 40:].abs().sum() == 0 and normalized[1, :, :, 50:].abs().sum() == 0
    torch.testing.assert_close(model.normalize(images), expected)


def test_padding_matches_transformers_processor():
    """transformers' OneFormer processor normalises, then pads with 0: the same input tensor as
    ours for a batch of two sizes (within float32 rounding of its 0-1 rescale)."""
    import numpy as np

    hf = pytest.importorskip("transformers.models.oneformer.image_processing_oneformer")
    processor = hf.OneFormerImageProcessor(do_resize=False)
    processor.class_info_file, processor.metadata = "", {"thing_ids": []}
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 70, 3), (64, 50, 3))]
    theirs = processor.preprocess(arrays, task_inputs=["panoptic"] * 2, return_tensors="pt")
    pixel_values = theirs["pixel_values"]  # [2, 3, 64, 70]
    batch = torch.zeros(2, 3, *pixel_values.shape[-2:])
    for i, array in enumerate(arrays):
        batch[i, :, : array.shape[0], : array.shape[1]] = torch.from_numpy(array).permute(2, 0, 1)
    model = build_model(tiny_cfg(), num_classes=3)
    ours = model.normalize(batch, [a.shape[:2] for a in arrays])
    torch.testing.assert_close(ours, pixel_values, rtol=1e-5, atol=1e-5)


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_predict_equals_forward_with_tokenized_tasks():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), num_classes=3).eval()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    prediction = model.predict(images, ["semantic", "panoptic"])
    assert prediction.image_sizes == [(64, 96)] * 2 and prediction.padded_size == (64, 96)
    with torch.no_grad():
        for task in ("semantic", "panoptic"):
            out = model(model.normalize(images.float()), task_tokens(task, 2))
            for key in ("pred_logits", "pred_masks"):
                torch.testing.assert_close(prediction.outputs[task][key], out[key])


def test_predict_runs_backbone_and_pixel_decoder_once_for_all_tasks():
    model = build_model(tiny_cfg(), num_classes=3).eval()
    backbone, pixel_decoder, decoder = (
        count_calls(m) for m in (model.backbone, model.pixel_decoder, model.decoder)
    )
    prediction = model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TASKS)
    assert list(prediction.outputs) == list(TASKS)
    assert (len(backbone), len(pixel_decoder), len(decoder)) == (1, 1, 3)
    logits = [prediction.outputs[t]["pred_logits"] for t in TASKS]
    assert not torch.allclose(logits[0], logits[2])  # the task token changes the outputs


def test_mask2former_predict_runs_the_decoder_once():
    model = build_model(tiny_cfg(arch="mask2former", num_classes=2)).eval()
    decoder = count_calls(model.decoder)
    prediction = model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TASKS)
    assert len(decoder) == 1
    assert (
        prediction.outputs["semantic"]["pred_masks"] is prediction.outputs["panoptic"]["pred_masks"]
    )


def test_predict_pads_after_normalisation_and_lists_equal_batches():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), num_classes=3).eval()
    small = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    large = torch.randint(0, 256, (3, 64, 70), dtype=torch.uint8)
    normalized, sizes = model.preprocess([small, large])
    assert normalized.shape == (2, 3, 64, 96) and sizes == [(40, 50), (64, 70)]
    assert normalized[0, :, 40:].abs().max() == 0 and normalized[0, :, :, 50:].abs().max() == 0
    batch = torch.zeros(2, 3, 64, 96, dtype=torch.uint8)  # black padding, as a loader pads
    batch[0, :, :40, :50], batch[1, :, :, :70] = small, large
    from_list = model.predict([small, large], ["instance"]).outputs["instance"]
    from_batch = model.predict(batch, ["instance"], sizes).outputs["instance"]
    torch.testing.assert_close(from_list["pred_masks"], from_batch["pred_masks"])


def test_query_initialisation_is_a_part_chosen_by_build_model():
    oneformer = build_model(tiny_cfg(), num_classes=2)
    assert isinstance(oneformer.decoder.query_init, TaskConditionedQueries)
    with pytest.raises(ValueError, match="task token"):
        oneformer.decoder.query_init(torch.zeros(1, 32, 4, 4), oneformer.decoder.query_embed.weight)


def test_checkpoints_with_the_earlier_decoder_keys_still_load(tmp_path):
    from oneseg.checkpoint import RENAMED_KEYS, load_model, make_checkpoint, save_atomic
    from oneseg.data.label_map import LabelMap

    cfg = tiny_cfg(num_classes=2)
    model = build_model(cfg)
    old = {}
    for key, value in model.state_dict().items():
        for earlier, now in RENAMED_KEYS:
            key = key.replace(now, earlier)
        old[key] = value
    assert "decoder.query_transformer.norm.weight" in old
    labels = LabelMap.from_categories([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    save_atomic(make_checkpoint(cfg, labels, old), tmp_path / "old.pth")
    loaded = load_model(tmp_path / "old.pth").model
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
