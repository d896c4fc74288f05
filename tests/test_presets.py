"""Recipe presets load back as written, and the multistep schedule steps where it should."""

import pytest
import torch
import yaml

from oneseg.cli import main
from oneseg.config import OptimConfig
from oneseg.engine.optim import build_optimizer
from oneseg.presets import PRESETS, preset_values
from oneseg.spec import SpecError, load_spec, spec_from_dict, template


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_template_loads_back_to_the_preset(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(template("train", preset=name))
    assert load_spec(path) == spec_from_dict(preset_values(name))


def test_presets_hold_the_published_recipes():
    coco = spec_from_dict(preset_values("coco"))
    aug = coco.dataset.augmentation
    assert aug.lsj and aug.lsj_scale == [0.1, 2.0] and aug.crop_size == [1024, 1024]
    assert (aug.eval_min_size, aug.eval_max_size, aug.color_jitter) == (800, 1333, 0.0)
    optim = coco.train.optim
    assert optim.lr_scheduler == "multistep" and optim.gamma == 0.1
    assert optim.milestones == pytest.approx([0.8889, 0.9630], abs=1e-4)
    assert coco.train.precision == "16-mixed" and coco.model.num_queries == 150

    ade = spec_from_dict(preset_values("ade20k"))
    aug = ade.dataset.augmentation
    assert aug.train_min_size[0] == 256 and aug.train_min_size[-1] == 1024
    assert len(aug.train_min_size) == 16 and aug.crop_size == [512, 512] and not aug.lsj
    assert (aug.eval_min_size, aug.eval_max_size) == (512, 2048) and aug.color_jitter > 0
    assert ade.train.optim.lr_scheduler == "poly" and ade.model.object_mask_threshold == 0.5

    city = spec_from_dict(preset_values("cityscapes"))
    aug = city.dataset.augmentation
    assert (aug.train_min_size[0], aug.train_min_size[-1]) == (512, 2048)
    assert aug.crop_size == [512, 1024] and (aug.eval_min_size, aug.eval_max_size) == (1024, 2048)


def test_cli_template_preset(capsys):
    assert main(["template", "train", "--preset", "cityscapes"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# oneseg train spec, preset cityscapes")
    assert yaml.safe_load(text)["dataset"]["augmentation"]["crop_size"] == [512, 1024]
    with pytest.raises(SpecError, match="unknown preset 'kitti'"):
        template("train", preset="kitti")


def _lrs(optim_cfg, total_steps):
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, optim_cfg, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_fused_adamw_makes_the_same_steps():
    """bf16-mixed trains with fused AdamW, 32 with the per-tensor loop: the same update."""
    cfg = OptimConfig(lr=1e-2, warmup_steps=2)
    params = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
        optimizer, scheduler = build_optimizer(model, cfg, 5, fused=fused)
        assert optimizer.param_groups[0]["fused"] is fused
        for _ in range(5):
            model(torch.randn(3, 4)).square().sum().backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-6)


def test_multistep_lr_at_given_steps():
    cfg = OptimConfig(lr=1.0, lr_scheduler="multistep", milestones=[0.89, 0.96], gamma=0.1)
    lrs = _lrs(cfg, 100)
    assert lrs[0] == lrs[88] == pytest.approx(1.0)
    assert lrs[89] == lrs[95] == pytest.approx(0.1)
    assert lrs[96] == lrs[99] == pytest.approx(0.01)


def test_multistep_with_warmup():
    cfg = OptimConfig(
        lr=2.0,
        lr_scheduler="multistep",
        milestones=[0.5],
        gamma=0.5,
        warmup_steps=10,
        warmup_factor=0.001,
    )
    lrs = _lrs(cfg, 40)
    assert lrs[0] == pytest.approx(2.0 * 0.001)
    assert lrs[5] == pytest.approx(2.0 * (0.001 * 0.5 + 0.5))
    assert lrs[10] == lrs[19] == pytest.approx(2.0)
    assert lrs[20] == lrs[39] == pytest.approx(1.0)


def test_milestones_out_of_order_or_range_are_refused():
    with pytest.raises(SpecError, match=r"train.optim.milestones\[1\]: got 1.5"):
        spec_from_dict({"train": {"optim": {"milestones": [0.5, 1.5]}}})
    with pytest.raises(ValueError, match="train.optim.milestones: got \\[0.9, 0.5\\]"):
        build_optimizer(torch.nn.Linear(1, 1), OptimConfig(milestones=[0.9, 0.5]), 10)
