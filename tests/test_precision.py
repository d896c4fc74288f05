"""Inference precision: the `auto` rule (CPU flags and CUDA mocked), the bf16 forward against
the fp32 one on the tiny model for the three tasks, and the parts kept in float32.

Tolerances (bf16 keeps 8 significant bits, ~0.4% per rounding; the tiny model's random-weight
outputs are all of order 1): the raw outputs within 3% of the fp32 ones in relative L2 norm
(seen: 0.5-1.1%); results after post-processing: >= 98% of semantic pixels and >= 95% of
panoptic pixels equal, sorted instance scores within 0.02 (seen: 100%, >= 97%, < 0.001)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oneseg import precision
from oneseg.model import packed
from oneseg.model.build import build_model
from oneseg.model.postprocess import PostprocessConfig, postprocess

ISTHING = [True, True, False, False, True]


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nflags: x\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx512f", "avx512_bf16"}, "bf16"),
        ({"amx_tile", "amx_bf16"}, "bf16"),
        ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),
        (set(), "fp32"),
    ],
)
def test_auto_on_cpu_follows_the_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.choose_precision("auto", "cpu") == expected
    assert precision.choose_precision("fp32", "cpu") == "fp32"  # asked for: kept


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert precision.choose_precision("auto", "cuda") == expected
    assert precision.choose_precision("fp16", "cuda:0") == "fp16"
    if not bf16:
        with pytest.raises(ValueError, match="does not support bfloat16"):
            precision.choose_precision("bf16", "cuda")


def test_unknown_precision_refused():
    with pytest.raises(ValueError, match="'fp8' is not one of"):
        precision.choose_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        precision.autocast("auto", "cpu")


@pytest.mark.skipif(not packed._BF16, reason="oneDNN without bf16 on this CPU")
def test_packed_linear_gets_a_bf16_pack_under_autocast():
    layer = packed.PackedLinear(64, 32)
    x = torch.randn(10, 64)
    with torch.no_grad():
        exact = F.linear(x, layer.weight, layer.bias)
        with precision.autocast("bf16", "cpu"):
            out = layer(x)
            reference = F.linear(x, layer.weight, layer.bias)  # autocast's own bf16 product
        fp32 = layer(x)
    assert out.dtype == torch.bfloat16 and ("weight", torch.bfloat16) in layer._packed_weights
    assert ("weight", torch.float32) in layer._packed_weights  # both packs kept
    assert torch.allclose(out.float(), reference.float(), atol=0.02, rtol=0.02)
    assert torch.allclose(fp32, exact, atol=1e-5)  # the fp32 pack still serves fp32


def test_training_attention_runs_in_float32_on_cpu(monkeypatch):
    from oneseg.model.layers import attention

    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **options):
        seen.append(q.dtype)
        return sdpa(q, k, v, **options)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 5, 16)
    reference = attention(attn, x, x, x)
    with precision.autocast("bf16", "cpu"):
        out = attention(attn, x, x, x)  # training: the kernels' bf16 backward is the slower
        with torch.no_grad():
            attention(attn, x, x, x)  # inference keeps bf16
    out.float().sum().backward()
    assert seen == [torch.float32, torch.float32, torch.bfloat16]
    assert out.dtype == torch.bfloat16 and attn.in_proj_weight.grad.dtype == torch.float32
    assert relative_error(out.float(), reference) < 0.03


@pytest.fixture(scope="module")
def model(tiny_model_cfg):
    torch.manual_seed(0)
    return build_model(tiny_model_cfg, num_classes=len(ISTHING)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator())


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


def predict_both(model, images, task):
    """(fp32, bf16) pairs of (raw outputs, post-processed results) of one task."""
    config = PostprocessConfig(object_mask_threshold=0.0)  # random weights: keep segments
    pairs = []
    for name in ("fp32", "bf16"):
        pred = model.predict(images, [task], precision=name)
        outputs = pred.outputs[task]
        results = postprocess(
            outputs, task, pred.padded_size, pred.image_sizes, isthing=ISTHING, config=config
        )
        pairs.append((outputs, results))
    return pairs


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_bf16_agrees_with_fp32(model, images, task):
    (ref, ref_results), (low, low_results) = predict_both(model, images, task)
    for key in ("pred_logits", "pred_masks"):
        assert low[key].dtype == torch.float32  # post-processing gets float32
        assert relative_error(low[key], ref[key]) < 0.03, key
        assert not torch.equal(low[key], ref[key])  # the forward did run in bf16
    for a, b in zip(ref_results, low_results):
        if task == "semantic":
            assert (a.labels == b.labels).mean() >= 0.98
        elif task == "instance":
            # near-equal random-weight scores may swap places: compare them sorted
            assert np.abs(np.sort(a.scores) - np.sort(b.scores)).max() < 0.02
            assert a.queries[0] == b.queries[0]  # the best
        else:
            assert len(a.segments) == len(b.segments) > 0
            assert (a.segment_ids == b.segment_ids).mean() >= 0.95


def test_fp32_inside_an_outer_autocast_is_fp32(model, images):
    plain = model.predict(images, ["semantic"]).outputs["semantic"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inner = model.predict(images, ["semantic"], precision="fp32").outputs["semantic"]
    assert torch.equal(plain["pred_logits"], inner["pred_logits"])


def test_task_token_stays_float32_under_autocast(model):
    exact = model.task_token("panoptic", 1)
    with precision.autocast("bf16", "cpu"):
        low = model.task_token("panoptic", 1)
    # bf16 would round the token ids (up to 49407) by up to 128 before the MLP
    assert low.dtype == torch.float32 and torch.equal(low, exact)


def test_predictor_runs_in_the_precision_picked(monkeypatch, tiny_checkpoint, synth_data):
    from oneseg.predictor import Predictor

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    image = sorted(synth_data["val"]["images"].iterdir())[0]
    results = {}
    for asked in ("fp32", "auto"):
        predictor = Predictor.from_checkpoint(
            tiny_checkpoint, device="cpu", min_size=64, precision=asked
        )
        results[predictor.precision] = predictor(image, "semantic").labels
    assert set(results) == {"fp32", "bf16"}
    assert (results["fp32"] == results["bf16"]).mean() >= 0.98


def test_cli_precision_in_status_and_refused_for_exported(
    monkeypatch, tmp_path, tiny_checkpoint, synth_data, capsys
):
    import json

    from oneseg import cli

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    images = synth_data["val"]["images"]
    common = ["inference.overlay=false", "dataset.augmentation.eval_min_size=64"]
    code = cli.main(
        ["inference", f"results_dir={tmp_path / 'r'}", f"inference.checkpoint={tiny_checkpoint}"]
        + [f"inference.images={sorted(images.iterdir())[0]}", "inference.precision=auto", *common]
    )
    assert code == 0
    status = tmp_path / "r" / "inference" / "status.json"
    last = json.loads(status.read_text().splitlines()[-1])
    assert last["kpi"]["precision"] == "bf16"
    (tmp_path / "m.onnx").write_bytes(b"")  # refused before it is read
    code = cli.main(
        ["inference", f"results_dir={tmp_path / 'r2'}", f"inference.onnx_file={tmp_path}/m.onnx"]
        + [f"inference.images={images}", "inference.precision=bf16", *common]
    )
    assert code == 2
    assert "inference.precision: bf16 applies to checkpoints" in capsys.readouterr().err


def test_evaluate_action_in_bf16(tmp_path, evaluate_command, tiny_checkpoint):
    import json

    from oneseg import cli

    kpis = {}
    for asked in ("fp32", "bf16"):
        code = cli.main(
            evaluate_command(
                tmp_path / asked,
                tiny_checkpoint,
                "evaluate.tasks=[semantic]",
                "evaluate.iou_per_class=false",
                f"evaluate.precision={asked}",
            )
        )
        assert code == 0
        status = (tmp_path / asked / "evaluate" / "status.json").read_text()
        kpis[asked] = json.loads(status.splitlines()[-1])["kpi"]
    assert kpis["bf16"]["precision"] == "bf16" and kpis["fp32"]["precision"] == "fp32"
    # random weights: pixels of near-tied classes may flip; >= 98% of pixels agree (above)
    assert abs(kpis["bf16"]["pixel_acc"] - kpis["fp32"]["pixel_acc"]) <= 2.0


def test_train_bf16_mixed_on_cpu(tmp_path, monkeypatch, synth_data, tiny_model_cfg):
    import dataclasses
    import json

    from oneseg.config import LossConfig
    from oneseg.engine import module
    from oneseg.engine.train import run_train
    from oneseg.experiment import ActionRun
    from oneseg.model.oneformer import OneFormer
    from oneseg.spec import spec_from_dict

    seen = []
    forward = OneFormer.forward

    def recording_forward(self, *args, **kwargs):
        if self.training:
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else 0)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(OneFormer, "forward", recording_forward)
    fused = []
    build = module.build_optimizer

    def recording_build(*args, **kwargs):
        fused.append(kwargs.get("fused", False))
        return build(*args, **kwargs)

    monkeypatch.setattr(module, "build_optimizer", recording_build)
    model = dataclasses.replace(tiny_model_cfg, loss=LossConfig(train_num_points=256))
    train_split = synth_data["train"]
    spec = spec_from_dict(
        {
            "results_dir": str(tmp_path),
            "model": dataclasses.asdict(model),
            "dataset": {
                "train": [
                    {
                        "images": str(train_split["images"]),
                        "annotations": str(train_split["panoptic_json"]),
                        "panoptic": str(train_split["panoptic"]),
                    }
                ],
                "label_map": str(synth_data["label_map"]),
                "batch_size": 2,
                "workers": 0,
                "augmentation": {"train_min_size": [64], "crop_size": [64, 64]},
            },
            "train": {"num_epochs": 2, "log_every_n_steps": 1, "precision": "bf16-mixed"},
        }
    )
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    lines = (tmp_path / "train" / "status.json").read_text().splitlines()
    losses = [d["loss"] for d in map(json.loads, lines) if "loss" in d]
    assert seen and set(seen) == {torch.bfloat16}  # every training forward under bf16 autocast
    assert fused == [True]  # AdamW fused in bf16-mixed
    assert len(losses) == 2 and all(0 < loss < 1e4 for loss in losses)

    # resumed in 32: the saved optimizer state's `fused` flag does not come along
    groups_fused = []
    step = module.SegmentationModule.training_step

    def recording_step(self, *args, **kwargs):
        groups_fused.extend(g["fused"] for g in self.trainer.optimizers[0].param_groups)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(module.SegmentationModule, "training_step", recording_step)
    spec.train.precision = "32"
    spec.train.num_epochs = 3
    with ActionRun(spec, "train") as run:
        run_train(spec, run)
    assert fused == [True, False]
    assert groups_fused and not any(groups_fused)


def test_serve_precision_in_model_info(tmp_path, tiny_checkpoint):
    from oneseg.serve.action import build_app
    from oneseg.spec import SpecError, spec_from_dict

    spec = spec_from_dict({"serve": {"model": str(tiny_checkpoint), "precision": "bf16"}})
    _, info = build_app(spec)
    assert info["precision"] == "bf16" and info["kind"] == "pytorch"
    exported = tmp_path / "m.onnx"
    exported.write_bytes(b"")  # refused before it is read
    spec = spec_from_dict({"serve": {"model": str(exported), "precision": "fp16"}})
    with pytest.raises(SpecError, match="serve.precision: fp16 applies to checkpoints"):
        build_app(spec)
