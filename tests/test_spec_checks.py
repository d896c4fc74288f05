"""Checks between fields of a spec, and limits on reading one (oneseg.spec_checks): each is a
spec error naming the key, before any work starts (exit 2)."""

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from oneseg import cli
from oneseg.config import ModelConfig
from oneseg.cpu_threads import available_cores
from oneseg.errors import EXIT_BAD_INPUT
from oneseg.model.postprocess import PostprocessConfig
from oneseg.spec import SpecError, keys_set, load_spec, spec_from_dict
from oneseg.spec_checks import EXPORT_MAX_OPSET, MAX_SPEC_BYTES


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.object_mask_threshold=.nan", ["model.object_mask_threshold", "finite"]),
        ("model.object_mask_threshold=nan", ["model.object_mask_threshold", "finite"]),
        ("train.optim.lr=.inf", ["train.optim.lr", "finite"]),
        ("train.optim.lr=nan", ["train.optim.lr", "finite"]),
        ("dataset.augmentation.train_min_size=[0]", ["train_min_size", "1 or more"]),
        ("dataset.augmentation.train_min_size=[]", ["train_min_size"]),
        ("dataset.augmentation.crop_size=[512]", ["crop_size", "[height, width]"]),
        ("dataset.task_prob={semantic: 0, instance: 0}", ["dataset.task_prob", "above 0"]),
        ("dataset.task_prob={depth: 1}", ["dataset.task_prob.depth", "expected a task"]),
        ("model.nheads=7", ["model.hidden_dim", "model.nheads (7)"]),
        ("model.pixel_decoder.norm_groups=7", ["model.pixel_decoder.norm_groups", "conv_dim"]),
        ("model.pixel_decoder.enc_heads=6", ["model.pixel_decoder.conv_dim", "enc_heads"]),
        ("model.pixel_std=[1.0, 0.0, 1.0]", ["model.pixel_std", "above 0"]),
        ("model.pixel_mean=[1.0, 2.0]", ["model.pixel_mean", "three values"]),
        (
            "model.num_queries=10",
            ["model.text_encoder.n_ctx", "expected a value below model.num_queries (10)"],
        ),
        (f"export.opset_version={EXPORT_MAX_OPSET + 79}", ["export.opset_version", "at most"]),
        ("model.hidden_dim=1000000", ["model.hidden_dim", "at most"]),
        ("model.num_queries=100000000", ["model.num_queries", "at most"]),
    ],
)
def test_cross_field_and_non_finite_values_are_spec_errors(override, words):
    with pytest.raises(SpecError) as caught:
        load_spec(None, [override])
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_a_spec_error_exits_2_before_any_work(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"), "model": {"nheads": 7}}))
    assert cli.main(["train", "-e", str(spec)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    expected = "model.hidden_dim: got 256, expected an even multiple of model.nheads (7)"
    assert err.strip() == f"oneseg: spec error: {expected}"
    assert not (tmp_path / "r").exists()


def test_mask2former_needs_no_text_context():
    spec = load_spec(None, ["model.arch=mask2former", "model.num_queries=10"])
    assert spec.model.num_queries == 10


def test_cpu_threads_above_the_cores_is_refused():
    with pytest.raises(SpecError, match=r"cpu_threads: got \d+, expected at most \d+ \(the cores"):
        load_spec(None, [f"cpu_threads={available_cores() + 1}"])
    assert load_spec(None, [f"cpu_threads={available_cores()}"]).cpu_threads == available_cores()


def test_home_folder_is_expanded_not_a_folder_named_tilde():
    spec = load_spec(None, ["results_dir=~/x", "dataset.val.images=~/data/images"])
    assert spec.results_dir == os.path.expanduser("~/x") and not spec.results_dir.startswith("~")
    assert spec.dataset.val.images == str(Path.home() / "data" / "images")


def test_export_opset_limit_is_torchs():
    from torch.onnx import _constants

    assert EXPORT_MAX_OPSET == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


# ------------------------------------------------------------------ inputs that eat the machine
def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        previous = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1000  # 9^10 values once expanded
    with pytest.raises(SpecError, match="expands to more than"):
        load_spec(bomb)


def test_alias_bomb_in_an_override_is_refused():
    value, previous = "[&a [1,1,1,1,1,1,1,1,1,1]", "a"
    for name in "bcde":  # 10^6 values once expanded
        value += f", &{name} [" + ",".join([f"*{previous}"] * 10) + "]"
        previous = name
    value += "]"
    with pytest.raises(SpecError, match="expands to more than"):
        load_spec(None, [f"automl.parameters={value}"])


def test_a_huge_spec_file_is_refused_before_reading(tmp_path):
    spec = tmp_path / "huge.yaml"
    with open(spec, "w") as out:
        out.write("results_dir: x\n")
        out.truncate(MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match=r"huge.yaml: 1.0 MiB, a spec is at most 1 MiB"):
        load_spec(spec)


def test_a_spec_that_is_not_text_names_the_file_only(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$salt$\xff\xfehash:19000:0:99999:7:::\n")
    with pytest.raises(SpecError) as caught:
        load_spec(secret)
    assert str(caught.value) == f"{secret}: not a YAML spec (not UTF-8 text)"


@pytest.mark.parametrize(
    "content", ["root:$6$abc:19000:0:99999:7:::\nuser:$6$def:19000:0:99999:7:::\n", "- a\n- b\n"]
)
def test_a_spec_that_is_not_a_mapping_does_not_echo_it(tmp_path, capsys, content):
    secret = tmp_path / "passwd"
    secret.write_text(content)
    assert cli.main(["train", "-e", str(secret)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "$6$" not in err and "- a" not in err and str(secret) in err


# ------------------------------------------------------------------ which keys a spec sets
def test_spec_records_the_keys_it_sets():
    spec = spec_from_dict({"model": {"object_mask_threshold": 0.8}}, ["model.nheads=8"])
    assert keys_set(spec.model) == {"object_mask_threshold", "nheads"}
    assert keys_set(ModelConfig()) is None


def test_a_threshold_set_to_the_default_still_overrides_the_checkpoint():
    checkpoint_cfg = dataclasses.replace(ModelConfig(), object_mask_threshold=0.3)
    spec = spec_from_dict({"model": {"object_mask_threshold": 0.8}})  # the default value
    assert PostprocessConfig.of_model(checkpoint_cfg, spec.model).object_mask_threshold == 0.8
    # a spec that does not set it leaves the checkpoint's
    assert PostprocessConfig.of_model(checkpoint_cfg, load_spec(None).model).object_mask_threshold
    assert (
        PostprocessConfig.of_model(checkpoint_cfg, load_spec(None).model).object_mask_threshold
        == 0.3
    )
