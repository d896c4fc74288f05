"""A picture as an exported graph's input batch: shared by export, INT8 calibration and TensorRT
calibration, so all three feed the graph the same way."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resized_batch(image: np.ndarray, height: int, width: int, batch: int) -> torch.Tensor:
    """[batch, 3, height, width] uint8 of `image` resized bilinearly (copies for a batch)."""
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return tensor[None].expand(max(batch, 1), -1, -1, -1).contiguous()
