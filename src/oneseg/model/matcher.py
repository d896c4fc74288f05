"""Hungarian matching between predicted masks and target masks.

Each target is assigned to exactly one query so that the summed cost is minimal; unassigned
queries are trained towards no-object. The cost of a (query, target) pair is
    - cost_class * p(target class)
    + cost_mask  * mean sigmoid cross-entropy over points
    + cost_dice  * dice loss over points,
with the mask terms read on one set of uniformly random points per image, shared by all
predictions and targets, as in Mask2Former and OneFormer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oneseg.model.point_sampling import point_sample

# A non-finite cost (a diverged prediction) is replaced by this, so such a pair is assigned only
# when nothing else is left instead of crashing the assignment.
_INVALID_COST = 1e8


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Arguments:
        logits: [Q, P] predicted mask logits at P points.
        targets: [N, P] target values in [0, 1] at the same points.

    Returns:
        [Q, N] costs.
    """
    # BCE(x, t) = softplus(x) - x * t, since softplus(-x) - softplus(x) = -x
    num_points = logits.shape[1]
    cost = F.softplus(logits).sum(1, keepdim=True) - torch.einsum("qp,np->qn", logits, targets)
    return cost / num_points


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss, 1 - (2|x t| + 1) / (|x| + |t| + 1), of every prediction against every target.

    Arguments:
        logits: [Q, P] predicted mask logits at P points.
        targets: [N, P] target values in [0, 1] at the same points.

    Returns:
        [Q, N] costs.
    """
    probs = logits.sigmoid()
    numerator = 2 * torch.einsum("qp,np->qn", probs, targets)
    denominator = probs.sum(1)[:, None] + targets.sum(1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to queries, per image.

    Arguments:
        cost_class: weight of the class cost, -p(target class).
        cost_mask: weight of the point-sampled sigmoid cross-entropy.
        cost_dice: weight of the point-sampled dice loss.
        num_points: points sampled per image for the mask costs.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one of cost_class, cost_mask, cost_dice must be non-zero")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match each image's targets to its queries.

        Arguments:
            outputs: "pred_logits" [B, Q, K+1] class logits, "pred_masks" [B, Q, h, w] mask
                logits; other entries are ignored.
            targets: B dicts with "labels" [N] long and "masks" [N, H, W] bool or float, at any
                resolution covering the same image area as the predictions.

        Returns:
            B pairs (pred_idx, tgt_idx) of int64 CPU tensors of length min(Q, N): query
            pred_idx[i] is assigned target tgt_idx[i]; pred_idx is sorted.
        """
        # Imported here: only training matches, and scipy.optimize takes a second to import.
        from scipy.optimize import linear_sum_assignment

        indices = []
        for pred_logits, pred_masks, target in zip(
            outputs["pred_logits"], outputs["pred_masks"], targets
        ):
            labels = target["labels"]
            # Drawn even for an image without targets, to keep the random stream of the
            # references (one draw per image) and so their seeded results.
            coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self._cost_matrix(pred_logits, pred_masks, labels, target["masks"], coords)
            pred_idx, tgt_idx = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(pred_idx).long(), torch.as_tensor(tgt_idx).long()))
        return indices

    def _cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        target_masks: torch.Tensor,
        coords: torch.Tensor,
    ) -> torch.Tensor:
        """[Q, N] matching cost of one image, on one point set [1, P, 2] for all masks."""
        # Mixed precision would lose the small differences that decide the assignment.
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            # Masks as channels: [Q, h, w] -> [1, Q, h, w] -> [1, Q, P] -> [Q, P]
            point_logits = point_sample(pred_masks[None].float(), coords)[0]
            # [N, H, W] -> [N, P]
            point_targets = point_sample(target_masks[None].to(coords), coords)[0]

            prob = pred_logits.float().softmax(-1)
            cost = (
                -self.cost_class * prob[:, labels]
                + self.cost_mask * pairwise_sigmoid_ce(point_logits, point_targets)
                + self.cost_dice * pairwise_dice(point_logits, point_targets)
            )
        return torch.nan_to_num(cost, nan=_INVALID_COST, posinf=_INVALID_COST, neginf=_INVALID_COST)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
            f"cost_dice={self.cost_dice}, num_points={self.num_points}"
        )
