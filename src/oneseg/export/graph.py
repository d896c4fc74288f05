"""The exported graph: uint8 images in, post-processed results out, one task baked in.

`ExportGraph` wraps a OneFormer (or Mask2Former) for tracing, as SAM's ONNX wrapper sits beside
its model: the model stays as it is, and everything a deployed model needs around it lives here.
Normalisation and the task token are inside the graph; the post-processing of
`oneseg.model.postprocess` is written again with fixed-size outputs (no data-dependent shapes),
so that an ONNX or TensorRT runtime can run it and its results equal PyTorch's.

Outputs, per task (B images of H x W, the input size):
    semantic:  "semantic_map" [B, H, W] int64 class ids (+ "semantic_probs" [B, K, H, W]);
    instance:  "pred_classes" [B, T] int64 (-1: dropped, not a thing class), "pred_scores" [B, T],
               "pred_masks" [B, T, H, W] bool: the top-T (query, class) pairs;
    panoptic:  "panoptic_map" [B, H, W] int32 segment index (0 = void), "pred_classes" [B, S]
               (-1 past the valid ones), "pred_scores" [B, S], "num_segments" [B] int64;
               S = the number of queries, which no image can exceed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUTPUTS = {
    "semantic": ("semantic_map",),
    "instance": ("pred_classes", "pred_scores", "pred_masks"),
    "panoptic": ("panoptic_map", "pred_classes", "pred_scores", "num_segments"),
}


class _ResizeQueriesLast(torch.autograd.Function):
    """Bilinear resize of [B, h, w, Q] maps to [B, H, W, Q] (align_corners=False).

    PyTorch resizes the channels-last view of the maps; the TorchScript exporter writes one
    ONNX Resize over axes 1 and 2 (ONNX Runtime has a fast kernel for that layout) instead of
    a Resize over [B, Q, H, W] and a transpose of the full-size result."""

    @staticmethod
    def forward(ctx, maps: Tensor, height: int, width: int) -> Tensor:
        resized = F.interpolate(
            maps.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False
        )
        return resized.permute(0, 2, 3, 1)

    @staticmethod
    def symbolic(g, maps, height: int, width: int):
        def const(values, dtype=torch.int64):
            return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

        shape = g.op("Shape", maps)
        batch = g.op("Slice", shape, const([0]), const([1]))
        queries = g.op("Slice", shape, const([3]), const([4]))
        sizes = g.op("Concat", batch, const([height, width]), queries, axis_i=0)
        empty = const([], torch.float32)
        return g.op(
            "Resize",
            maps,
            empty,
            empty,
            sizes,
            mode_s="linear",
            coordinate_transformation_mode_s="pytorch_half_pixel",
        )


def resize_queries_last(mask_logits: Tensor, size) -> Tensor:
    """[B, Q, h, w] mask logits -> [B, H, W, Q] at `size`, bilinearly."""
    low = mask_logits.permute(0, 2, 3, 1)  # [B, h, w, Q]
    if torch.jit.is_tracing():
        return _ResizeQueriesLast.apply(low, int(size[0]), int(size[1]))  # a fixed-size export
    resized = F.interpolate(
        mask_logits.contiguous(memory_format=torch.channels_last),
        size=size,
        mode="bilinear",
        align_corners=False,
    )
    return resized.permute(0, 2, 3, 1)


class ExportGraph(nn.Module):
    """A model with its input preparation and one task's post-processing, ready to trace.

    Arguments:
        model: a OneFormer or Mask2Former network in eval mode.
        task: "semantic", "instance" or "panoptic".
        isthing: [K] thing flag of each class (instance drops non-things, panoptic merges stuff).
        task_tokens: [task_seq_len] CLIP ids of the task text (OneFormer); None for Mask2Former.
        topk: instance detections per image (T), capped at Q*K.
        object_mask_threshold, overlap_threshold: panoptic thresholds (see `postprocess`).
        semantic_probs: also output the per-class score maps of the semantic task.
        require_own_mask: panoptic pixel rule of OneFormer (see `panoptic_inference`).
    """

    def __init__(
        self,
        model: nn.Module,
        task: str,
        *,
        isthing: list[bool],
        task_tokens: Tensor | None,
        topk: int = 150,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        semantic_probs: bool = False,
        require_own_mask: bool = True,
    ):
        super().__init__()
        if task not in OUTPUTS:
            raise ValueError(f"task must be one of {list(OUTPUTS)}, got {task!r}")
        self.model = model
        self.task = task
        self.num_classes = len(isthing)
        self.topk = min(topk, model.num_queries * self.num_classes)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.semantic_probs = semantic_probs
        self.require_own_mask = require_own_mask
        self.register_buffer("isthing", torch.tensor(isthing, dtype=torch.bool), persistent=False)
        tokens = None if task_tokens is None else task_tokens.reshape(1, -1).float()
        self.register_buffer("task_tokens", tokens, persistent=False)

    @property
    def output_names(self) -> list[str]:
        names = list(OUTPUTS[self.task])
        if self.task == "semantic" and self.semantic_probs:
            names.append("semantic_probs")
        return names

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """images: [B, 3, H, W] uint8 RGB, H and W multiples of the model's size divisibility."""
        batch = images.shape[0]
        normalized = self.model.normalize(images.float())
        tokens = None if self.task_tokens is None else self.task_tokens.expand(batch, -1)
        out = self.model(normalized, tokens, aux=False)
        class_logits = out["pred_logits"]  # [B, Q, K+1]
        size = images.shape[-2:]  # symbolic in a dynamic-size export
        if self.task == "instance":
            # [B, Q, H/4, W/4] -> [B, Q, H, W]
            mask_logits = F.interpolate(
                out["pred_masks"], size=size, mode="bilinear", align_corners=False
            )
            return self._instance(class_logits, mask_logits)
        # The other two reduce over the queries at every pixel: with the queries last
        # ([B, H, W, Q]) ONNX Runtime resizes, reduces and arg-maxes several times faster than
        # over the second axis of [B, Q, H, W].
        mask_logits = resize_queries_last(out["pred_masks"], size)
        if self.task == "semantic":
            return self._semantic(class_logits, mask_logits)
        return self._panoptic(class_logits, mask_logits)

    def _semantic(self, class_logits: Tensor, mask_logits: Tensor) -> tuple[Tensor, ...]:
        """mask_logits: [B, H, W, Q]."""
        class_probs = class_logits.softmax(-1)[..., :-1]  # [B, Q, K]
        batch, height, width, _ = mask_logits.shape
        # [B, HW, Q] x [B, Q, K] -> [B, H, W, K]
        scores = torch.matmul(mask_logits.sigmoid().flatten(1, 2), class_probs)
        scores = scores.view(batch, height, width, -1)
        semantic_map = scores.argmax(-1)  # [B, H, W]
        if not self.semantic_probs:
            return (semantic_map,)
        return semantic_map, scores.permute(0, 3, 1, 2)  # [B, K, H, W]

    def _instance(self, class_logits: Tensor, mask_logits: Tensor) -> tuple[Tensor, ...]:
        num_classes = self.num_classes
        class_probs = class_logits.softmax(-1)[..., :-1]  # [B, Q, K]
        # [B, Q, K] -> [B, Q*K] -> [B, T]
        pair_scores, pair_indices = class_probs.flatten(1).topk(self.topk, dim=1)
        labels = pair_indices % num_classes
        queries = pair_indices // num_classes
        height, width = mask_logits.shape[-2:]
        index = queries[:, :, None, None].expand(-1, -1, height, width)
        logits = mask_logits.gather(1, index)  # [B, T, H, W]
        masks = logits > 0
        inside = masks.to(logits.dtype)
        probs_inside = (logits.sigmoid() * inside).flatten(2).sum(2)  # [B, T]
        mask_scores = probs_inside / (inside.flatten(2).sum(2) + 1e-6)
        keep = self.isthing[labels]
        scores = torch.where(keep, pair_scores * mask_scores, torch.zeros_like(pair_scores))
        classes = torch.where(keep, labels, torch.full_like(labels, -1))
        return classes, scores, masks

    def _panoptic(self, class_logits: Tensor, mask_logits: Tensor) -> tuple[Tensor, ...]:
        """mask_logits: [B, H, W, Q]."""
        num_classes = self.num_classes
        num_queries = class_logits.shape[1]
        scores, labels = class_logits.softmax(-1).max(-1)  # [B, Q]
        keep = (labels != num_classes) & (scores > self.object_mask_threshold)
        mask_probs = mask_logits.sigmoid()  # [B, H, W, Q]
        # The pixel's winner among the queries that take part: score x probability, in [0, 1].
        # The others are moved to [-2, -1] by one multiply-add (two passes where a select on a
        # broadcast condition is a slow third), so they win no pixel while any query takes
        # part, and ties stay with the first query as in `postprocess`.
        gain = torch.where(keep, scores, torch.ones_like(scores))[:, None, None, :]
        offset = torch.where(keep, torch.zeros_like(scores), -2.0)[:, None, None, :]
        winner = (mask_probs * gain + offset).argmax(-1)  # [B, H, W]
        if self.require_own_mask:
            own = mask_probs.gather(-1, winner[..., None])[..., 0] >= 0.5  # [B, H, W]
        else:
            own = torch.ones_like(winner, dtype=torch.bool)
        # Areas as histograms of the winners (a scatter-add over H*W pixels) rather than as
        # sums of [B, H, W, Q] one-hot maps; floats count exactly up to 2**24 pixels.
        dtype = mask_probs.dtype
        flat = winner.flatten(1)  # [B, HW]
        won_area = torch.zeros_like(scores).scatter_add(1, flat, torch.ones_like(flat, dtype=dtype))
        final_area = torch.zeros_like(scores).scatter_add(1, flat, own.flatten(1).to(dtype))
        # a product with ones: ONNX Runtime sums over the pixel axes of [B, HW, Q] ~8x slower
        inside = (mask_probs >= 0.5).to(dtype).flatten(1, 2)  # [B, HW, Q]
        ones = torch.ones(1, inside.shape[1], dtype=dtype, device=inside.device)
        own_area = torch.matmul(ones, inside)[:, 0]  # [B, Q]
        ratio = won_area / own_area.clamp(min=1)
        valid = keep & (won_area > 0) & (own_area > 0) & (final_area > 0)
        valid = valid & (ratio >= self.overlap_threshold)

        # A valid query opens a new segment unless it is stuff and an earlier valid query has
        # its class; segments are numbered from 1 in query order.
        thing = self.isthing[labels.clamp(max=num_classes - 1)]  # [B, Q]
        same_label = labels[:, :, None] == labels[:, None, :]  # [B, Q, Q]: [q, p]
        earlier = torch.ones(num_queries, num_queries, device=labels.device).tril(-1).bool()
        seen = (same_label & earlier & valid[:, None, :]).any(-1)  # [B, Q]
        opens = valid & (thing | ~seen)
        opened_id = opens.long().cumsum(1) * opens  # [B, Q], 0 where none is opened
        # stuff queries take the id of the query that opened their class's segment
        stuff_id = (same_label & opens[:, None, :]).long() * opened_id[:, None, :]
        query_segment = torch.where(thing, opened_id, stuff_id.amax(-1)) * valid  # [B, Q]
        panoptic_map = query_segment.gather(1, winner.flatten(1)).view_as(winner)
        panoptic_map = torch.where(own, panoptic_map, 0).int()

        slots = torch.arange(1, num_queries + 1, device=labels.device)
        members = query_segment[:, None, :] == slots[None, :, None]  # [B, S, Q]
        present = members.any(-1)
        segment_scores = (scores[:, None, :] * members).amax(-1)  # [B, S]
        segment_classes = torch.where(present, (labels[:, None, :] * members).amax(-1), -1)
        return panoptic_map, segment_classes, segment_scores, opens.long().sum(1)
