"""OneFormer (and Mask2Former): backbone -> pixel decoder -> task-conditioned transformer decoder.

One set of weights serves semantic, instance and panoptic segmentation; the task is chosen by
the task token, an MLP over the CLIP token ids of the task prompt (`task_text`, by default
"The task is {task}") read as numbers. Mask2Former is the same network without the task MLP,
the task-conditioned queries and the text branch.

`predict(images_uint8, tasks)` is the one inference call (the evaluator, `Predictor` and the
exporter use it): it normalises, pads, runs the backbone and pixel decoder once and the
transformer decoder once per task, and returns the raw outputs that
`oneseg.model.postprocess` turns into results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from oneseg.constants import TASKS
from oneseg.model.backbone import Backbone
from oneseg.model.layers import MLP
from oneseg.model.pixel_decoder import PixelDecoder
from oneseg.model.text_encoder import TextQueries
from oneseg.model.transformer_decoder import TransformerDecoder
from oneseg.precision import autocast, full_precision


@dataclass
class Prediction:
    """Raw outputs of `OneFormer.predict` for a batch, before post-processing.

    outputs: task -> {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, Hp/4, Wp/4]}, float32.
    image_sizes: B x (h, w), the content of each image at the top-left of the input.
    padded_size: (Hp, Wp), the input size the network saw (multiples of size_divisibility).
    """

    outputs: dict[str, dict[str, torch.Tensor]]
    image_sizes: list[tuple[int, int]]
    padded_size: tuple[int, int]


class OneFormer(nn.Module):
    """The segmentation network. Constructed from built parts; see `oneseg.model.build`."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        pixel_decoder: PixelDecoder,
        decoder: TransformerDecoder,
        task_mlp: MLP | None,
        text_queries: TextQueries | None,
        num_classes: int,
        num_queries: int,
        size_divisibility: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        contrastive_temperature: float = 0.07,
        task_text: str = "The task is {task}",
        task_token_ids: torch.Tensor | None = None,
    ):
        """task_mlp, text_queries: OneFormer parts; both None for Mask2Former.
        task_text: the prompt template whose token ids the task MLP was trained on.
        task_token_ids: [len(TASKS), task_seq_len] the ids of `task_text` for each task, in
            `TASKS` order (OneFormer); `predict` reads its task tokens from these rows."""
        super().__init__()
        if (task_mlp is None) != (task_token_ids is None):
            raise ValueError("task_mlp and task_token_ids come together (OneFormer) or not at all")
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.task_mlp = task_mlp
        self.decoder = decoder
        self.text_queries = text_queries
        if text_queries is not None:
            # log of the inverse temperature; the criterion takes exp and caps it
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / contrastive_temperature)))
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.size_divisibility = size_divisibility
        self.task_text = task_text
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)
        if task_token_ids is not None:
            if task_token_ids.shape[0] != len(TASKS):
                raise ValueError(f"task_token_ids needs one row per task {TASKS}")
            # derived from task_text, so not saved: checkpoints stay as they were
            self.register_buffer("task_token_ids", task_token_ids.clone(), persistent=False)

    @property
    def task_conditioned(self) -> bool:
        """Whether the outputs depend on a task token (OneFormer) or not (Mask2Former)."""
        return self.task_mlp is not None

    def normalize(
        self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> torch.Tensor:
        """[B, 3, H, W] RGB on the 0-255 scale -> normalised input for `forward`.

        image_sizes: (h, w) of the real content at the top-left of each image; everything
        outside it is padding and becomes 0 after normalisation (the mean colour), as the
        original and transformers' processor pad, rather than black (about -2 sigma)."""
        normalized = (images - self.pixel_mean) / self.pixel_std
        if image_sizes is None:
            return normalized
        height, width = images.shape[-2:]
        rows = torch.arange(height, device=images.device)
        cols = torch.arange(width, device=images.device)
        sizes = torch.as_tensor(image_sizes, device=images.device).view(-1, 2)  # [B, 2]
        # [B, H, 1] & [B, 1, W] -> [B, 1, H, W], True on content
        content = (rows[None, :, None] < sizes[:, 0, None, None]) & (
            cols[None, None, :] < sizes[:, 1, None, None]
        )
        return normalized * content[:, None].to(normalized.dtype)

    def preprocess(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """RGB 0-255 images -> (normalised input [B, 3, Hp, Wp], content sizes).

        Arguments:
            images: [B, 3, H, W] (any dtype; uint8 as read) or a list of [3, H_i, W_i].
            image_sizes: with a batch tensor, the (h, w) of each image's content at its
                top-left (the rest is padding); default the whole tensor.
        Hp, Wp are the largest sizes rounded up to `size_divisibility`; everything outside an
        image's content is 0 after normalisation (the mean colour), as the original pads.
        """
        if isinstance(images, torch.Tensor):
            batch = images
            sizes = [tuple(images.shape[-2:])] * len(images) if image_sizes is None else None
        else:
            sizes = [tuple(image.shape[-2:]) for image in images]
            height, width = (max(s[i] for s in sizes) for i in (0, 1))
            batch = images[0].new_zeros((len(images), 3, height, width))
            for i, image in enumerate(images):
                batch[i, :, : image.shape[-2], : image.shape[-1]] = image
        if sizes is None:
            sizes = [tuple(s) for s in image_sizes]
        sizes = [(int(h), int(w)) for h, w in sizes]
        div = max(1, self.size_divisibility)
        height, width = batch.shape[-2:]
        pad_h, pad_w = -height % div, -width % div
        normalized = self.normalize(batch.to(self.pixel_mean.dtype), sizes)
        if pad_h or pad_w:  # [B, 3, H, W] -> [B, 3, Hp, Wp], zeros after normalisation
            normalized = nn.functional.pad(normalized, (0, pad_w, 0, pad_h))
        return normalized, sizes

    def task_token(self, task: str, batch: int) -> torch.Tensor:
        """[batch, D] the task token of `task` from the stored ids (OneFormer only)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        ids = self.task_token_ids[TASKS.index(task)][None]  # [1, task_seq_len]
        return self.task_mlp_fp32(ids.to(self.pixel_mean.dtype)).expand(batch, -1)

    def task_mlp_fp32(self, ids: torch.Tensor) -> torch.Tensor:
        """The task MLP on token ids read as numbers [B, task_seq_len] -> [B, D], outside any
        autocast: bf16 holds 8 significant bits and would round id 49406 to 49408."""
        with full_precision(ids):
            return self.task_mlp(ids.to(self.pixel_mean.dtype))

    def forward_tasks(
        self, images: torch.Tensor, tasks: Sequence[str] = ("panoptic",)
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The final predictions of each task for normalised, padded `images` [B, 3, Hp, Wp].

        The backbone and pixel decoder run once; the transformer decoder runs once per task
        (the task token enters there), once in all for Mask2Former, which has no task input.
        Returns task -> {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, Hp/4, Wp/4]}."""
        mask_features, multi_scale = self.pixel_decoder(self.backbone(images))
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        shared = None
        for task in dict.fromkeys(tasks):
            if self.task_conditioned:
                token = self.task_token(task, len(images))
                out = self.decoder(multi_scale, mask_features, token, aux=False)
            else:
                if shared is None:
                    shared = self.decoder(multi_scale, mask_features, None, aux=False)
                out = shared
            outputs[task] = {"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}
        return outputs

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        tasks: Sequence[str] = ("panoptic",),
        image_sizes: Sequence[tuple[int, int]] | None = None,
        precision: str = "fp32",
    ) -> Prediction:
        """Raw outputs of each task for RGB 0-255 `images` (see `preprocess`), on the model's
        device, in float32; `oneseg.model.postprocess.postprocess_batch` makes results.

        precision: "fp32", "bf16" or "fp16", the forward's (`oneseg.precision`; "auto" is
        resolved by `choose_precision` first); the outputs are float32 in every case."""
        normalized, sizes = self.preprocess(images, image_sizes)
        with autocast(precision, normalized.device):
            outputs = self.forward_tasks(normalized, tasks)
        outputs = {t: {k: v.float() for k, v in out.items()} for t, out in outputs.items()}
        return Prediction(outputs, sizes, (int(normalized.shape[-2]), int(normalized.shape[-1])))

    def forward(
        self,
        images: torch.Tensor,
        task_tokens: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        aux: bool = True,
    ) -> dict:
        """
        Arguments:
            images: [B, 3, H, W] normalised, H and W multiples of `size_divisibility`.
            task_tokens: [B, task_seq_len] CLIP ids of the task text (OneFormer; required).
            text_tokens: [B, T, context_length] ids of the text lists (training, OneFormer).
            aux: return the earlier layers' predictions; inference wants only the last, and
                without them the earlier layers skip their full-size masks.
        Returns a dict:
            "pred_logits": [B, Q, K+1] class logits, the last class being no-object;
            "pred_masks": [B, Q, H/4, W/4] mask logits;
            "aux_outputs": list of {"pred_logits", "pred_masks"}, every earlier prediction in
                order (the one before the first decoder layer first); empty without `aux`;
            with text_tokens also "contrastive_logits" [B, Q, D] (the task-conditioned queries
                before the first decoder layer), "texts" [B, T + n_ctx, D] and "logit_scale"
                (scalar, log of the inverse temperature).
        """
        task_token = None
        if self.task_mlp is not None:
            if task_tokens is None:
                raise ValueError("OneFormer needs task_tokens [B, task_seq_len]")
            task_token = self.task_mlp_fp32(task_tokens)
        elif task_tokens is not None or text_tokens is not None:
            raise ValueError("a mask2former model takes no task or text tokens")
        maps = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder(maps)
        out = self.decoder(multi_scale, mask_features, task_token, aux=aux)
        queries = out.pop("queries")
        if text_tokens is not None:
            out["contrastive_logits"] = queries
            out["texts"] = self.text_queries(text_tokens)
            out["logit_scale"] = self.logit_scale
        return out
