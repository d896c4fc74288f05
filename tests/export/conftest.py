"""Fixtures of the deploy tests: tiny models with confident heads, exported once per module."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from oneseg.data.label_map import LabelMap

# stuff and things mixed, so that panoptic merges stuff and instance drops it
CATEGORIES = [
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 7, "name": "box", "isthing": 1},
    {"id": 9, "name": "ball", "isthing": 1},
    {"id": 12, "name": "grass", "isthing": 0},
    {"id": 20, "name": "cone", "isthing": 1},
]


def confident_tiny_model(tiny_cfg, arch: str, num_classes: int = len(CATEGORIES)):
    """A random tiny model whose class and mask heads are sharpened, so that random weights give
    several confident queries, overlapping masks and merged stuff segments."""
    from oneseg.model.build import build_model

    torch.manual_seed(1)
    cfg = dataclasses.replace(
        tiny_cfg, arch=arch, object_mask_threshold=0.5, test_topk_per_image=12
    )
    model = build_model(cfg, num_classes=num_classes).eval()
    with torch.no_grad():
        model.decoder.class_embed.weight.mul_(6.0)
        model.decoder.mask_embed.layers[-1].weight.mul_(4.0)
    return cfg, model


@pytest.fixture(scope="session")
def deploy_label_map() -> LabelMap:
    return LabelMap.from_categories(CATEGORIES)


@pytest.fixture(scope="session")
def deploy_checkpoints(tmp_path_factory, tiny_model_cfg) -> dict:
    """arch -> path of a checkpoint of `confident_tiny_model(arch)`."""
    from oneseg.checkpoint import make_checkpoint, save_atomic

    folder = tmp_path_factory.mktemp("deploy_ckpt")
    label_map = LabelMap.from_categories(CATEGORIES)
    paths = {}
    for arch in ("oneformer", "mask2former"):
        cfg, model = confident_tiny_model(tiny_model_cfg, arch)
        paths[arch] = folder / f"{arch}.pth"
        save_atomic(make_checkpoint(cfg, label_map, model.state_dict()), paths[arch])
    return paths
