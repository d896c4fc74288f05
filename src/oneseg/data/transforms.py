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
from PIL import Image, ImageStat

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
    return resize_window(image, segment_map, size, (0, 0, *size))


def crop_window(
    size: tuple[int, int], crop: tuple[int, int] | None, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w): a random window of at most `crop` inside `size`; the whole of `size`
    without a crop, or on a side shorter than the crop."""
    if not crop:
        return 0, 0, size[0], size[1]
    crop_h, crop_w = min(crop[0], size[0]), min(crop[1], size[1])
    top = int(rng.integers(0, size[0] - crop_h + 1))
    left = int(rng.integers(0, size[1] - crop_w + 1))
    return top, left, crop_h, crop_w


def resize_window(
    image: np.ndarray,
    segment_map: np.ndarray,
    size: tuple[int, int],
    window: tuple[int, int, int, int],
):
    """The `window` (top, left, h, w) of both resized to `size`, resampling only that window:
    the same pixels as resizing everything and cropping after, at a fraction of the cost."""
    height, width = segment_map.shape
    top, left, crop_h, crop_w = window
    if tuple(size) == (height, width):
        rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)
        return image[rows, cols], segment_map[rows, cols]
    scale_y, scale_x = height / size[0], width / size[1]
    box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
    image = Image.fromarray(image).resize((crop_w, crop_h), Image.BILINEAR, box=box)
    # nearest neighbour by index arithmetic: the same source pixel for an output pixel
    # whether the window is the whole image or a part of it
    rows = _nearest(top, crop_h, scale_y, height)
    cols = _nearest(left, crop_w, scale_x, width)
    return np.asarray(image), segment_map[rows[:, None], cols[None, :]].astype(np.int32)


def _nearest(start: int, count: int, scale: float, limit: int) -> np.ndarray:
    """Source index of output pixels start..start+count-1 (pixel centres, floored)."""
    index = ((np.arange(start, start + count) + 0.5) * scale).astype(np.int64)
    return np.minimum(index, limit - 1)


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
    order, as torchvision's ColorJitter does.

    Each step is an affine map of the RGB values (contrast blends with the mean gray level,
    which follows from the mean colour), so the three compose into one 3x4 matrix that PIL
    applies in a single pass; unlike torchvision, values are clipped once, at the end.
    """
    if strength <= 0 or image.size == 0:
        return image
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    luma = np.array([0.299, 0.587, 0.114])
    matrix, offset = np.eye(3), np.zeros(3)
    picture = Image.fromarray(image)
    mean_rgb = np.array(ImageStat.Stat(picture).mean)  # from histograms: fast on uint8
    for op in rng.permutation(3):
        factor = rng.uniform(low, high)
        if op == 0:  # brightness: blend with black
            step, shift = factor * np.eye(3), np.zeros(3)
        elif op == 1:  # contrast: blend with the mean gray level
            mean_gray = luma @ (matrix @ mean_rgb + offset)
            step, shift = factor * np.eye(3), np.full(3, (1 - factor) * mean_gray)
        else:  # saturation: blend with each pixel's gray level
            step, shift = factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), luma), 0.0
        matrix, offset = step @ matrix, step @ offset + shift
    coefficients = tuple(np.concatenate([matrix, offset[:, None]], axis=1).ravel().tolist())
    return np.asarray(picture.convert("RGB", matrix=coefficients))


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
        short_edge_scale: (low, high): the shortest edge is crop_size[0] x U(low, high) and the
            longest at most twice it, in place of `min_sizes` (TAO OneFormer's scaling).
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
        short_edge_scale: tuple[float, float] | None = None,
    ):
        if short_edge_scale and not crop_size:
            raise ValueError("short_edge_scale needs a crop size")
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
        self.short_edge_scale = tuple(short_edge_scale) if short_edge_scale else None

    def __call__(
        self, image: np.ndarray, segment_map: np.ndarray, rng: np.random.Generator
    ) -> Transformed:
        height, width = segment_map.shape
        if self.lsj:
            scale = rng.uniform(*self.lsj_scale)
            fit = min(self.crop_size[0] * scale / height, self.crop_size[1] * scale / width)
            size = (max(1, int(height * fit + 0.5)), max(1, int(width * fit + 0.5)))
        elif self.short_edge_scale:
            short = max(1, int(self.crop_size[0] * rng.uniform(*self.short_edge_scale)))
            size = shortest_edge_size(height, width, short, 2 * short)
        else:
            short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
            size = shortest_edge_size(height, width, short, self.max_size)
        window = crop_window(size, self.crop_size, rng)
        image, segment_map = resize_window(image, segment_map, size, window)
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


def eval_size(
    height: int, width: int, min_size: int, max_size: int, resize: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(h, w) an image is evaluated at: shortest edge `min_size`, longest at most `max_size`,
    taken from `resize` (h, w) instead of the image's own size when given (the image is first
    stretched to it, as TAO OneFormer's `image_size` does)."""
    if resize:
        height, width = resize
    return shortest_edge_size(height, width, min_size, max_size)


class EvalTransform:
    """Evaluation resize: shortest edge to `min_size`, longest at most `max_size`;
    `min_size` 0 keeps the image as it is. `resize` (h, w): the aspect of that size instead of
    the image's (see `eval_size`)."""

    def __init__(self, min_size: int, max_size: int, resize: tuple[int, int] | None = None):
        self.min_size = min_size
        self.max_size = max_size
        self.resize = tuple(resize) if resize else None

    def __call__(
        self, image: np.ndarray, segment_map: np.ndarray, rng: np.random.Generator | None = None
    ) -> Transformed:
        if self.min_size <= 0:
            return Transformed(image, segment_map, segment_map.shape)
        size = eval_size(*segment_map.shape, self.min_size, self.max_size, self.resize)
        image, segment_map = resize(image, segment_map, size)
        return Transformed(image, segment_map, size)
