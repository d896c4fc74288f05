"""Overlay pictures of semantic, instance and panoptic results that a person can read.

Each region is tinted with its class colour (instances of one class get nearby but different
shades), outlined, and named in white on a dark box at its most interior point, the pixel
farthest from the region's border, so the name sits on the region even for rings and L shapes.

Every function takes `min_side`: a picture whose short side is smaller is enlarged by a whole
factor first (pixels repeated), so outlines and names stay readable on small images. A picture of
more than MAX_PIXELS is drawn on every s-th pixel (s whole), which bounds the memory drawing takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from oneseg.data.label_map import LabelMap

MAX_PIXELS = 16_000_000  # larger pictures are drawn on every s-th row and column
MAX_SIDE = 8192  # a small picture is enlarged at most to this side
TEXT_COLOR = (255, 255, 255)
TEXT_BOX_COLOR = (20, 20, 20)


@dataclass
class Region:
    mask: np.ndarray  # [H, W] bool
    color: tuple[int, int, int]
    text: str


def overlay_semantic(
    image: np.ndarray,
    label: np.ndarray,
    label_map: LabelMap,
    ignore_value: int = 255,
    alpha: float = 0.5,
    min_side: int = 0,
) -> np.ndarray:
    """Tint each class of a label map [H, W] (contiguous ids; `ignore_value` left as is)."""
    step = _step(image)
    image, label = np.asarray(image)[::step, ::step], _as_numpy(label)[::step, ::step]
    regions = []
    for value in np.unique(label):
        if value == ignore_value:
            continue
        if not 0 <= value < len(label_map):
            raise ValueError(f"label value {value} is not a class of the label map")
        regions.append(Region(label == value, label_map.colors[value], label_map.names[value]))
    return _draw(image, regions, alpha, min_side)


def overlay_instances(
    image: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    label_map: LabelMap,
    alpha: float = 0.5,
    score_threshold: float = 0.5,
    min_side: int = 0,
) -> np.ndarray:
    """Tint instance masks [N, H, W] whose score is at least `score_threshold`.

    Each is named "#index name score", index being its position in `masks`; larger instances
    are drawn first so that smaller ones in front of them stay visible.
    """
    if hasattr(masks, "detach") or isinstance(masks, (list, tuple)):
        masks = _as_numpy(masks)  # a sequence of [H, W] masks (an array, or QueryMasks) stays
    labels, scores = _as_numpy(labels), _as_numpy(scores)
    step = _step(image)
    image = np.asarray(image)[::step, ::step]
    shown = [np.asarray(masks[i], dtype=bool)[::step, ::step] for i in range(len(masks))]
    regions = []
    for index in np.argsort([-int(np.count_nonzero(m)) for m in shown], kind="stable"):
        if scores[index] < score_threshold or not shown[index].any():
            continue
        label = int(labels[index])
        color = _jitter(label_map.colors[label], int(index))
        text = f"#{index} {label_map.names[label]} {scores[index]:.2f}"
        regions.append(Region(shown[index], color, text))
    return _draw(image, regions, alpha, min_side)


def overlay_panoptic(
    image: np.ndarray,
    segment_ids: np.ndarray,
    segments: list[dict],
    label_map: LabelMap,
    alpha: float = 0.5,
    min_side: int = 0,
) -> np.ndarray:
    """Tint the segments of a panoptic map [H, W] (0 = void, left as is).

    `segments` are dicts with `id` and `label` (contiguous class), as from
    `panoptic_inference`; things get one shade per segment, stuff its class colour.
    """
    step = _step(image)
    image, segment_ids = np.asarray(image)[::step, ::step], _as_numpy(segment_ids)[::step, ::step]
    regions = []
    for segment in segments:
        label = int(segment["label"])
        color = label_map.colors[label]
        if label_map.isthing[label]:
            color = _jitter(color, int(segment["id"]))
        regions.append(Region(segment_ids == segment["id"], color, label_map.names[label]))
    return _draw(image, regions, alpha, min_side)


def _draw(image: np.ndarray, regions: list[Region], alpha: float, min_side: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    for region in regions:
        if region.mask.shape != image.shape[:2]:
            raise ValueError(f"mask of {region.mask.shape} does not fit image {image.shape[:2]}")
    # small pictures are enlarged (whole pixels) so outlines and names stay readable, but
    # never past MAX_PIXELS or MAX_SIDE: a 20000 x 16 strip stays a strip, not 480000 x 384
    height, width = image.shape[:2]
    scale = -(-min_side // min(height, width)) if min(height, width) < min_side else 1
    scale = min(scale, int(np.sqrt(MAX_PIXELS / (height * width))), MAX_SIDE // max(height, width))
    scale = max(scale, 1)
    if scale > 1:
        image = _enlarge(image, scale)
        regions = [Region(_enlarge(r.mask, scale), r.color, r.text) for r in regions]
    canvas = image.astype(np.float32)
    for region in regions:
        color = np.asarray(region.color, np.float32)
        canvas[region.mask] = (1 - alpha) * canvas[region.mask] + alpha * color
        canvas[_outline(region.mask)] = color
    picture = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(picture)
    font = _font(max(11, min(image.shape[:2]) // 32))
    taken: list[tuple[int, int, int, int]] = []
    for region in regions:
        if region.mask.any():
            point = _interior_point(region.mask)
            _draw_label(draw, font, region.text, point, image.shape[:2], taken)
    return np.asarray(picture)


def _step(image) -> int:
    """1, or the whole step s that brings a picture of more than MAX_PIXELS under it."""
    height, width = np.shape(image)[:2]
    return max(1, int(np.ceil(np.sqrt(height * width / MAX_PIXELS))))


def _enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    return array.repeat(scale, axis=0).repeat(scale, axis=1)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The 1-2 px inner border of a mask."""
    return mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=1)


def _interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel farthest from the mask's border."""
    ys, xs = np.nonzero(mask)
    top, left = ys.min(), xs.min()
    crop = np.pad(mask[top : ys.max() + 1, left : xs.max() + 1], 1)  # border outside counts
    distance = ndimage.distance_transform_edt(crop)
    y, x = np.unravel_index(np.argmax(distance), distance.shape)
    return int(left + x - 1), int(top + y - 1)


def _draw_label(draw: ImageDraw.ImageDraw, font, text: str, point, size, taken: list) -> None:
    """Text centred on `point` over a dark box, kept inside the picture and, where a nearby
    place is free, off the boxes already drawn (listed in `taken`, which this extends)."""
    height, width = size
    pad = 2
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0 = min(max(point[0] - box_w // 2, 0), max(width - box_w - 1, 0))
    candidates = []
    for shift in (0, 1, -1, 2, -2):
        y = point[1] - box_h // 2 + shift * (box_h + 1)
        candidates.append((x0, min(max(y, 0), max(height - box_h - 1, 0))))
    x0, y0 = next((c for c in candidates if not _overlaps(c, box_w, box_h, taken)), candidates[0])
    box = (x0, y0, x0 + box_w, y0 + box_h)
    taken.append(box)
    draw.rectangle(box, fill=TEXT_BOX_COLOR)
    draw.text((x0 + pad - left, y0 + pad - top), text, fill=TEXT_COLOR, font=font)


def _overlaps(corner, box_w, box_h, boxes) -> bool:
    x0, y0 = corner
    return any(
        x0 <= b[2] and b[0] <= x0 + box_w and y0 <= b[3] and b[1] <= y0 + box_h for b in boxes
    )


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        return ImageFont.load_default()


def _jitter(color: tuple[int, int, int], index: int) -> tuple[int, int, int]:
    """A shade of `color` that depends on `index`, so touching instances of a class differ."""
    shift = np.random.default_rng(index).integers(-60, 61, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(color) + shift, 0, 255))


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array)
