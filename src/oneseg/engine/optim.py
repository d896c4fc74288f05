"""AdamW parameter groups and the warmup + poly / cosine / multistep learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Parameters kept free of weight decay besides norms and nn.Embedding tables: learned position
# and level tables, and the contrastive temperature.
_NO_DECAY_NAMES = (
    "relative_position_bias_table",
    "absolute_pos_embed",
    "pos_embed",
    "level_embed",
    "positional_embedding",
    "logit_scale",
)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_multiplier: float
) -> list[dict]:
    """Groups for AdamW: backbone at `lr * backbone_multiplier`; no decay on norms, embeddings
    and position tables. Frozen parameters are left out."""
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    no_decay: set[int] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, (*_NORMS, nn.Embedding)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
        for name, param in module.named_parameters(recurse=False):
            if any(key in f"{module_name}.{name}" for key in _NO_DECAY_NAMES):
                no_decay.add(id(param))
    groups: dict[tuple[bool, bool], list] = {}
    for param in model.parameters():
        if param.requires_grad:
            key = (id(param) in backbone_ids, id(param) in no_decay)
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (backbone_multiplier if in_backbone else 1.0),
            "weight_decay": 0.0 if decay_free else weight_decay,
            "name": ("backbone" if in_backbone else "head") + ("_no_decay" if decay_free else ""),
        }
        for (in_backbone, decay_free), params in sorted(groups.items())
    ]


def lr_factor(
    step: int,
    total_steps: int,
    schedule: str,
    power: float,
    warmup_steps: int,
    warmup_factor: float,
    milestones: tuple[float, ...] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at `step` (0-based).

    multistep (detectron2's WarmupMultiStepLR): `milestones` are fractions of `total_steps`;
    from each one on the rate is multiplied by `gamma` once more."""
    if step < warmup_steps:
        alpha = step / warmup_steps
        warm = warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "poly":
        return warm * (1.0 - progress) ** power
    if schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "multistep":
        passed = sum(step >= round(m * total_steps) for m in milestones)
        return warm * gamma**passed
    return warm


def build_optimizer(model: nn.Module, optim_cfg, total_steps: int, fused: bool = False):
    """AdamW and a per-step LambdaLR from the spec's `train.optim` section; the schedule spans
    `train.optim.schedule_steps` if set, else `total_steps`. `fused`: AdamW's one-pass kernel
    per tensor (the same update to rounding, several times faster on CPU than the per-tensor
    loop of elementwise operations)."""
    if list(optim_cfg.milestones) != sorted(optim_cfg.milestones):
        raise ValueError(
            f"train.optim.milestones: got {list(optim_cfg.milestones)}, expected increasing "
            "fractions of training"
        )
    groups = param_groups(
        model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.backbone_multiplier
    )
    optimizer = torch.optim.AdamW(
        groups, lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay, fused=fused
    )
    total_steps = optim_cfg.schedule_steps or total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            total_steps,
            optim_cfg.lr_scheduler,
            optim_cfg.poly_power,
            optim_cfg.warmup_steps,
            optim_cfg.warmup_factor,
            tuple(optim_cfg.milestones),
            optim_cfg.gamma,
        ),
    )
    return optimizer, scheduler
