"""Single TAO keys whose meaning depends on the model the spec is for, the refusals that name
TAO's meaning, and the data-side pieces they rest on (scaling, evaluation stretch, ADE lines)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image

from oneseg.data.ade_jsonl import AdeJsonlReader
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError
from oneseg.data.transforms import EvalTransform, TrainTransform, eval_size
from oneseg.spec import SpecError, spec_from_dict, template

M2F = {"model": {"mask_former": {"num_object_queries": 10}}}
ONEFORMER = {"model": {"one_former": {"num_object_queries": 10}}}


def _spec(base, overrides=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ignored TAO keys warn; not what is tested here
        return spec_from_dict(json.loads(json.dumps(base)), list(overrides))


def test_pixel_mean_scale_follows_the_model():
    mean = ["dataset.pixel_mean=[0.5,0.5,0.5]", "dataset.pixel_std=[0.25,0.25,0.25]"]
    m2f = _spec(M2F, mean)
    assert m2f.model.pixel_mean == [127.5] * 3 and m2f.model.pixel_std == [63.75] * 3
    one = _spec(ONEFORMER, ["dataset.pixel_mean=[120,110,100]"])
    assert one.model.pixel_mean == [120, 110, 100]
    with pytest.raises(SpecError, match="dataset.pixel_mean: .*0-1 scale"):
        _spec(M2F, ["dataset.pixel_mean=[123.675,116.28,103.53]"])


def test_a_spec_of_both_models_is_refused():
    with pytest.raises(SpecError, match="keys of TAO's OneFormer and of TAO's Mask2Former"):
        _spec({**M2F, "dataset": {"image_size": 512}})


def test_oneseg_specs_keep_oneseg_defaults():
    spec = _spec({"model": {"hidden_dim": 64}})
    assert spec.tao is None and spec.train.optim.lr == 1e-4
    assert spec.dataset.augmentation.short_edge_scale == []
    # keys TAO spells as oneseg does (precision, contiguous_id, train_min_size, ...) are no TAO
    full = spec_from_dict(yaml.safe_load(template("train")))
    assert full.tao is None and full.dataset.augmentation.train_min_size == [512]


def test_annotation_file_of_the_type():
    both = {"panoptic_json": "p.json", "instance_json": "i.json", "img_dir": "im"}
    spec = _spec({"dataset": {"val": {"type": "coco_panoptic", **both}}})
    assert spec.dataset.val.annotations == "p.json"  # TAO reads the panoptic one
    spec = _spec({"dataset": {"val": {"type": "coco", **both}}})
    assert spec.dataset.val.annotations == "i.json"
    untyped = _spec({"dataset": {"val": {"instance_json": "i.json", "img_dir": "im"}}})
    assert untyped.dataset.type == "coco"
    one = _spec({"dataset": {"val": {"img_dir": ["v"], "instance_json": ["v.json"]}}})
    assert (one.dataset.val.images, one.dataset.val.annotations) == ("v", "v.json")
    with pytest.raises(SpecError, match="dataset.val.images: got 2 sources; oneseg evaluates one"):
        _spec({"dataset": {"val": {"img_dir": ["a", "b"]}}})
    with pytest.raises(SpecError, match="dataset.val.annot_file: TAO's coco loader reads"):
        _spec({"dataset": {"val": {"type": "coco", "annot_file": "a.jsonl"}}})


def test_target_size_stretches_evaluation_and_is_refused_for_training():
    spec = _spec({"dataset": {"val": {"img_dir": "v", "target_size": [320, 480]}}})
    assert spec.dataset.augmentation.eval_resize == [320, 480]
    with pytest.raises(SpecError, match="dataset.train.target_size: .*stretches training"):
        _spec({"dataset": {"train": {"img_dir": "t", "target_size": [320, 480]}}})


def test_clipping_of_oneformer():
    assert _spec(ONEFORMER, ["train.clip_gradients.clip_value=0.5"]).train.clip_grad_norm == 0.5
    # TAO's own default spec holds both (0.1 and 1.0); TAO's OneFormer reads clip_value only
    both = {**ONEFORMER, "train": {"clip_grad_norm": 0.1, "clip_gradients": {"clip_value": 1.0}}}
    assert _spec(both).train.clip_grad_norm == 1.0
    assert _spec(both, ["train.clip_grad_norm=0.2"]).train.clip_grad_norm == 0.2  # typed: wins
    with pytest.raises(SpecError, match="clip_type: got 'value'"):
        _spec(ONEFORMER, ["train.clip_gradients.clip_type=value"])
    spec = _spec(ONEFORMER, ["train.cudnn.deterministic=true"])
    assert spec.train.cudnn_deterministic and not spec.train.cudnn_benchmark


def test_milestones_only_under_multistep():
    poly = _spec(M2F, ["train.optim.lr_scheduler=WarmupPoly", "train.num_epochs=10"])
    assert poly.train.optim.lr_scheduler == "poly"  # the default [88, 96] is not read
    multi = _spec(M2F, ["train.num_epochs=100", "train.optim.milestones=[50,90,120]"])
    assert multi.train.optim.milestones == [0.5, 0.9]


def test_inference_batch_and_quantize_mode():
    assert _spec({}, ["inference.batch_size=-1"]).inference.batch_size == 1
    spec = _spec({"quantize": {"mode": "weight_only_ptq"}})
    with pytest.raises(ValueError, match="quantize.mode: got 'weight_only_ptq'"):
        spec.tao.refuse("quantize")


def test_short_edge_scale_resizes_from_the_crop():
    transform = TrainTransform([64], 999, (32, 32), short_edge_scale=(0.5, 0.5), hflip=0.0)
    image = np.zeros((100, 200, 3), np.uint8)
    out = transform(image, np.zeros((100, 200), np.int32), np.random.default_rng(0))
    # shortest edge 32 x 0.5 = 16, longest capped at twice it: 100x200 -> 16x32, no crop
    assert out.image_size == (16, 32)


def test_eval_resize_stretches_before_the_shortest_edge():
    assert eval_size(100, 300, 64, 1000) == (64, 192)
    assert eval_size(100, 300, 64, 1000, (50, 50)) == (64, 64)  # aspect of the stretch
    out = EvalTransform(64, 1000, (50, 50))(
        np.zeros((100, 300, 3), np.uint8), np.zeros((100, 300), np.int32)
    )
    assert out.image.shape[:2] == (64, 64)


def test_ade_lines_read_category_ids(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.jpg")
    label = np.array([[0, 1], [2, 2]], np.uint8).repeat(2, 0).repeat(2, 1)
    Image.fromarray(label).save(tmp_path / "a.png")
    lines = tmp_path / "train.jsonl"
    lines.write_text(json.dumps({"img": "a.jpg", "segm": "a.png", "width": 4}) + "\n")
    label_map = LabelMap.from_categories([{"id": 1, "name": "wall"}, {"id": 2, "name": "sky"}])
    reader = AdeJsonlReader(lines, tmp_path, label_map)
    ann = reader.load_annotation(reader.records[0])
    assert sorted(s.class_index for s in ann.segments) == [0, 1]
    assert (ann.segment_map[:2, :2] == 0).all()  # 0: unlabelled, ignored
    lines.write_text('{"img": "a.jpg"}\n')
    with pytest.raises(DataError, match="line 1 needs 'img' and 'segm'"):
        AdeJsonlReader(lines, tmp_path, label_map)
