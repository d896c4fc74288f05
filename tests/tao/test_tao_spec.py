"""TAO specs load as written: the override sets of TAO's OneFormer page (with local paths), the
Mask2Former card's model block, and the alias table's meanings."""

import warnings
from pathlib import Path

import pytest
import yaml

from oneseg.config import ExperimentConfig
from oneseg.spec import SpecError, check_inputs, dump_spec, load_spec, spec_from_dict
from oneseg.tao.table import ALIASES, SpecWarning, markdown_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def paths(tmp_path):
    """Local stand-ins for the files and folders the page's commands name."""
    names = {
        "train_images": "coco/train2017",
        "train_panoptic": "coco/panoptic_train2017",
        "val_images": "coco/val2017",
        "val_panoptic": "coco/panoptic_val2017",
        "infer_images": "inference/images",
        "calib_images": "calib/images",
    }
    out = {}
    for key, rel in names.items():
        (tmp_path / rel).mkdir(parents=True)
        out[key] = tmp_path / rel
    for key, rel in {
        "train_json": "coco/panoptic_train2017.json",
        "val_json": "coco/panoptic_val2017.json",
        "label_map": "coco/label_map.json",
        "checkpoint": "train/model_epoch=049.pth",
        "backbone": "pretrained/swin_large_patch4_window12_384_22k.pth",
        "onnx": "export/oneformer.onnx",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
        out[key] = tmp_path / rel
    out["results"] = tmp_path / "results"
    # the page's spec file: OneFormer, Swin-L, COCO panoptic
    spec = {
        "results_dir": str(out["results"]),
        "encryption_key": "nvidia_tao",
        "dataset": {
            "train": {"images": None, "annotations": None, "panoptic": None, "batch_size": 4},
            "val": {"images": None, "annotations": None, "panoptic": None, "batch_size": 4},
            "label_map": None,
            "image_size": 1024,
            "contiguous_id": True,
        },
        "model": {
            "backbone": {
                "name": "D2SwinTransformer",
                "swin": {"embed_dim": 192, "depths": [2, 2, 18, 2], "window_size": 12},
            },
            "one_former": {"num_object_queries": 150, "dec_layers": 10},
            "sem_seg_head": {"num_classes": 133, "norm": "GN"},
            "test": {"object_mask_threshold": 0.8, "test_topk_per_image": 100},
            "export": False,
        },
        "train": {"num_epochs": 50, "precision": "fp32", "optim": {"lr": 1e-5}},
    }
    out["spec"] = tmp_path / "spec.yaml"
    out["spec"].write_text(yaml.safe_dump(spec))
    return out


def _load(paths, overrides):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = load_spec(paths["spec"], overrides)
    return spec, [str(w.message) for w in caught if issubclass(w.category, SpecWarning)]


def test_train_overrides(paths):
    p = paths
    spec, warned = _load(
        p,
        [
            f"results_dir={p['results']}",
            f"dataset.train.images={p['train_images']}",
            f"dataset.train.annotations={p['train_json']}",
            f"dataset.train.panoptic={p['train_panoptic']}",
            f"dataset.val.images={p['val_images']}",
            f"dataset.val.annotations={p['val_json']}",
            f"dataset.val.panoptic={p['val_panoptic']}",
            f"dataset.label_map={p['label_map']}",
            "model.sem_seg_head.num_classes=133",
            "model.backbone.name=D2SwinTransformer",
            "train.optim.lr=0.0001",
            "train.num_epochs=50",
            "train.num_gpus=1",
            "train.gpu_ids=[0]",
            "train.num_nodes=1",
            "train.precision=fp16",
            "train.checkpoint_interval=1",
            "train.validation_interval=1",
            f"train.pretrained_backbone={p['backbone']}",
            "train.pretrained_model=",
            "train.resume_training_checkpoint_path=",
            "encryption_key=nvidia_tao",
        ],
    )
    (source,) = spec.dataset.train
    assert (source.images, source.annotations, source.panoptic) == (
        str(p["train_images"]),
        str(p["train_json"]),
        str(p["train_panoptic"]),
    )
    assert spec.dataset.val.panoptic == str(p["val_panoptic"])
    assert spec.dataset.batch_size == 4 and spec.evaluate.batch_size == 4
    assert spec.dataset.augmentation.crop_size == [1024, 1024]
    assert spec.model.num_classes == 133 and spec.model.num_queries == 150
    assert spec.model.backbone == "swin_large" and spec.model.backbone_window_size == 0
    assert spec.model.dec_layers == 9  # TAO's 10 counts the learned-query prediction
    assert spec.model.object_mask_threshold == 0.8 and spec.model.test_topk_per_image == 100
    assert spec.train.optim.lr == 1e-4 and spec.train.precision == "16-mixed"
    assert spec.train.pretrained_backbone == str(p["backbone"])
    assert warned == ["encryption_key: accepted and ignored (oneseg files are not encrypted)"]


def test_evaluate_overrides(paths):
    p = paths
    spec, _ = _load(
        p,
        [
            f"results_dir={p['results']}",
            f"evaluate.checkpoint={p['checkpoint']}",
            "evaluate.trt_engine=",
            "evaluate.iou_per_class=True",
            "evaluate.num_gpus=1",
            "evaluate.gpu_ids=[0]",
            f"dataset.val.images={p['val_images']}",
            f"dataset.val.annotations={p['val_json']}",
            f"dataset.val.panoptic={p['val_panoptic']}",
            "model.sem_seg_head.num_classes=133",
            "model.test.semantic_on=True",
            "model.test.instance_on=False",
            "model.test.panoptic_on=True",
        ],
    )
    assert spec.evaluate.checkpoint == str(p["checkpoint"]) and spec.evaluate.iou_per_class
    assert spec.evaluate.tasks == ["semantic", "panoptic"]


def test_inference_overrides(paths):
    p = paths
    spec, _ = _load(
        p,
        [
            f"results_dir={p['results']}",
            f"inference.checkpoint={p['checkpoint']}",
            f"inference.images_dir={p['infer_images']}",
            "inference.mode=semantic",
            "inference.image_size=[1024,1024]",
            "inference.trt_engine=",
            "model.sem_seg_head.num_classes=133",
        ],
    )
    assert spec.inference.images == str(p["infer_images"])
    assert spec.inference.tasks == ["semantic"]
    # TAO stretches inference images to image_size, then resizes to its test_min_size: the
    # image size is not the evaluation size, and a TAO spec's test sizes are TAO's (800/1333)
    assert spec.inference.resize == [1024, 1024]
    aug = spec.dataset.augmentation
    assert (aug.eval_min_size, aug.eval_max_size) == (800, 1333)


def test_export_overrides(paths):
    p = paths
    spec, warned = _load(
        p,
        [
            f"results_dir={p['results']}",
            f"export.checkpoint={p['checkpoint']}",
            f"export.onnx_file={p['onnx']}",
            "export.task=semantic",
            "export.input_height=640",
            "export.input_width=640",
            "export.on_cpu=False",
            "export.gpu_id=0",
            "model.export=True",
            "model.sem_seg_head.num_classes=133",
        ],
    )
    assert spec.export.checkpoint == str(p["checkpoint"]) and spec.export.task == "semantic"
    assert (spec.export.input_height, spec.export.input_width) == (640, 640)
    assert any(w.startswith("model.export: accepted and ignored") for w in warned)


def test_quantize_overrides(paths):
    p = paths
    spec, _ = _load(
        p,
        [
            f"results_dir={p['results']}",
            f"quantize.model_path={p['onnx']}",
            "quantize.mode=static_ptq",
            f"dataset.quant_calibration_dataset.images_dir={p['calib_images']}",
        ],
    )
    assert spec.quantize.onnx_file == str(p["onnx"])
    assert spec.dataset.quant_calibration_dataset.images_dir == str(p["calib_images"])
    # TAO's default mode loads for every action; only quantize refuses it
    weight_only = load_spec(p["spec"], ["quantize.mode=weight_only_ptq"])
    weight_only.tao.refuse("train")
    with pytest.raises(ValueError, match="quantize.mode: got .weight_only_ptq.; oneseg quantizes"):
        weight_only.tao.refuse("quantize")


def test_mask2former_card_block(tao_mask2former_card):
    spec = load_spec(tao_mask2former_card)
    model = spec.model
    assert (model.arch, model.mode, model.num_classes, model.num_queries) == (
        "mask2former",
        "instance",
        1,
        100,
    )
    assert model.backbone == "swin_tiny" and model.backbone_window_size == 0  # tiny's own 7


def test_resolved_spec_is_what_experiment_yaml_holds(paths):
    spec, _ = _load(paths, ["model.sem_seg_head.num_classes=19"])
    text = "\n".join(line for line in dump_spec(spec).splitlines() if not line.startswith("#"))
    assert dump_spec(spec).startswith("# read as a TAO OneFormer spec")
    for tao_only in ("sem_seg_head", "one_former", "encryption_key", "image_size:"):
        assert tao_only not in text
    assert spec_from_dict(yaml.safe_load(text)) == spec


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ({"name": "D2SwinTransformer"}, ("swin_large", 0, [])),
        (
            {"name": "D2SwinTransformer", "swin": {"embed_dim": 96, "depths": [2, 2, 6, 2]}},
            ("swin_tiny", 0, []),
        ),
        (
            {"name": "D2SwinTransformer", "swin": {"embed_dim": 128, "window_size": 7}},
            ("swin_base", 7, []),
        ),
        ({"type": "swin", "swin": {"type": "large", "window_size": 12}}, ("swin_large", 0, [])),
        ({"type": "swin", "swin": {"type": "large"}}, ("swin_large", 7, [])),
        ({"name": "D2DiNAT"}, ("dinat_large", 0, [])),
        (
            {"name": "D2DiNAT", "dinat": {"embed_dim": 64, "kernel_size": 11}},
            ("dinat_tiny", 11, []),
        ),
        ({"name": "resnet50"}, ("resnet50", 0, [])),
    ],
)
def test_backbone_names(backbone, expected):
    model = spec_from_dict({"model": {"backbone": backbone}}).model
    assert (model.backbone, model.backbone_window_size, model.backbone_depths) == expected


def test_unknown_backbones_are_refused_with_the_known_names():
    with pytest.raises(
        SpecError,
        match="model.backbone.name: got 'radio', expected one of "
        "D2SwinTransformer, D2DiNAT, swin, dinat, swin_tiny",
    ):
        spec_from_dict({}, ["model.backbone.name=radio"])
    with pytest.raises(
        SpecError, match="model.backbone: got 'swin_huge', expected one of swin_tiny, swin_small"
    ):
        spec_from_dict({"model": {"backbone": "swin_huge"}})


def test_dataset_train_as_one_mapping_or_zipped_lists():
    spec = spec_from_dict({"dataset": {"train": {"images": "a", "annotations": "a.json"}}})
    assert [(s.images, s.annotations) for s in spec.dataset.train] == [("a", "a.json")]
    spec = spec_from_dict(
        {"dataset": {"train": {"images": ["a", "b"], "annotations": ["a.json", "b.json"]}}}
    )
    assert [(s.images, s.annotations) for s in spec.dataset.train] == [
        ("a", "a.json"),
        ("b", "b.json"),
    ]
    with pytest.raises(SpecError, match="dataset.train: lists of different lengths"):
        spec_from_dict({"dataset": {"train": {"images": ["a", "b"], "annotations": ["a.json"]}}})
    # an override into a one-source list keeps that source's other keys
    spec = spec_from_dict(
        {"dataset": {"train": [{"images": "a", "annotations": "a.json"}]}},
        ["dataset.train.images=c"],
    )
    assert [(s.images, s.annotations) for s in spec.dataset.train] == [("c", "a.json")]


def test_meanings_of_single_keys():
    spec = spec_from_dict(
        {
            "train": {
                "num_epochs": 100,
                "optim": {
                    "lr_scheduler": "MultiStep",
                    "steps": [88, 96],
                    "monitor_name": "val_loss",
                    "warmup_iters": 10,
                    "type": "AdamW",
                },
                "freeze": ["backbone"],
                "clip_gradients": {"enabled": False, "clip_value": 0.5},
            },
            "model": {"text_encoder": {"num_layers": 3, "proj_num_layers": 1}},
            "dataset": {
                "min_scale": 0.5,
                "max_scale": 1.5,
                "task_prob_train": {"semantic": 0.2, "instance": 0.3, "panoptic": 0.5},
            },
        }
    )
    optim = spec.train.optim
    assert optim.lr_scheduler == "multistep" and optim.milestones == [0.88, 0.96]
    # TAO warms up under WarmupPoly only
    assert optim.warmup_steps == 0 and optim.type == "adamw" and spec.train.monitor == "loss"
    assert spec.train.freeze_backbone and spec.train.clip_grad_norm == 0.0
    assert (spec.model.text_encoder.layers, spec.model.text_encoder.proj_layers) == (3, 1)
    assert spec.dataset.augmentation.short_edge_scale == [0.5, 1.5]
    assert spec.dataset.augmentation.lsj_scale == [0.1, 2.0]  # large-scale jitter untouched
    assert spec.dataset.task_prob == {"semantic": 0.2, "instance": 0.3, "panoptic": 0.5}


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.sem_seg_head.norm=BN",
            "model.sem_seg_head.norm: got 'BN'; oneseg builds only 'GN'",
        ),
        ("model.backbone.swin.ape=True", "model.backbone.swin.ape: got True; oneseg builds only"),
        ("model.sem_seg_head.num_clases=3", "did you mean 'model.sem_seg_head.num_classes'"),
        ("model.backbone.freeze_at=2", "model.backbone.freeze_at: got 2"),
        ("train.precision=fp64", "train.precision: got 'fp64', expected one of"),
    ],
)
def test_keys_that_cannot_mean_what_tao_means_are_refused(override, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_dict({}, [override])


def test_docs_hold_the_alias_table():
    readme = (ROOT / "docs" / "tao_keys.md").read_text()
    assert markdown_table() in readme
    assert len(ALIASES) > 100


def test_every_rename_lands_on_an_oneseg_key():
    def exists(dotted):
        node = ExperimentConfig()
        for name in dotted.split("."):
            if not hasattr(node, name):
                return False
            node = getattr(node, name)
        return True

    missing = [
        (row.tao, row.target)
        for row in ALIASES.values()
        if row.kind == "rename" and not row.optional and not exists(row.target)
    ]
    assert missing == []


def test_tao_sample_spec_settings():
    """Settings of TAO's own sample specs: iters_per_epoch sizes the schedule as TAO does,
    '???' must be filled in, Mask2Former's source keys map, ADE JSON lines are read."""
    spec = spec_from_dict({"train": {"num_epochs": 50, "iters_per_epoch": 15000}})
    assert spec.train.optim.schedule_steps == 15000 * 50 + 1
    # '???' is refused by the actions that read it, as TAO's OmegaConf refuses it on access
    unfilled = spec_from_dict({"quantize": {"model_path": "???"}})
    check_inputs(unfilled, "train")
    with pytest.raises(SpecError, match=r"quantize.model_path: '\?\?\?' marks a value to fill"):
        check_inputs(unfilled, "quantize")
    with pytest.raises(SpecError, match=r"results_dir: '\?\?\?' marks a value to fill in"):
        check_inputs(spec_from_dict({"results_dir": "???"}), "train")
    assert spec_from_dict({"results_dir": "???"}, ["results_dir=out"]).results_dir == "out"
    m2f_source = {
        "type": "coco_panoptic",
        "name": "coco_2017_train_panoptic",
        "panoptic_json": "pan.json",
        "img_dir": "imgs",
        "panoptic_dir": "pan",
        "batch_size": 1,
    }
    spec = spec_from_dict({"dataset": {"train": m2f_source, "val": dict(m2f_source)}})
    assert spec.dataset.type == "coco_panoptic"
    assert [(s.images, s.annotations, s.panoptic) for s in spec.dataset.train] == [
        ("imgs", "pan.json", "pan")
    ]
    assert (spec.dataset.val.images, spec.dataset.val.annotations) == ("imgs", "pan.json")
    ade = {"type": "ade", "annot_file": "ade_train.jsonl", "root_dir": "/data"}
    spec = spec_from_dict({"dataset": {"train": ade}})
    assert spec.dataset.type == "ade"
    assert [(s.images, s.annotations) for s in spec.dataset.train] == [("/data", "ade_train.jsonl")]


def test_schedule_steps_end_the_poly_schedule_early():
    import torch

    from oneseg.config import OptimConfig
    from oneseg.engine.optim import build_optimizer

    cfg = OptimConfig(lr=1.0, lr_scheduler="poly", poly_power=1.0, schedule_steps=10)
    optimizer, scheduler = build_optimizer(torch.nn.Linear(1, 1), cfg, total_steps=100)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[5] == pytest.approx(0.5) and lrs[10] == lrs[11] == 0.0
