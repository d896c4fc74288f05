"""Published training recipes as spec presets: `oneseg template train --preset NAME`.

Each preset is the base recipe of the original OneFormer configs (SHI-Labs, detectron2; the
R50 settings every backbone inherits) written in oneseg keys. Schedules are given in epochs for
the original total batch of 16 images (`dataset.batch_size` 2 per GPU x `train.num_gpus` 8);
change `train.num_epochs` with the batch. The backbone stays the spec's own choice.
"""

from __future__ import annotations

import copy


# detectron2's `[int(x * 0.1 * base) for x in range(5, 21)]`: shortest edges 0.5x-2.0x of base.
def _multi_scale(base: int) -> list[int]:
    return [int(x * 0.1 * base) for x in range(5, 21)]


_COMMON = {
    "dataset": {"batch_size": 2},
    "train": {"num_gpus": 8, "precision": "16-mixed", "clip_grad_norm": 0.01},
}

PRESETS: dict[str, dict] = {
    # COCO panoptic, 133 classes: large-scale jitter to 1024, no colour augmentation,
    # evaluation at 800 / 1333; 368,750 iterations (~50 epochs of 118k images) with the rate
    # x0.1 at iterations 327,778 and 355,092 (WarmupMultiStepLR, 10 warmup iterations).
    "coco": {
        "model": {"num_queries": 150, "object_mask_threshold": 0.8, "overlap_threshold": 0.8},
        "dataset": {
            "augmentation": {
                "lsj": True,
                "lsj_scale": [0.1, 2.0],
                "crop_size": [1024, 1024],
                "train_min_size": [1024],
                "train_max_size": 2048,
                "eval_min_size": 800,
                "eval_max_size": 1333,
                "color_jitter": 0.0,
            }
        },
        "train": {
            "num_epochs": 50,
            "optim": {
                "lr": 1e-4,
                "lr_scheduler": "multistep",
                "milestones": [round(327778 / 368750, 4), round(355092 / 368750, 4)],
                "gamma": 0.1,
                "warmup_steps": 10,
                "warmup_factor": 1.0,
            },
        },
    },
    # ADE20K, 150 classes: shortest edge 256-1024 (x0.5-2.0 of 512, max 2048), crop 512x512,
    # photometric colour augmentation, evaluation at 512 / 2048; 160k iterations (~127 epochs of
    # 20,210 images), poly 0.9. oneseg's colour jitter (contrast/saturation/brightness in
    # [0.5, 1.5]) stands in for the SSD photometric distortion.
    "ade20k": {
        "model": {"num_queries": 150, "object_mask_threshold": 0.5, "overlap_threshold": 0.8},
        "dataset": {
            "augmentation": {
                "lsj": False,
                "train_min_size": _multi_scale(512),
                "train_max_size": 2048,
                "crop_size": [512, 512],
                "eval_min_size": 512,
                "eval_max_size": 2048,
                "color_jitter": 0.5,
            }
        },
        "train": {
            "num_epochs": 127,
            "optim": {"lr": 1e-4, "lr_scheduler": "poly", "poly_power": 0.9, "warmup_steps": 0},
        },
    },
    # Cityscapes, 19 classes: shortest edge 512-2048 (x0.5-2.0 of 1024, max 4096), crop
    # 512x1024, photometric colour augmentation, evaluation at 1024 / 2048; 90k iterations
    # (~484 epochs of 2,975 images), poly 0.9.
    "cityscapes": {
        "model": {"num_queries": 150, "object_mask_threshold": 0.8, "overlap_threshold": 0.8},
        "dataset": {
            "augmentation": {
                "lsj": False,
                "train_min_size": _multi_scale(1024),
                "train_max_size": 4096,
                "crop_size": [512, 1024],
                "eval_min_size": 1024,
                "eval_max_size": 2048,
                "color_jitter": 0.5,
            }
        },
        "train": {
            "num_epochs": 484,
            "optim": {"lr": 1e-4, "lr_scheduler": "poly", "poly_power": 0.9, "warmup_steps": 0},
        },
    },
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_values(name: str) -> dict:
    """The nested spec values of preset `name` (a fresh copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(_merge(_COMMON, PRESETS[name]))
