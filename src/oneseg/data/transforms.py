"""Geometric and photometric augmentation of an image and its segment map together.

Every geometric step (resize, crop, pad, flip) is applied to the RGB image and to the segment
map of the same sample with the same parameters, the map with nearest-neighbour resampling, so
target masks derived from the map afterwards cover exactly the pixels they covered before.
Photometric jitter touches the image only. A transform returns the image, the map and the size
of the real content: large-scale jitter pads up to the crop size, and that padding is no image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 0  # image value of padding; the map pads with void (0) and the batch marks it


@dataclass
class Transformed:
    image: np.ndarray  # [H, W, 3] uint8
    segment_map: np.ndarray  # [H, W] int32
    image_size: tuple[int, int]  # (h, w) of the real content at the top-left of `image`


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(h, w) with the shorter side at `short` and the longer at most `max_size`."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize(image: np.ndarray, segment_map: np.ndarray, size: tuple[int, int]):
    """Both to (h, w): bilinear for the image, nearest for the ids."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image, segment_map
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    ids = Image.fromarray(segment_map.astype(np.int32, copy=False))
    segment_map = np.asarray(ids.resize((width, height), Image.NEAREST)).astype(np.int32)
    return image, segment_map


def random_crop(
    image: np.ndarray, segment_map: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
):
    """A random window of at most `crop` (h, w); smaller inputs stay whole on that side."""
    height, width = segment_map.shape
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    return image[window], segment_map[window]


def pad_to(image: np.ndarray, segment_map: np.ndarray, size: tuple[int, int]):
    """Pad bottom and right up to (h, w): the image with PAD_VALUE, the map with void."""
    height, width = segment_map.shape
    if (height, width) == tuple(size):
        return image, segment_map
    padded_image = np.full((size[0], size[1], 3), PAD_VALUE, dtype=np.uint8)
    padded_image[:height, :width] = image
    padded_map = np.zeros(size, dtype=np.int32)
    padded_map[:height, :width] = segment_map
    return padded_image, padded_map


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1-s, 1+s], in random
    order, as torchvision's ColorJitter does."""
    if strength <= 0:
        return image
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    out = image.astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for op in rng.permutation(3):
        factor = np.float32(rng.uniform(low, high))
        if op == 0:  # brightness: blend with black
            out *= factor
        elif op == 1:  # contrast: blend with the mean gray level
            mean = np.float32((out @ luma).mean())
            out = (out - mean) * factor + mean
        else:  # saturation: blend with the gray image
            gray = (out @ luma)[..., None]
            out = (out - gray) * factor + gray
        np.clip(out, 0, 255, out=out)
    return np.rint(out).astype(np.uint8)


class TrainTransform:
    """Training augmentation.

    Arguments:
        min_sizes: shortest-edge sizes to choose from (ignored with `lsj`).
        max_size: longest edge after the shortest-edge resize.
        crop_size: (h, w) of the random crop; None for no crop. Required by `lsj`.
        lsj: large-scale jitter: scale to a random fraction `lsj_scale` of the crop size
            (aspect kept), then crop and pad to exactly the crop size.
        lsj_scale: (low, high) of that fraction.
        hflip: probability of a horizontal flip.
        color_jitter: strength of the brightness/contrast/saturation jitter; 0 = off.
    """

    def __init__(
        self,
        min_sizes: list[int],
        max_size: int,
        crop_size: tuple[int, int] | None,
        lsj: bool = False,
        lsj_scale: tuple[float, float] = (0.1, 2.0),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
    ):
        if lsj and not crop_size:
            raise ValueError("large-scale jitter needs a crop size")
        if not lsj and not min_sizes:
            raise ValueError("train_min_size must list at least one size")
        self.min_sizes = list(min_sizes)
        self.max_size = max_size
        self.crop_size = tuple(crop_size) if crop_size else None
        self.lsj = lsj
        self.lsj_scale = (float(lsj_scale[0]), float(lsj_scale[1]))
        self.hflip = hflip
        self.color_jitter = color_jitter

    def __call__(
        self, image: np.ndarray, segment_map: np.ndarray, rng: np.random.Generator
    ) -> Transformed:
        height, width = segment_map.shape
        if self.lsj:
            scale = rng.uniform(*self.lsj_scale)
            fit = min(self.crop_size[0] * scale / height, self.crop_size[1] * scale / width)
            size = (max(1, int(height * fit + 0.5)), max(1, int(width * fit + 0.5)))
        else:
            short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
            size = shortest_edge_size(height, width, short, self.max_size)
        image, segment_map = resize(image, segment_map, size)
        if self.crop_size:
            image, segment_map = random_crop(image, segment_map, self.crop_size, rng)
        content = segment_map.shape
        if self.lsj:
            image, segment_map = pad_to(image, segment_map, self.crop_size)
        image, segment_map = np.array(image), np.array(segment_map)  # writable copies
        h, w = content
        if rng.random() < self.hflip:
            # the content stays top-left: flip it alone, not the padding
            image[:h, :w] = image[:h, :w][:, ::-1]
            segment_map[:h, :w] = segment_map[:h, :w][:, ::-1]
        image[:h, :w] = color_jitter(image[:h, :w], self.color_jitter, rng)
        return Transformed(image, segment_map, (int(content[0]), int(content[1])))


class EvalTransform:
    """Evaluation resize: shortest edge to `min_size`, longest at most `max_size`;
    `min_size` 0 keeps the image as it is."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size = min_size
        self.max_size = max_size

    def __call__(
        self, image: np.ndarray, segment_map: np.ndarray, rng: np.random.Generator | None = None
    ) -> Transformed:
        if self.min_size <= 0:
            return Transformed(image, segment_map, segment_map.shape)
        size = shortest_edge_size(*segment_map.shape, self.min_size, self.max_size)
        image, segment_map = resize(image, segment_map, size)
        return Transformed(image, segment_map, size)
