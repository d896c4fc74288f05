"""OneFormer (and Mask2Former): backbone -> pixel decoder -> task-conditioned transformer decoder.

One set of weights serves semantic, instance and panoptic segmentation; the task is chosen by
the task token, an MLP over the CLIP token ids of the task prompt (`task_text`, by default
"The task is {task}") read as numbers. With
`arch="mask2former"` the task MLP, query transformer and text branch are absent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from oneseg.model.backbone import Backbone
from oneseg.model.layers import MLP
from oneseg.model.pixel_decoder import PixelDecoder
from oneseg.model.text_encoder import TextQueries
from oneseg.model.transformer_decoder import TransformerDecoder


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
    ):
        """task_mlp, text_queries: OneFormer parts; both None for Mask2Former.
        task_text: the prompt template whose token ids the task MLP was trained on."""
        super().__init__()
        self.arch = "mask2former" if task_mlp is None else "oneformer"
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

    def forward(
        self,
        images: torch.Tensor,
        task_tokens: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
    ) -> dict:
        """
        Arguments:
            images: [B, 3, H, W] normalised, H and W multiples of `size_divisibility`.
            task_tokens: [B, task_seq_len] CLIP ids of the task text (OneFormer; required).
            text_tokens: [B, T, context_length] ids of the text lists (training, OneFormer).
        Returns a dict:
            "pred_logits": [B, Q, K+1] class logits, the last class being no-object;
            "pred_masks": [B, Q, H/4, W/4] mask logits;
            "aux_outputs": list of {"pred_logits", "pred_masks"}, every earlier prediction in
                order (the one before the first decoder layer first);
            with text_tokens also "contrastive_logits" [B, Q, D] (the task-conditioned queries
                before the first decoder layer), "texts" [B, T + n_ctx, D] and "logit_scale"
                (scalar, log of the inverse temperature).
        """
        task_token = None
        if self.task_mlp is not None:
            if task_tokens is None:
                raise ValueError("OneFormer needs task_tokens [B, task_seq_len]")
            task_token = self.task_mlp(task_tokens.to(images.dtype))  # ids read as numbers
        elif task_tokens is not None or text_tokens is not None:
            raise ValueError("a mask2former model takes no task or text tokens")
        maps = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder(maps)
        out = self.decoder(multi_scale, mask_features, task_token)
        queries = out.pop("queries")
        if text_tokens is not None:
            out["contrastive_logits"] = queries
            out["texts"] = self.text_queries(text_tokens)
            out["logit_scale"] = self.logit_scale
        return out
