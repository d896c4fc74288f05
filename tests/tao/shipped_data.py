"""A small dataset in every layout TAO's shipped specs read, and the overrides that point a
shipped spec at it.

`write_tao_data` writes the synthetic shapes dataset (COCO panoptic and instance JSON) and, from
its panoptic PNGs, TAO's ADE layout (JSON lines of image and label-PNG paths). `data_overrides`
gives, in each spec's own TAO words, only its data and model-file paths (and the class count of
this data); `SIZE_OVERRIDES` are the stated size reductions of the run tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.data.synth import write_synthetic_dataset

SPECS = Path(__file__).parent / "shipped_specs"
TRAINING_SPECS = (
    "m2f_backend_spec_ade",
    "m2f_backend_spec_coco",
    "m2f_tutorial_spec",
    "m2f_tutorial_spec_inst",
    "oneformer_spec_coco",
    "oneformer_spec_ade",
    "m2f_tao_defaults",
    "oneformer_tao_defaults",
)
ADE_SPECS = ("m2f_backend_spec_ade", "m2f_tao_defaults")  # type ade: TAO's JSON lines
# Sizes only: a tiny network and 64-pixel images, so one step runs in seconds on a CPU. They
# are oneseg keys, applied after the spec's TAO keys, and leave every other value as resolved.
SIZE_OVERRIDES = [
    "model.backbone_embed_dim=16",
    "model.backbone_depths=[1,1,1,1]",
    "model.backbone_num_heads=[1,1,1,1]",
    "model.hidden_dim=32",
    "model.num_queries=8",
    "model.nheads=2",
    "model.dim_feedforward=64",
    "model.dec_layers=2",
    "model.query_dec_layers=1",
    "model.pixel_decoder.conv_dim=32",
    "model.pixel_decoder.mask_dim=32",
    "model.pixel_decoder.enc_layers=1",
    "model.pixel_decoder.enc_heads=2",
    "model.pixel_decoder.enc_ffn_dim=64",
    "model.pixel_decoder.norm_groups=8",
    "model.text_encoder.width=32",
    "model.text_encoder.layers=1",
    "model.text_encoder.n_ctx=2",
    "model.loss.train_num_points=64",
    "dataset.augmentation.crop_size=[64,64]",
    "dataset.augmentation.train_min_size=[64]",
    "dataset.augmentation.train_max_size=128",
    "dataset.augmentation.eval_min_size=64",
    "dataset.augmentation.eval_max_size=64",
    "dataset.workers=0",
    "dataset.batch_size=2",  # the 2 training images of the test data
    "train.max_steps=1",
    "train.num_nodes=1",  # hardware: the machine running the test
    "export.input_height=64",
    "export.input_width=64",
    "export.batch_size=1",
]


def write_tao_data(root: Path) -> dict:
    """The synthetic dataset (2 train, 2 val images of 64x64) plus ADE JSON lines."""
    paths = write_synthetic_dataset(root, num_train=2, num_val=2, size=(64, 64), seed=4)
    for split in ("train", "val"):
        paths[split]["ade"] = _ade_jsonl(root, split, paths[split])
    paths["classes"] = len(json.loads(Path(paths["label_map"]).read_text()))
    return paths


def _ade_jsonl(root: Path, split: str, source: dict) -> Path:
    """Label PNGs of category ids (0 unlabelled) from the panoptic PNGs, and the .jsonl."""
    data = json.loads(Path(source["panoptic_json"]).read_text())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    labels = root / split / "ade_labels"
    labels.mkdir(exist_ok=True)
    lines = []
    for ann in data["annotations"]:
        rgb = np.asarray(Image.open(Path(source["panoptic"]) / ann["file_name"]), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        label = np.zeros(ids.shape, dtype=np.uint8)
        for segment in ann["segments_info"]:
            label[ids == segment["id"]] = segment["category_id"]
        name = Path(ann["file_name"]).stem + ".png"
        Image.fromarray(label).save(labels / name)
        image = Path(source["images"]).relative_to(root) / files[ann["image_id"]]
        lines.append(json.dumps({"img": str(image), "segm": f"{split}/ade_labels/{name}"}))
    out = root / f"ade_{split}.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def data_overrides(name: str, data: dict, results: Path, checkpoint: str = "") -> list[str]:
    """The data and model-file paths of spec `name`, in its own keys, pointed at `data`."""
    out = [f"results_dir={results}", f"dataset.label_map={data['label_map']}"]
    train, val = data["train"], data["val"]
    if name in ADE_SPECS:
        out += [
            f"dataset.train.annot_file={train['ade']}",
            f"dataset.train.root_dir={data['root']}",
            f"dataset.val.annot_file={val['ade']}",
            f"dataset.val.root_dir={data['root']}",
        ]
    elif name.startswith("m2f"):
        file_key, file_name = (
            ("instance_json", "instances_json")
            if name.endswith("inst")
            else ("panoptic_json", "panoptic_json")
        )
        for split, source in (("train", train), ("val", val)):
            out += [
                f"dataset.{split}.{file_key}={source[file_name]}",
                f"dataset.{split}.img_dir={source['images']}",
            ]
            if file_key == "panoptic_json":
                out.append(f"dataset.{split}.panoptic_dir={source['panoptic']}")
    else:
        for split, source in (("train", train), ("val", val)):
            out += [
                f"dataset.{split}.images={source['images']}",
                f"dataset.{split}.annotations={source['panoptic_json']}",
                f"dataset.{split}.panoptic={source['panoptic']}",
            ]
        out.append(f"inference.images_dir={val['images']}")
    if name.startswith("m2f"):
        out += [f"dataset.test.img_dir={val['images']}", "model.backbone.pretrained_weights="]
    out.append(f"model.sem_seg_head.num_classes={data['classes']}")  # this data's classes
    for action in ("evaluate", "inference", "export"):
        out.append(f"{action}.checkpoint={checkpoint}")
    return out
