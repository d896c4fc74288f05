"""Point sampling for the mask losses and the matcher (PointRend / Mask2Former).

Mask losses are computed on a few thousand points per mask instead of on every pixel. Points are
given in normalised image coordinates, (x, y) in [0, 1]^2, so a stride-4 prediction and a
full-resolution target mask are read at the same places without resizing either.

Random numbers are drawn from torch's global generator in the same order as the original
Mask2Former/OneFormer code (candidates first, then the uniform remainder), so a seeded run draws
the same points as the references do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Read `input` at normalised points, bilinearly (or "nearest"); outside the map is 0.

    Arguments:
        input: [N, C, H, W] feature or mask maps.
        coords: [N, P, 2] points (x, y) in [0, 1]; (0, 0) is the top-left corner of the
            top-left pixel, as grid_sample with align_corners=False reads it.

    Returns:
        [N, C, P] values at the points.
    """
    # grid_sample wants a grid in [-1, 1]: [N, P, 2] -> [N, P, 1, 2]
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(input, grid.to(input.dtype), mode=mode, align_corners=False).squeeze(3)


def sample_uncertain_points(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Points where each mask is least certain, plus uniform random ones.

    `num_points * oversample_ratio` candidates are drawn uniformly; the
    `num_points * importance_sample_ratio` with the highest uncertainty (-|logit|, i.e. closest to
    the decision boundary) are kept and the rest of the `num_points` are drawn uniformly again, so
    the loss sees the boundary without losing coverage of the whole mask.

    Arguments:
        logits: [N, 1, H, W] mask logits (no gradient is needed).
        num_points: P, points per mask.
        oversample_ratio: candidates per kept point, >= 1.
        importance_sample_ratio: share of the P points chosen by uncertainty, in [0, 1].

    Returns:
        [N, P, 2] points (x, y) in [0, 1].
    """
    num_masks = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(num_masks, num_candidates, 2, device=logits.device)
    # [N, 1, H, W] at [N, C, 2] -> [N, C]
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()
    # the set of points is what counts (the losses sum over them): unsorted is 2x faster
    top = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
    # [N, num_uncertain] -> [N, num_uncertain, 2]
    coords = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        uniform = torch.rand(num_masks, num_random, 2, device=logits.device)
        coords = torch.cat([coords, uniform], dim=1)
    return coords
