"""The experiment spec: template round trip, JSON Schema, and one clear line per spec error."""

import dataclasses
import json

import pytest
import yaml

from oneseg.config import ACTIONS, ExperimentConfig
from oneseg.spec import (
    SpecError,
    check_inputs,
    dump_spec,
    json_schema,
    load_spec,
    spec_from_dict,
    template,
)


@pytest.mark.parametrize("action", ACTIONS)
def test_template_loads_back_to_the_defaults(tmp_path, action):
    path = tmp_path / f"{action}.yaml"
    path.write_text(template(action))
    assert load_spec(path) == ExperimentConfig()
    # every section the template lists is complete: no default key is missing from it
    written = yaml.safe_load(path.read_text())
    defaults = dataclasses.asdict(ExperimentConfig())
    for section, value in written.items():
        assert value == defaults[section]


def test_template_is_commented():
    text = template("train")
    assert "hidden_dim: 256  # width of the transformer decoder" in text
    assert "# oneseg train spec" in text


def test_published_defaults():
    spec = ExperimentConfig()
    m, loss, opt = spec.model, spec.model.loss, spec.train.optim
    assert (m.hidden_dim, m.num_queries, m.dec_layers, m.query_dec_layers) == (256, 150, 9, 2)
    assert (loss.class_weight, loss.mask_weight, loss.dice_weight) == (2.0, 5.0, 5.0)
    assert (loss.contrastive_weight, loss.contrastive_temperature) == (0.5, 0.07)
    assert loss.train_num_points == 12544
    assert (opt.lr, opt.weight_decay, opt.backbone_multiplier) == (1e-4, 0.05, 0.1)
    assert m.task_seq_len == 77 and m.text_encoder.context_length == 77
    assert (m.text_encoder.width, m.text_encoder.layers, m.text_encoder.n_ctx) == (256, 6, 16)
    assert spec.train.precision == "32"


@pytest.mark.parametrize("action", ACTIONS)
def test_schema_has_defaults_enums_and_bounds(action):
    schema = json_schema(action)
    json.dumps(schema)
    assert schema["properties"]["results_dir"]["default"] == "results"
    if "model" in schema["properties"]:
        model = schema["properties"]["model"]["properties"]
        assert model["arch"]["enum"] == ["oneformer", "mask2former"]
        assert model["hidden_dim"]["minimum"] == 1
        assert schema["properties"]["model"]["additionalProperties"] is False


def test_overrides_are_yaml_values():
    spec = spec_from_dict(
        {},
        [
            "model.hidden_dim=64",
            "evaluate.tasks=[panoptic]",
            "train.optim.lr=3e-4",
            "train.precision=16-mixed",
            "dataset.task_prob={semantic: 1}",
        ],
    )
    assert spec.model.hidden_dim == 64
    assert spec.evaluate.tasks == ["panoptic"]
    assert spec.train.optim.lr == 3e-4
    assert spec.train.precision == "16-mixed"
    assert spec.dataset.task_prob == {"semantic": 1.0}


def test_precision_32_given_as_a_number_is_accepted():
    assert spec_from_dict({"train": {"precision": 32}}).train.precision == "32"


def test_list_of_sources():
    spec = spec_from_dict({"dataset": {"train": [{"images": "a"}, {"images": "b"}]}})
    assert [s.images for s in spec.dataset.train] == ["a", "b"]


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        (
            {},
            ["model.hiden_dim=3"],
            "model.hiden_dim: unknown key; did you mean 'model.hidden_dim'?",
        ),
        ({"modle": {}}, [], "modle: unknown key; did you mean 'model'?"),
        ({}, ["model.hidden_dim=abc"], "model.hidden_dim: got 'abc', expected an integer"),
        ({}, ["model.arch=maskformer"], "model.arch: got 'maskformer', expected one of"),
        ({}, ["model.hidden_dim=0"], "model.hidden_dim: got 0, expected a value >= 1"),
        ({}, ["train.optim.lr=0"], "train.optim.lr: got 0.0, expected a value > 0.0"),
        ({}, ["model.loss.importance_sample_ratio=2"], "expected a value <= 1.0"),
        ({}, ["model.hidden_dim"], "model.hidden_dim: an override must look like a.b.c=value"),
        ({}, ["model..x=1"], "an override must look like"),
        ({}, ["model.hidden_dim.x=1"], "'model.hidden_dim' has no sub-keys"),
        ({}, ["evaluate.tasks=[panoptik]"], "evaluate.tasks[0]: got 'panoptik', expected one of"),
        ({"train": {"gpu_ids": [0, "x"]}}, [], "train.gpu_ids[1]: got 'x', expected an integer"),
        ({"model": 3}, [], "model: got 3, expected a mapping"),
        ({}, ["train.precision=fp64"], "train.precision: got 'fp64', expected one of"),
        ({}, ["model.pre_norm=1"], "model.pre_norm: got 1, expected true or false"),
    ],
)
def test_each_spec_error_is_one_line_naming_the_key(data, overrides, message):
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)
    spec = spec_from_dict({}, [f"evaluate.checkpoint={tmp_path / 'missing.ckpt'}"])
    with pytest.raises(SpecError, match="evaluate.checkpoint: got .*no such file"):
        check_inputs(spec, "evaluate")
    spec = spec_from_dict({"dataset": {"train": [{"images": str(tmp_path / "imgs")}]}})
    with pytest.raises(SpecError, match=r"dataset.train\[0\].images: got .*no such file"):
        check_inputs(spec, "train")


def test_dumped_spec_loads_back(tmp_path):
    spec = spec_from_dict({}, ["model.hidden_dim=48", "dataset.train=[{images: x}, {images: y}]"])
    path = tmp_path / "experiment.yaml"
    path.write_text(dump_spec(spec))
    assert load_spec(path) == spec
