"""Batching samples of different sizes: pad to a common, divisible size.

The batch a data loader yields (B images, padded to Hp x Wp, multiples of `size_divisibility`):
    images        uint8 [B, 3, Hp, Wp], 0-255 RGB; what lies outside `image_sizes` is padding,
                  which the model sets to 0 after normalisation (`normalize(images, sizes)`)
    pixel_mask    bool [B, Hp, Wp], True on real image pixels
    targets       list of B dicts:
                      masks        bool [N_i, Hp, Wp], zero padding
                      labels       int64 [N_i]
                      ignore_mask  bool [Hp, Wp], True on void, crowd and padding
    task_tokens   int64 [B, 77]     (OneFormer samples only)
    text_tokens   int64 [B, T, 77]  (OneFormer samples only)
    tasks         list of B task names
    image_ids, file_names, orig_sizes (h, w), image_sizes (h, w): lists of B
"""

from __future__ import annotations

import torch


def padded_size(sizes: list[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """The smallest (h, w) holding every size, rounded up to a multiple of the divisor."""
    div = max(1, size_divisibility)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return -(-height // div) * div, -(-width // div) * div


class Collator:
    """`collate_fn` for the data loader (a class, so worker processes can pickle it)."""

    def __init__(self, size_divisibility: int = 32):
        self.size_divisibility = size_divisibility

    def __call__(self, samples: list[dict]) -> dict:
        height, width = padded_size(
            [s["image"].shape[-2:] for s in samples], self.size_divisibility
        )
        batch = len(samples)
        images = torch.zeros(batch, 3, height, width, dtype=samples[0]["image"].dtype)
        pixel_mask = torch.zeros(batch, height, width, dtype=torch.bool)
        targets = []
        for i, sample in enumerate(samples):
            h, w = sample["image"].shape[-2:]
            images[i, :, :h, :w] = sample["image"]
            content_h, content_w = sample["image_size"]
            pixel_mask[i, :content_h, :content_w] = True
            masks = torch.zeros(len(sample["masks"]), height, width, dtype=torch.bool)
            masks[:, :h, :w] = sample["masks"]
            ignore = torch.ones(height, width, dtype=torch.bool)
            ignore[:h, :w] = sample["ignore_mask"]
            targets.append({"masks": masks, "labels": sample["labels"], "ignore_mask": ignore})
        batched = {
            "images": images,
            "pixel_mask": pixel_mask,
            "targets": targets,
            "tasks": [s["task"] for s in samples],
            "image_ids": [s["image_id"] for s in samples],
            "file_names": [s["file_name"] for s in samples],
            "orig_sizes": [s["orig_size"] for s in samples],
            "image_sizes": [s["image_size"] for s in samples],
        }
        for key in ("task_tokens", "text_tokens"):
            if key in samples[0]:
                batched[key] = torch.stack([s[key] for s in samples])
        return batched
