"""A TAO-shaped spec with an images.tar.gz trains through the CLI; experiment.yaml is resolved."""

import dataclasses
import json
import tarfile

import yaml

from oneseg.cli import main
from oneseg.config import LossConfig
from oneseg.data.label_map import LabelMap


def test_tao_spec_trains_from_an_archive(tmp_path, synth_data, tiny_model_cfg, capsys):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synth_data["train"]["images"], arcname="images")
    model = dataclasses.asdict(
        dataclasses.replace(tiny_model_cfg, loss=LossConfig(train_num_points=64))
    )
    for oneseg_key in ("num_queries", "dec_layers", "num_classes"):
        del model[oneseg_key]  # given below in TAO's words
    classes = len(LabelMap.from_json(synth_data["label_map"]))
    spec = {
        "results_dir": str(tmp_path / "results"),
        "encryption_key": "nvidia_tao",
        "model": {
            **model,
            "sem_seg_head": {"num_classes": classes, "norm": "GN", "common_stride": 4},
            "one_former": {"num_object_queries": 8, "dec_layers": 3},
            "test": {"semantic_on": True, "instance_on": False, "panoptic_on": False},
            "export": False,
        },
        "dataset": {
            "train": {
                "images": str(archive),
                "annotations": str(synth_data["train"]["panoptic_json"]),
                "panoptic": str(synth_data["train"]["panoptic"]),
                "batch_size": 2,
                "num_workers": 0,
            },
            "label_map": str(synth_data["label_map"]),
            "augmentation": {"train_min_size": [64], "train_crop_size": [64, 64]},
        },
        "train": {
            "num_epochs": 1,
            "precision": "fp32",
            "optim": {"type": "AdamW", "lr": 1e-4, "monitor_name": "train_loss"},
        },
    }
    path = tmp_path / "tao.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", "-e", str(path), "train.optim.lr_scheduler=MultiStep"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line] == [
        "oneseg: warning: encryption_key: accepted and ignored (oneseg files are not encrypted)"
    ]
    folder = tmp_path / "results" / "train"
    resolved = yaml.safe_load((folder / "experiment.yaml").read_text())
    assert "encryption_key" not in resolved and "sem_seg_head" not in resolved["model"]
    assert (resolved["model"]["num_queries"], resolved["model"]["dec_layers"]) == (8, 2)
    assert resolved["model"]["num_classes"] == classes
    assert resolved["train"]["precision"] == "32" and resolved["train"]["monitor"] == "loss"
    assert resolved["train"]["optim"]["lr_scheduler"] == "multistep"
    assert resolved["evaluate"]["tasks"] == ["semantic"]
    assert resolved["dataset"]["train"][0]["images"] == str(archive)
    assert (folder / "model_latest.ckpt").is_file() and (folder / "model_best.ckpt").is_file()
    last = json.loads((folder / "status.json").read_text().splitlines()[-1])
    assert (
        last["status"] == "SUCCESS"
        and last["kpi"]["steps"] == len(list(synth_data["train"]["images"].iterdir())) // 2
    )
    assert list((tmp_path / "results" / "cache").glob("images-*/images/*"))
