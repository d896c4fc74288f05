"""From mask-classification outputs to semantic, instance and panoptic results.

The model predicts, per image, Q queries each with class logits `[Q, K+1]` (the last class is
"no object") and mask logits `[Q, h, w]` at a fraction of the padded input size. The functions
here follow the original OneFormer inference (SHI-Labs/OneFormer, `oneformer_model.py`):

- masks are upsampled to the padded input, cropped to the unpadded image, then resized to the
  size the caller wants results at (`resize_mask_logits`);
- semantic: per-class score map = sum over queries of p(class) * sigmoid(mask);
- instance: top-k (query, class) pairs by class probability, mask = logit > 0, score scaled by
  the mean mask probability inside the mask;
- panoptic: confident queries compete per pixel by p(class) * sigmoid(mask); a query keeps its
  pixels only when it wins most of its own mask; stuff of one class becomes one segment.

Where transformers' `OneFormerImageProcessor` does otherwise, the docstrings below say so; we
follow the original because the published numbers were measured with it.

Memory: Q mask logits at the size of an 8000x6000 photo take Q x 192 MB. When they would take
more than `FULL_SIZE_BYTES`, `postprocess` works at the model's resolution and upsamples strips
of rows one at a time (`upsample_rows`, bilinear as `F.interpolate` to float rounding): semantic
and panoptic keep one strip of logits at a time, instance keeps one full-size mask per query
(detections of one query under several classes share it). Smaller outputs take the direct path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from oneseg.config import ModelConfig
from oneseg.constants import TASKS
from oneseg.data.label_map import LabelMap
from oneseg.model.strips import row_strips, upsample_rows
from oneseg.results import InstanceResult, PanopticResult, QueryMasks, Result, SemanticResult

FULL_SIZE_BYTES = 1 << 30  # mask logits at the output size above this: computed in strips
STRIP_BYTES = 64 << 20  # about this much float32 per strip of rows


@dataclass(frozen=True)
class PostprocessConfig:
    """How raw outputs become results; the one set of settings the evaluator, `Predictor` and
    the exported graph share.

    object_mask_threshold, overlap_threshold: see `panoptic_inference`.
    topk, score_threshold: see `instance_inference`.
    """

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    topk: int = 150
    score_threshold: float | None = None

    @classmethod
    def of_model(
        cls, model_cfg: ModelConfig, spec_model: ModelConfig | None = None
    ) -> PostprocessConfig:
        """The settings chosen for a model (its config, e.g. from a checkpoint), with those a
        spec's `model` section sets to other than their defaults taking over."""
        values = {
            "object_mask_threshold": model_cfg.object_mask_threshold,
            "overlap_threshold": model_cfg.overlap_threshold,
            "topk": model_cfg.test_topk_per_image,
        }
        if spec_model is not None:
            defaults = ModelConfig()
            for name, field in (
                ("object_mask_threshold", "object_mask_threshold"),
                ("overlap_threshold", "overlap_threshold"),
                ("topk", "test_topk_per_image"),
            ):
                if getattr(spec_model, field) != getattr(defaults, field):
                    values[name] = getattr(spec_model, field)
        return cls(**values)


def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Tensor:
    """Mask logits at the model's resolution -> logits over the original image.

    Arguments:
        mask_logits: [B, Q, h, w] logits predicted for the padded input batch.
        padded_size: (H_pad, W_pad), size of the input tensor the model saw.
        image_size: (h_img, w_img), the part of the padded input that is image (top-left).
        output_size: (H_out, W_out), size of the original image to report results at.
    Returns:
        [B, Q, H_out, W_out] logits.

    Cropping before the final resize keeps padding out of the result; transformers' semantic
    post-processing resizes the padded logits directly, which stretches the padding into the
    image.
    """
    logits = model_resolution_logits(mask_logits, padded_size, image_size)
    if tuple(logits.shape[-2:]) != tuple(output_size):
        logits = F.interpolate(
            logits, size=tuple(output_size), mode="bilinear", align_corners=False
        )
    return logits


def model_resolution_logits(
    mask_logits: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """[B, Q, h, w] logits -> [B, Q, h_img, w_img]: upsampled to the padded input the model saw,
    padding cropped off. Small: the size of the model's input, not of the original image."""
    logits = F.interpolate(
        mask_logits, size=tuple(padded_size), mode="bilinear", align_corners=False
    )
    return logits[..., : image_size[0], : image_size[1]]


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class score maps.

    Arguments:
        class_logits: [..., Q, K+1].
        mask_logits: [..., Q, H, W].
    Returns:
        [..., K, H, W] scores; `.argmax(-3)` is the label map (contiguous class ids).
    """
    class_probs = class_logits.softmax(-1)[..., :-1]  # drop no-object
    return torch.einsum("...qk,...qhw->...khw", class_probs, mask_logits.sigmoid())


def instance_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    num_classes: int,
    topk: int = 150,
    thing_classes: list[int] | None = None,
    score_threshold: float | None = None,
) -> dict[str, Tensor]:
    """Top-k detections of one image.

    Arguments:
        class_logits: [Q, K+1].
        mask_logits: [Q, H, W], already at the output size.
        num_classes: K (checked against `class_logits`).
        topk: number of (query, class) pairs kept among all Q*K, as the original's
            `DETECTIONS_PER_IMAGE`. A query may appear under several classes.
        thing_classes: contiguous ids of thing classes; when given, detections of other classes
            are dropped after the top-k (so fewer than `topk` may remain), as the original does
            for models that also do panoptic.
        score_threshold: if given, drop pairs whose class probability is not above it, before
            the thing filter (the original's demo mode). None keeps all (evaluation).
    Returns:
        dict with `masks` [N, H, W] bool, `scores` [N] (class probability * mean mask
        probability inside the mask), `labels` [N] long (contiguous class ids) and `queries`
        [N] long (the query each detection comes from), in decreasing class probability.

    transformers' `post_process_instance_segmentation` differs: it takes top-Q instead of
    top-k, keeps only class probability > 0.5 by default (`is_demo=True`), turns the detections
    into a non-overlapping segment map via the panoptic argmax, does not rescale scores by
    mask probability, and filters things only for `task_type="panoptic"`.
    """
    pair_scores, labels, queries = _top_pairs(
        class_logits, num_classes, topk, score_threshold, thing_classes
    )

    # one query's mask serves all its classes: work on each query kept once ([U, H, W], U <= Q)
    unique, index = torch.unique(queries, sorted=True, return_inverse=True)
    logits = mask_logits[unique]  # [U, H, W]
    masks = logits > 0
    probs_inside = (logits.sigmoid() * masks).flatten(1).sum(1)  # [U, H, W] -> [U]
    mask_scores = probs_inside / (masks.flatten(1).sum(1) + 1e-6)
    return {
        "masks": masks[index],  # [N, H, W]
        "scores": pair_scores * mask_scores[index],
        "labels": labels,
        "queries": queries,
    }


def panoptic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    num_classes: int,
    isthing: list[bool],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    require_own_mask: bool = True,
) -> tuple[Tensor, list[dict]]:
    """Panoptic segmentation of one image.

    Arguments:
        class_logits: [Q, K+1].
        mask_logits: [Q, H, W], already at the output size.
        num_classes: K (checked against `class_logits`).
        isthing: [K] whether each contiguous class is a thing (stuff is merged per class).
        object_mask_threshold: queries whose top class probability is not above this (or whose
            top class is no-object) take no part.
        overlap_threshold: a query whose won pixels are less than this fraction of its own mask
            (sigmoid >= 0.5) is dropped.
        require_own_mask: a pixel joins the query that wins it only where that query's own
            sigmoid >= 0.5 (OneFormer); False lets the argmax alone decide (Mask2Former and
            transformers), so only pixels won by dropped queries stay void.
    Returns:
        segment_ids: [H, W] int32, 0 = void, segments numbered from 1 in query order.
        segments: one dict per segment: `id`, `label` (contiguous class), `isthing`, `score`
            (class probability; the highest among the queries of a merged stuff segment) and
            `area` (pixels).

    transformers' `post_process_panoptic_segmentation` differs: it merges only the classes in
    `label_ids_to_fuse` (none by default) and lists a merged segment once per query; it tests
    the overlap on probabilities already multiplied by the class score (so masks look smaller
    and more queries pass), drops a query whose ratio equals the threshold, and returns a map
    of -1 when no query is confident.
    """
    _check_num_classes(class_logits, num_classes)
    height, width = mask_logits.shape[-2:]
    segment_ids = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)

    scores, labels = class_logits.softmax(-1).max(-1)  # [Q]
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    scores, labels = scores[keep], labels[keep]
    mask_probs = mask_logits[keep].sigmoid()  # [N, H, W]
    n = len(scores)
    if n == 0:
        return segment_ids, []

    winner = (scores[:, None, None] * mask_probs).argmax(0)  # [H, W] index into the N kept
    won = winner.flatten()
    if require_own_mask:
        own = mask_probs.gather(0, winner[None])[0] >= 0.5  # [H, W]
    else:
        own = torch.ones_like(winner, dtype=torch.bool)
    won_area = torch.bincount(won, minlength=n)  # [N]
    own_area = (mask_probs >= 0.5).flatten(1).sum(1)  # [N]
    final_area = torch.bincount(won[own.flatten()], minlength=n)  # [N]
    valid = (won_area > 0) & (own_area > 0) & (final_area > 0)
    # The ratio in float64 on the CPU, as the original's Python division, so ties agree.
    ratio = won_area.cpu().double() / own_area.cpu().double().clamp(min=1)
    valid &= (ratio >= overlap_threshold).to(valid.device)

    query_to_segment, segments = _number_segments(
        valid, labels, scores, final_area, isthing, mask_logits.device
    )
    segment_ids = torch.where(own, query_to_segment[winner], segment_ids)
    return segment_ids, segments


def _number_segments(valid, labels, scores, final_area, isthing, device):
    """Number the surviving queries; stuff queries of one class share the first one's id.
    Returns ([N] int32 segment id of each kept query, 0 if dropped; the segment dicts)."""
    query_to_segment = torch.zeros(len(valid), dtype=torch.int32, device=device)
    segments: list[dict] = []
    stuff_segment: dict[int, dict] = {}
    for k in torch.nonzero(valid).flatten().tolist():
        label, score, area = int(labels[k]), float(scores[k]), int(final_area[k])
        thing = bool(isthing[label])
        if not thing and label in stuff_segment:
            segment = stuff_segment[label]
            segment["score"] = max(segment["score"], score)
            segment["area"] += area
        else:
            segment = {
                "id": len(segments) + 1,
                "label": label,
                "isthing": thing,
                "score": score,
                "area": area,
            }
            segments.append(segment)
            if not thing:
                stuff_segment[label] = segment
        query_to_segment[k] = segment["id"]
    return query_to_segment, segments


def postprocess(
    outputs: dict[str, Tensor],
    task: str,
    padded_size: tuple[int, int],
    image_sizes: list[tuple[int, int]],
    output_sizes: list[tuple[int, int]] | None = None,
    *,
    label_map: LabelMap | None = None,
    num_classes: int | None = None,
    isthing: list[bool] | None = None,
    config: PostprocessConfig | None = None,
) -> list[Result]:
    """The result of `task` for each image of a batch (see `oneseg.results`).

    Arguments:
        outputs: `pred_logits` [B, Q, K+1] and `pred_masks` [B, Q, h, w].
        task: "semantic", "instance" or "panoptic".
        padded_size: (H_pad, W_pad) of the input batch tensor.
        image_sizes: B x (h_img, w_img), the unpadded part of each input.
        output_sizes: B x (H_out, W_out), the original image sizes; default `image_sizes`.
        label_map: the classes; gives `num_classes` and `isthing` when those are not set, and
            the results' category ids and names.
        num_classes: K; default the label map's, else read from `pred_logits`.
        isthing: [K] thing flags. Needed for panoptic; for instance, non-things are dropped.
        config: thresholds and top-k (`PostprocessConfig`; default its defaults).
    With a `Prediction` of `OneFormer.predict`: `postprocess(p.outputs[task], task,
    p.padded_size, p.image_sizes, output_sizes, ...)`.
    Returns:
        B results of the task: `SemanticResult`, `InstanceResult` (its masks a `QueryMasks`
        for a large output) or `PanopticResult`, at the output sizes.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    config = config or PostprocessConfig()
    if label_map is not None:
        num_classes = len(label_map) if num_classes is None else num_classes
        isthing = list(label_map.isthing) if isthing is None else isthing
    class_logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
    if num_classes is None:
        num_classes = class_logits.shape[-1] - 1
    if task == "panoptic" and isthing is None:
        raise ValueError("panoptic post-processing needs `isthing` for every class")
    if output_sizes is None:
        output_sizes = image_sizes
    if not len(image_sizes) == len(output_sizes) == len(class_logits):
        raise ValueError("need one image size and one output size per image of the batch")
    thing_classes = None if isthing is None else [i for i, t in enumerate(isthing) if t]

    settings = dict(
        num_classes=num_classes,
        isthing=isthing,
        thing_classes=thing_classes,
        config=config,
        label_map=label_map,
    )
    return [
        _postprocess_image(
            task, class_logits[i], mask_logits[i : i + 1], padded_size, image_size, output_size,
            **settings,
        )
        for i, (image_size, output_size) in enumerate(zip(image_sizes, output_sizes))
    ]  # fmt: skip


def _postprocess_image(
    task: str,
    class_logits: Tensor,
    mask_logits: Tensor,
    padded_size,
    image_size,
    output_size,
    *,
    num_classes: int,
    isthing,
    thing_classes,
    config: PostprocessConfig,
    label_map: LabelMap | None,
) -> Result:
    """One image's result: class_logits [Q, K+1], mask_logits [1, Q, h, w] of the padded batch."""
    if len(mask_logits[0]) * output_size[0] * output_size[1] * 4 > FULL_SIZE_BYTES:
        low = model_resolution_logits(mask_logits, padded_size, image_size)[0]
        return _postprocess_in_strips(
            task,
            class_logits,
            low,
            tuple(output_size),
            num_classes=num_classes,
            isthing=isthing,
            thing_classes=thing_classes,
            topk=config.topk,
            object_mask_threshold=config.object_mask_threshold,
            overlap_threshold=config.overlap_threshold,
            score_threshold=config.score_threshold,
            label_map=label_map,
        )
    if task == "panoptic":
        # only the queries that take part can win a pixel: resize just those (the rule that
        # picks them, taken again inside on the subset, keeps every one of them)
        scores, labels = class_logits.softmax(-1).max(-1)
        keep = labels.ne(num_classes) & (scores > config.object_mask_threshold)
        if keep.any():
            masks = resize_mask_logits(mask_logits[:, keep], padded_size, image_size, output_size)
            masks = masks[0]
        else:
            masks = mask_logits.new_zeros((0, *output_size))
        panoptic = panoptic_inference(
            class_logits[keep],
            masks,
            num_classes,
            isthing,
            config.object_mask_threshold,
            config.overlap_threshold,
        )
        return PanopticResult(*panoptic, label_map=label_map)
    masks = resize_mask_logits(mask_logits, padded_size, image_size, output_size)[0]
    if task == "semantic":
        scores = semantic_inference(class_logits, masks)
        return SemanticResult(scores.argmax(0), label_map=label_map)
    detections = instance_inference(
        class_logits, masks, num_classes, config.topk, thing_classes, config.score_threshold
    )
    return InstanceResult(**detections, label_map=label_map)


def _postprocess_in_strips(
    task: str, class_logits: Tensor, low: Tensor, output_size, label_map=None, **kw
) -> Result:
    """One image's result from `low` [Q, h, w] logits at the model's resolution, upsampled to
    `output_size` one strip of rows at a time (see the module docstring)."""
    height, width = output_size
    if task == "semantic":
        labels = torch.empty((height, width), dtype=torch.long, device=low.device)
        for start, stop in row_strips(height, len(low) * width * 4, STRIP_BYTES):
            strip = upsample_rows(low, output_size, start, stop)
            labels[start:stop] = semantic_inference(class_logits, strip).argmax(0)
        return SemanticResult(labels, label_map=label_map)
    if task == "instance":
        detections = _instance_in_strips(class_logits, low, output_size, **kw)
        masks = QueryMasks(detections.pop("query_masks"), detections.pop("mask_index"))
        return InstanceResult(masks=masks, **detections, label_map=label_map)
    segment_ids, segments = _panoptic_in_strips(class_logits, low, output_size, **kw)
    return PanopticResult(segment_ids, segments, label_map=label_map)


def _instance_in_strips(
    class_logits, low, output_size, *, num_classes, thing_classes, topk, score_threshold, **_
) -> dict[str, Tensor]:
    """`instance_inference` for a large output: one full-size mask per query kept, in
    `query_masks` [U, H, W] bool, and `mask_index` [N] (detection -> row of query_masks)
    instead of `masks` [N, H, W]."""
    pair_scores, labels, queries = _top_pairs(
        class_logits, num_classes, topk, score_threshold, thing_classes
    )
    unique, mask_index = torch.unique(queries, sorted=True, return_inverse=True)
    height, width = output_size
    query_masks = torch.empty((len(unique), height, width), dtype=torch.bool, device=low.device)
    inside = torch.zeros(len(unique), dtype=torch.float32, device=low.device)
    area = torch.zeros(len(unique), dtype=torch.float32, device=low.device)
    for start, stop in row_strips(height, max(len(unique), 1) * width * 4, STRIP_BYTES):
        logits = upsample_rows(low[unique], output_size, start, stop)  # [U, rows, W]
        masks = logits > 0
        query_masks[:, start:stop] = masks
        inside += (logits.sigmoid() * masks).flatten(1).sum(1)
        area += masks.flatten(1).sum(1)
    mask_scores = inside / (area + 1e-6)
    return {
        "query_masks": query_masks,
        "mask_index": mask_index,
        "scores": pair_scores * mask_scores[mask_index],
        "labels": labels,
        "queries": queries,
    }


def _panoptic_in_strips(
    class_logits,
    low,
    output_size,
    *,
    num_classes,
    isthing,
    object_mask_threshold,
    overlap_threshold,
    **_,
) -> tuple[Tensor, list[dict]]:
    """`panoptic_inference` for a large output, in two passes over strips of rows: the areas
    that decide which queries survive, then the segment map."""
    _check_num_classes(class_logits, num_classes)
    height, width = output_size
    segment_ids = torch.zeros((height, width), dtype=torch.int32, device=low.device)
    scores, labels = class_logits.softmax(-1).max(-1)  # [Q]
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    scores, labels, kept = scores[keep], labels[keep], low[keep]
    n = len(scores)
    if n == 0:
        return segment_ids, []
    strips = list(row_strips(height, n * width * 4, STRIP_BYTES))

    def winners(start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        mask_probs = upsample_rows(kept, output_size, start, stop).sigmoid()  # [N, rows, W]
        winner = (scores[:, None, None] * mask_probs).argmax(0)  # [rows, W]
        own = mask_probs.gather(0, winner[None])[0] >= 0.5
        return mask_probs, winner, own

    won_area = torch.zeros(n, dtype=torch.long, device=low.device)
    own_area = torch.zeros(n, dtype=torch.long, device=low.device)
    final_area = torch.zeros(n, dtype=torch.long, device=low.device)
    for start, stop in strips:
        mask_probs, winner, own = winners(start, stop)
        won_area += torch.bincount(winner.flatten(), minlength=n)
        own_area += (mask_probs >= 0.5).flatten(1).sum(1)
        final_area += torch.bincount(winner[own], minlength=n)
    valid = (won_area > 0) & (own_area > 0) & (final_area > 0)
    ratio = won_area.cpu().double() / own_area.cpu().double().clamp(min=1)
    valid &= (ratio >= overlap_threshold).to(valid.device)
    query_to_segment, segments = _number_segments(
        valid, labels, scores, final_area, isthing, low.device
    )
    for start, stop in strips:
        _, winner, own = winners(start, stop)
        segment_ids[start:stop] = torch.where(own, query_to_segment[winner], 0)
    return segment_ids, segments


def _top_pairs(class_logits, num_classes, topk, score_threshold, thing_classes):
    """The top-k (query, class) pairs by class probability, less those under the threshold
    or of a stuff class: (scores [k'], labels [k'], queries [k'])."""
    _check_num_classes(class_logits, num_classes)
    class_probs = class_logits.softmax(-1)[:, :-1]  # [Q, K]
    k = min(topk, class_probs.numel())
    pair_scores, pair_indices = class_probs.flatten().topk(k)  # [Q, K] -> [Q*K] -> [k]
    labels, queries = pair_indices % num_classes, pair_indices // num_classes
    keep = torch.ones_like(pair_scores, dtype=torch.bool)
    if score_threshold is not None:
        keep &= pair_scores > score_threshold
    if thing_classes is not None:
        things = torch.as_tensor(thing_classes, dtype=labels.dtype, device=labels.device)
        keep &= torch.isin(labels, things)
    return pair_scores[keep], labels[keep], queries[keep]


def _check_num_classes(class_logits: Tensor, num_classes: int) -> None:
    if class_logits.shape[-1] != num_classes + 1:
        raise ValueError(
            f"class logits have {class_logits.shape[-1]} entries; expected num_classes + 1 = "
            f"{num_classes + 1} (the last is no-object)"
        )
