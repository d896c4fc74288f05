"""Shared fixtures: a tiny model config, a small synthetic dataset and a random-weight checkpoint.

Each is named after what it holds; add new fixtures under new names."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest

from oneseg.config import ModelConfig, PixelDecoderConfig, TextEncoderConfig


def tiny_model_config(**overrides) -> ModelConfig:
    """A OneFormer small enough for CPU tests: hidden 32, 2 decoder layers, 8 queries."""
    values = dict(
        backbone="convnext_tiny",
        backbone_embed_dim=16,
        backbone_depths=[1, 1, 1, 1],
        drop_path_rate=0.0,
        hidden_dim=32,
        num_queries=8,
        nheads=2,
        dim_feedforward=64,
        dec_layers=2,
        query_dec_layers=1,
        pixel_decoder=PixelDecoderConfig(
            conv_dim=32, mask_dim=32, enc_layers=1, enc_heads=2, enc_ffn_dim=64, norm_groups=8
        ),
        text_encoder=TextEncoderConfig(width=32, layers=1, n_ctx=2),
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="session")
def tiny_model_cfg() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict:
    """`write_synthetic_dataset` paths: 2 train and 4 val images of 64x64 (a crowd among them)."""
    from oneseg.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), num_train=2, num_val=4, size=(64, 64), seed=4
    )


@pytest.fixture(scope="session")
def evaluate_command(synth_data):
    """`oneseg evaluate` arguments for a checkpoint on the synthetic data's val split at 64:
    `evaluate_command(results_dir, checkpoint, *overrides)`."""
    val = synth_data["val"]

    def command(results_dir, checkpoint, *overrides) -> list[str]:
        return [
            "evaluate",
            f"results_dir={results_dir}",
            f"evaluate.checkpoint={checkpoint}",
            f"dataset.label_map={synth_data['label_map']}",
            f"dataset.val.images={val['images']}",
            f"dataset.val.annotations={val['panoptic_json']}",
            f"dataset.val.panoptic={val['panoptic']}",
            "dataset.augmentation.eval_min_size=64",
            "dataset.workers=0",
            *overrides,
        ]

    return command


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synth_data, tiny_model_cfg):
    """A oneseg checkpoint file of the tiny model with random weights, for the synth classes."""
    import torch

    from oneseg.checkpoint import make_checkpoint, save_atomic
    from oneseg.data.label_map import LabelMap
    from oneseg.model.build import build_model

    label_map = LabelMap.from_json(synth_data["label_map"])
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=len(label_map))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_atomic(make_checkpoint(tiny_model_cfg, label_map, model.state_dict()), path)
    return path


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test's models are tiny and run faster on one thread: on a busy machine a second
    OpenMP thread mostly waits, and small ops ran 10-100x slower with two."""
    import os

    import torch

    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # what the actions' thread choice follows
    yield
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture
def tao_mask2former_card(tmp_path):
    """The model block of TAO's Mask2Former model card, as written, in a spec file."""
    path = tmp_path / "tao_mask2former_card.yaml"
    path.write_text(TAO_MASK2FORMER_CARD)
    return path


TAO_MASK2FORMER_CARD = """
model:
  mode: instance
  backbone:
    type: swin
    swin:
      type: tiny
      window_size: 7
      ape: False
      pretrain_img_size: 224
  mask_former:
    num_object_queries: 100
  sem_seg_head:
    norm: GN
    num_classes: 1
"""


@pytest.fixture
def lightning_logs_to_this_stderr(monkeypatch):
    """Lightning's log handler keeps the stderr of its import; point it at this test's."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                monkeypatch.setattr(handler, "stream", sys.stderr)


@pytest.fixture()
def data(tmp_path, synth_data):
    """A private copy of the small synthetic dataset, free to break (the bad-input tests)."""
    root = tmp_path / "data"
    shutil.copytree(Path(synth_data["label_map"]).parent, root)
    return root
