"""TAO's shipped spec files (tests/tao/shipped_specs/, copied unedited) read with TAO's meaning
and run.

Each spec gets only its data and model-file paths pointed at a generated dataset, in its own
TAO keys (`shipped_data.data_overrides`). The resolved values are checked against what TAO's
code does with each key (pixel-mean scale, sizes, schedule, thresholds, dropout). Three specs,
one per data layout (ADE JSON lines, COCO instance, COCO panoptic with an images.tar.gz) and
both models, then run data check, a 1-step train, evaluate, inference and, where the spec has
an export section, export; they add the size reductions of `shipped_data.SIZE_OVERRIDES`
(a tiny network, 64-pixel images, one step). The other three run data check.
"""

from __future__ import annotations

import json
import tarfile
import warnings

import pytest
import yaml
from shipped_data import SIZE_OVERRIDES, SPECS, TRAINING_SPECS, data_overrides, write_tao_data

from oneseg.cli import main
from oneseg.spec import dump_spec, load_spec

MEAN_255 = [123.675, 116.28, 103.53]
STD_255 = [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tao_data(tmp_path_factory.mktemp("tao_data"))


def _load(name, data, results, extra=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_spec(SPECS / f"{name}.yaml", data_overrides(name, data, results) + list(extra))


def _resolved(spec) -> dict:
    """The spec as experiment.yaml holds it."""
    return yaml.safe_load(dump_spec(spec))


def test_mask2former_keys_mean_what_tao_means(data, tmp_path):
    spec = _resolved(_load("m2f_tutorial_spec", data, tmp_path))
    model, aug, optim = spec["model"], spec["dataset"]["augmentation"], spec["train"]["optim"]
    assert model["arch"] == "mask2former" and model["mode"] == "semantic"
    # TAO divides by 255 first: its 0-1 mean and std are oneseg's 0-255 ones
    assert model["pixel_mean"] == pytest.approx(MEAN_255)
    assert model["pixel_std"] == pytest.approx(STD_255)
    # one train_min_size expands to TAO's multi-scale range
    assert aug["train_min_size"] == list(range(320, 1344, 64))
    assert (aug["crop_size"], aug["eval_min_size"], aug["eval_max_size"]) == ([640, 640], 640, 2048)
    assert optim["lr_scheduler"] == "multistep" and optim["lr"] == 1e-4
    assert optim["milestones"] == pytest.approx([44 / 50, 48 / 50])
    assert optim["warmup_steps"] == 0 and spec["train"]["clip_grad_norm"] == 0.1  # TAO's
    assert (model["object_mask_threshold"], model["overlap_threshold"]) == (0.0, 0.8)
    assert model["test_topk_per_image"] == 100  # TAO's default, not oneseg's 150
    assert model["pixel_decoder"]["dropout"] == 0.0  # mask_former.dropout: the pixel decoder's
    # contiguous_id false: one class per label-map category (the same category ids out)
    assert spec["dataset"]["contiguous_id"] is True and model["num_classes"] == 0
    assert spec["export"]["task"] == "semantic"  # TAO exports model.mode
    assert spec["inference"]["images"] == str(data["val"]["images"])  # dataset.test.img_dir
    text = dump_spec(_load("m2f_tutorial_spec", data, tmp_path))
    assert text.startswith("# read as a TAO Mask2Former spec; TAO's defaults for the keys")


def test_mask2former_ade_and_schedules(data, tmp_path):
    ade = _resolved(_load("m2f_backend_spec_ade", data, tmp_path))
    assert ade["dataset"]["type"] == "ade"
    assert ade["dataset"]["train"][0]["annotations"] == str(data["train"]["ade"])
    assert ade["dataset"]["train"][0]["images"] == str(data["root"])
    assert ade["train"]["optim"]["lr_scheduler"] == "poly"
    assert ade["model"]["backbone"] == "swin_large" and ade["model"]["num_queries"] == 200
    coco = _resolved(_load("m2f_backend_spec_coco", data, tmp_path))
    # TAO's default milestones [88, 96] under a 130-epoch multistep run
    assert coco["train"]["optim"]["milestones"] == pytest.approx([88 / 130, 96 / 130])
    short = _resolved(_load("m2f_backend_spec_coco", data, tmp_path, ["train.num_epochs=10"]))
    assert short["train"]["optim"]["milestones"] == []  # past the run: never reached, as in TAO
    inst = _resolved(_load("m2f_tutorial_spec_inst", data, tmp_path))
    assert inst["dataset"]["type"] == "coco" and inst["model"]["mode"] == "instance"
    assert inst["dataset"]["val"]["annotations"] == str(data["val"]["instances_json"])
    assert inst["model"]["num_classes"] == data["classes"]


def test_oneformer_keys_mean_what_tao_means(data, tmp_path):
    spec = _resolved(_load("oneformer_spec_coco", data, tmp_path))
    model, aug, optim = spec["model"], spec["dataset"]["augmentation"], spec["train"]["optim"]
    assert model["arch"] == "oneformer" and model["pixel_mean"] == MEAN_255  # 0-255 in OneFormer
    # image_size is TAO's evaluation stretch, not the training crop; min/max_scale scale it
    assert aug["eval_resize"] == [1024, 1024] and aug["crop_size"] == [1024, 1024]
    assert aug["short_edge_scale"] == [0.1, 2.0] and not aug["lsj"]
    assert (aug["eval_min_size"], aug["eval_max_size"]) == (800, 1333)  # TAO's defaults
    assert spec["inference"]["resize"] == [1024, 1024]
    assert (optim["lr"], optim["lr_scheduler"], optim["warmup_steps"]) == (1e-5, "poly", 1000)
    assert optim["warmup_factor"] == 0.001 and optim["schedule_steps"] == 15000 * 50 + 1
    assert spec["train"]["clip_grad_norm"] == 1.0  # clip_gradients.clip_value, TAO's default
    assert model["pixel_decoder"]["dropout"] == 0.1 and model["query_dropout"] == 0.1
    assert (model["object_mask_threshold"], model["overlap_threshold"]) == (0.8, 0.5)
    assert model["test_topk_per_image"] == 100 and spec["evaluate"]["tasks"] == ["semantic"]


def test_deploy_specs_load(data, tmp_path):
    for name in ("m2f_deploy_infer", "oneformer_deploy_infer"):
        fill = [f"{a}.trt_engine=model.engine" for a in ("evaluate", "inference")]
        if name.startswith("oneformer"):
            fill += [f"dataset.{s}.{k}=x" for s in ("val", "test") for k in ("images",)]
            fill += ["dataset.val.annotations=x.json", "dataset.val.panoptic=x", "results_dir=r"]
            fill += ["dataset.label_map=labels.json"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = load_spec(SPECS / f"{name}.yaml", fill)
        assert spec.evaluate.trt_engine == "model.engine"
    m2f = load_spec(SPECS / "m2f_deploy_infer.yaml", ["inference.trt_engine=e"])
    assert (m2f.dataset.type, m2f.model.arch) == ("ade", "mask2former")
    assert m2f.model.pixel_mean == pytest.approx(MEAN_255)
    for name in ("m2f_deploy_gen_trt_engine", "oneformer_deploy_gen_trt_engine"):
        fill = ["results_dir=r", "gen_trt_engine.onnx_file=m.onnx", "gen_trt_engine.trt_engine=e"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = load_spec(SPECS / f"{name}.yaml", fill)
        assert spec.gen_trt_engine.tensorrt.data_type == "fp16"


def test_explain_names_each_key(data, tmp_path, capsys):
    spec = SPECS / "m2f_tutorial_spec.yaml"
    assert main(["tao", "explain", "-e", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("read as a TAO Mask2Former spec")
    assert "dataset.pixel_mean, dataset.pixel_std" in out and "123.675" in out
    assert "model.sem_seg_head.norm" in out and "fixed: oneseg builds 'GN'" in out
    assert "dataset.train.name" in out and "ignored:" in out
    assert "not done: TAO's loader uses SSD colour augmentation" in out
    assert main(["train", "--explain", "-e", str(spec)]) == 0
    assert "train.optim.milestones" in capsys.readouterr().out


@pytest.mark.parametrize("name", TRAINING_SPECS)
def test_data_check(name, data, tmp_path, capsys):
    args = data_overrides(name, data, tmp_path / "results")
    assert main(["data", "check", "-e", str(SPECS / f"{name}.yaml"), *args]) == 0
    assert "0 errors" in capsys.readouterr().out


RUNS = {
    "m2f_backend_spec_ade": ("train", "evaluate", "inference", "export"),
    "m2f_tutorial_spec_inst": ("train", "evaluate", "inference", "export"),
    "oneformer_spec_coco": ("train", "evaluate", "inference"),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_shipped_spec_runs(name, data, tmp_path, capsys):
    results = tmp_path / "results"
    args = data_overrides(name, data, results, str(results / "train" / "model_latest.ckpt"))
    if name.startswith("oneformer"):  # TAO's images.tar.gz layout, for train and inference
        archive = tmp_path / "images.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(data["val"]["images"], arcname="images")
        args += [f"dataset.val.images={archive}", f"inference.images_dir={archive}"]
        assert main(["data", "check", "-e", str(SPECS / f"{name}.yaml"), *args]) == 0
        assert "0 errors" in capsys.readouterr().out
    for action in RUNS[name]:
        assert main([action, "-e", str(SPECS / f"{name}.yaml"), *args, *SIZE_OVERRIDES]) == 0
        status = (results / action / "status.json").read_text().splitlines()
        assert json.loads(status[-1])["status"] == "SUCCESS", action
    trained = (results / "train" / "experiment.yaml").read_text()
    assert trained.startswith("# read as a TAO ")
    assert "segmented 2, bad images 0" in capsys.readouterr().out


def _tao_like_onnx(path):
    """An ONNX file laid out as TAO's Mask2Former semantic export: input `inputs`, output
    `pred_masks`, and TAO's deformable-attention plugin node."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("inputs", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("pred_masks", TensorProto.FLOAT, [1, 8, 64, 64])
    node = helper.make_node("MultiscaleDeformableAttnPlugin_TRT", ["inputs"], ["pred_masks"])
    graph = helper.make_graph([node], "tao", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


def test_tao_exported_onnx_and_engine_are_refused_naming_what_they_lack(data, tmp_path, capsys):
    onnx_file = tmp_path / "model.onnx"
    _tao_like_onnx(onnx_file)
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not a oneseg engine")
    spec = str(SPECS / "m2f_deploy_infer.yaml")
    paths = [
        f"results_dir={tmp_path / 'results'}",
        f"dataset.label_map={data['label_map']}",
        f"dataset.val.annot_file={data['val']['ade']}",
        f"dataset.val.root_dir={data['root']}",
        f"dataset.test.img_dir={data['val']['images']}",
    ]
    onnx_args = [f"evaluate.onnx_file={onnx_file}", "evaluate.trt_engine="]
    assert main(["evaluate", "-e", spec, *paths, *onnx_args]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a TAO mask2former ONNX export, which oneseg cannot run" in err
    assert "1 MultiscaleDeformableAttnPlugin_TRT node(s)" in err and "(pred_masks)" in err
    assert main(["inference", "-e", spec, *paths, f"inference.trt_engine={engine}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.fp16.engine" in err
