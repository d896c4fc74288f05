"""The training loss of OneFormer and Mask2Former.

For the final prediction and, with deep supervision, for the prediction after every decoder layer:
queries are matched one-to-one to target masks (`HungarianMatcher`), then
- "labels": cross-entropy over all queries, unmatched ones towards no-object (class K), whose
  weight is `eos_coef`;
- "masks": sigmoid cross-entropy and dice loss of each matched pair on importance-sampled points,
  summed over pairs and divided by the number of target masks averaged over processes.
For OneFormer, once per batch, on the final layer only:
- "contrastive": symmetric InfoNCE between each image's task-guided queries and its text list,
  each flattened to one vector per image and L2-normalised; the other images of the global batch
  (gathered from every process, with gradients) are the negatives.

Loss keys: loss_ce, loss_mask, loss_dice, loss_contrastive; the i-th auxiliary layer adds
loss_ce_i, loss_mask_i, loss_dice_i. `SetCriterion.total` sums them with their weights.
"""

from __future__ import annotations

import math
import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from oneseg.config import LossConfig
from oneseg.model.matcher import HungarianMatcher
from oneseg.model.point_sampling import point_sample, sample_uncertain_points

LOSSES = ("labels", "masks", "contrastive")
_LAYER_SUFFIX = re.compile(r"_\d+$")
# CLIP's cap on the learned scale: exp(logit_scale) never exceeds 100.
_MAX_LOGIT_SCALE = 100.0

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns to each process the gradient that every
    process's loss sends to its rows (all-reduce of the gathered gradient, then this rank's slice).
    Written out because torch.distributed.nn.functional.all_gather is deprecated and, on gloo,
    emulates reduce-scatter with all-to-all."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def contrastive_loss(
    queries: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Query-text InfoNCE of OneFormer, over the global batch when torch.distributed is set up.

    Arguments:
        queries: [B, Q_t, D] query embeddings of this process's images.
        texts: [B, T_t, D] text embeddings, T_t * D == Q_t * D.
        logit_scale: scalar, log of the inverse temperature; its exp is capped at 100.

    Returns:
        scalar, CE(image -> text) + CE(text -> image), each averaged over this process's B rows.
        Averaging it over processes (as DDP does with gradients) gives the loss of the global
        batch; with a global batch of one it is exactly 0.
    """
    if queries.shape[0] != texts.shape[0] or queries[0].numel() != texts[0].numel():
        raise ValueError(
            f"contrastive_logits {tuple(queries.shape)} and texts {tuple(texts.shape)} must "
            "have the same batch size and the same number of elements per image"
        )
    with torch.autocast(device_type=queries.device.type, enabled=False):
        # [B, Q_t, D] -> [B, Q_t * D]: one vector per image
        image_x = F.normalize(queries.float().flatten(1), dim=-1)
        text_x = F.normalize(texts.float().flatten(1), dim=-1)
        batch_size = image_x.shape[0]
        all_image_x, all_text_x, rank = image_x, text_x, 0
        if _distributed():
            all_image_x = _GatherWithGrad.apply(image_x)
            all_text_x = _GatherWithGrad.apply(text_x)
            rank = dist.get_rank()
        # This process's rows sit at rank * B in the gathered [world * B, ...] columns.
        labels = torch.arange(batch_size, device=image_x.device) + rank * batch_size
        scale = logit_scale.float().exp().clamp(max=_MAX_LOGIT_SCALE)
        logits_per_image = scale * image_x @ all_text_x.t()  # [B, world * B]
        logits_per_text = scale * text_x @ all_image_x.t()
        return F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)


def sigmoid_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_masks: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-mask mean BCE over points, summed over masks, divided by num_masks.

    logits, labels, valid: [M, P]; valid (bool, optional) drops points from the mean."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if valid is None:
        per_mask = loss.mean(1)
    else:
        per_mask = (loss * valid).sum(1) / valid.sum(1).clamp(min=1)
    return per_mask.sum() / num_masks


def dice_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_masks: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-mask dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) over points, summed over masks,
    divided by num_masks. logits, labels, valid: [M, P]; valid (bool, optional) drops points."""
    probs = logits.sigmoid()
    if valid is not None:
        probs, labels = probs * valid, labels * valid
    numerator = 2 * (probs * labels).sum(1)
    denominator = probs.sum(1) + labels.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SetCriterion(nn.Module):
    """Matching-based loss of OneFormer / Mask2Former.

    Arguments:
        num_classes: K, classes without no-object; the no-object class is K.
        matcher: assigns targets to queries.
        weight_dict: weight per loss key ("loss_ce", "loss_mask", "loss_dice",
            "loss_contrastive"); a key of an auxiliary layer ("loss_dice_3") takes its own entry
            if present, else the entry of its base key. Keys without a weight are left out of
            `total`.
        eos_coef: class weight of no-object in the cross-entropy.
        losses: which of "labels", "masks", "contrastive" to compute.
        num_points: points per mask for the mask losses.
        oversample_ratio: candidate points per kept point for importance sampling.
        importance_sample_ratio: share of points chosen where the prediction is uncertain.
        contrastive_temperature: temperature used when the outputs carry no "logit_scale" (the
            learned scale belongs to the model, so that it is trained and saved with it).
        deep_supervision: also supervise every entry of outputs["aux_outputs"].
        use_ignore_mask: drop points where a target's "ignore_mask" is set (crowd, void) from the
            mask losses. Off by default: the original OneFormer and Mask2Former train on them.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        weight_dict: dict[str, float],
        eos_coef: float,
        losses: tuple[str, ...] = ("labels", "masks", "contrastive"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        contrastive_temperature: float = 0.07,
        deep_supervision: bool = True,
        use_ignore_mask: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(losses) - set(LOSSES)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; choose from {LOSSES}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.default_logit_scale = math.log(1.0 / contrastive_temperature)
        self.deep_supervision = deep_supervision
        self.use_ignore_mask = use_ignore_mask
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def forward(
        self, outputs: dict, targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of a batch.

        Arguments:
            outputs: "pred_logits" [B, Q, K+1], "pred_masks" [B, Q, h, w] logits,
                optionally "aux_outputs" (list of dicts with the same two entries) and, for the
                contrastive loss, "contrastive_logits" [B, Q_t, D], "texts" [B, T_t, D] and
                "logit_scale" (scalar tensor, log scale).
            targets: B dicts: "labels" [N] long, "masks" [N, Hp, Wp] bool/float at the padded
                input resolution, optionally "ignore_mask" [Hp, Wp] bool.

        Returns:
            scalar losses by key, see the module docstring; all finite for empty targets.
        """
        num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        losses = self._layer_losses(outputs, targets, num_masks)
        if "contrastive" in self.losses:
            logit_scale = outputs.get("logit_scale")
            if logit_scale is None:
                logit_scale = torch.tensor(self.default_logit_scale, device=num_masks.device)
            losses["loss_contrastive"] = contrastive_loss(
                outputs["contrastive_logits"], outputs["texts"], logit_scale
            )
        if self.deep_supervision:
            for i, aux_outputs in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._layer_losses(aux_outputs, targets, num_masks)
                losses.update({f"{key}_{i}": value for key, value in aux_losses.items()})
        return losses

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of `losses` (the output of forward): the value to back-propagate."""
        total = torch.zeros((), device=self.empty_weight.device)
        for key, value in losses.items():
            weight = self.weight_dict.get(key, self.weight_dict.get(_LAYER_SUFFIX.sub("", key)))
            if weight is not None:
                total = total + weight * value
        return total

    def _layer_losses(
        self, outputs: dict, targets: list[dict[str, torch.Tensor]], num_masks: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Class and mask losses of one decoder layer's prediction, with its own matching."""
        indices = self.matcher(outputs, targets)
        losses = {}
        if "labels" in self.losses:
            losses["loss_ce"] = self.loss_labels(outputs["pred_logits"], targets, indices)
        if "masks" in self.losses:
            mask, dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks)
            losses["loss_mask"], losses["loss_dice"] = mask, dice
        return losses

    def loss_labels(
        self, pred_logits: torch.Tensor, targets: list[dict], indices: Indices
    ) -> torch.Tensor:
        """Cross-entropy over all B * Q queries, weighted by class (no-object: eos_coef), divided
        by the summed weights. pred_logits: [B, Q, K+1]."""
        pred_logits = pred_logits.float()
        batch_idx, pred_idx = _matched_predictions(indices, pred_logits.device)
        target_classes = torch.full(
            pred_logits.shape[:2], self.num_classes, dtype=torch.long, device=pred_logits.device
        )
        matched_labels = [
            t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)
        ]
        target_classes[batch_idx, pred_idx] = torch.cat(matched_labels).to(pred_logits.device)
        # [B, Q, K+1] -> [B, K+1, Q]; each entry already carries its class weight
        weighted = F.cross_entropy(
            pred_logits.transpose(1, 2), target_classes, self.empty_weight, reduction="none"
        )
        # The summed weights never reach 0 unless eos_coef = 0 and there are no targets.
        weight_sum = self.empty_weight[target_classes].sum().clamp(min=1e-6)
        return weighted.sum() / weight_sum

    def loss_masks(
        self,
        pred_masks: torch.Tensor,
        targets: list[dict],
        indices: Indices,
        num_masks: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(BCE, dice) of the matched masks on importance-sampled points. pred_masks: [B, Q, h, w]
        logits; target masks are read at the same normalised points at their own resolution."""
        batch_idx, pred_idx = _matched_predictions(indices, pred_masks.device)
        if batch_idx.numel() == 0:
            # Nothing matched: zero, still connected to the graph so that every parameter
            # receives a (zero) gradient.
            zero = pred_masks.sum() * 0.0
            return zero, zero
        # [B, Q, h, w] -> [M, 1, h, w]
        matched = pred_masks[batch_idx, pred_idx][:, None].float()
        with torch.no_grad():
            coords = sample_uncertain_points(
                matched,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            labels, valid = self._point_targets(targets, indices, coords)
        logits = point_sample(matched, coords)[:, 0]  # [M, P]
        return (
            sigmoid_ce_loss(logits, labels, num_masks, valid),
            dice_loss(logits, labels, num_masks, valid),
        )

    def _point_targets(
        self, targets: list[dict], indices: Indices, coords: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Matched target masks at `coords` [M, P, 2] -> labels [M, P] float and, with
        use_ignore_mask, valid [M, P] bool (else None)."""
        labels, valid = [], []
        start = 0
        for target, (_, tgt_idx) in zip(targets, indices):
            n = len(tgt_idx)
            if n == 0:
                continue
            image_coords = coords[start : start + n]
            start += n
            masks = target["masks"][tgt_idx.to(target["masks"].device)]
            # [n, H, W] -> [n, 1, H, W] -> [n, 1, P] -> [n, P]
            labels.append(point_sample(masks[:, None].to(coords), image_coords)[:, 0])
            if self.use_ignore_mask:
                valid.append(self._valid_points(target, image_coords))
        return torch.cat(labels), (torch.cat(valid) if self.use_ignore_mask else None)

    @staticmethod
    def _valid_points(target: dict, coords: torch.Tensor) -> torch.Tensor:
        """[n, P] True where the pixel under each point is not ignored."""
        if "ignore_mask" not in target:
            return torch.ones(coords.shape[:2], dtype=torch.bool, device=coords.device)
        ignore = target["ignore_mask"].to(coords)[None, None]  # [1, 1, H, W]
        # All masks of the image at once: [n, P, 2] -> [1, n * P, 2] -> [1, 1, n * P]
        ignored = point_sample(ignore, coords.reshape(1, -1, 2), mode="nearest")
        return (ignored == 0).reshape(coords.shape[:2])

    @staticmethod
    def num_masks(targets: list[dict], device: torch.device) -> torch.Tensor:
        """Target masks per process averaged over processes, at least 1: the normaliser of the
        mask losses, the same on every process so that DDP's gradient averaging is exact."""
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if _distributed():
            dist.all_reduce(num_masks)
            num_masks = num_masks / dist.get_world_size()
        return num_masks.clamp(min=1.0)


def _matched_predictions(indices: Indices, device: torch.device):
    """(batch_idx, pred_idx) of all matched queries, image by image."""
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    pred_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), pred_idx.to(device)


def build_criterion(loss_cfg: LossConfig, num_classes: int, arch: str) -> SetCriterion:
    """The criterion of `arch` ("oneformer" or "mask2former", which has no contrastive loss)."""
    if arch not in ("oneformer", "mask2former"):
        raise ValueError(f"arch must be 'oneformer' or 'mask2former', got {arch!r}")
    # The matcher weighs its costs like the losses, as the original configs do.
    matcher = HungarianMatcher(
        cost_class=loss_cfg.class_weight,
        cost_mask=loss_cfg.mask_weight,
        cost_dice=loss_cfg.dice_weight,
        num_points=loss_cfg.train_num_points,
    )
    weight_dict = {
        "loss_ce": loss_cfg.class_weight,
        "loss_mask": loss_cfg.mask_weight,
        "loss_dice": loss_cfg.dice_weight,
    }
    losses: tuple[str, ...] = ("labels", "masks")
    if arch == "oneformer":
        weight_dict["loss_contrastive"] = loss_cfg.contrastive_weight
        losses += ("contrastive",)
    return SetCriterion(
        num_classes,
        matcher,
        weight_dict=weight_dict,
        eos_coef=loss_cfg.no_object_weight,
        losses=losses,
        num_points=loss_cfg.train_num_points,
        oversample_ratio=loss_cfg.oversample_ratio,
        importance_sample_ratio=loss_cfg.importance_sample_ratio,
        contrastive_temperature=loss_cfg.contrastive_temperature,
        deep_supervision=loss_cfg.deep_supervision,
    )
