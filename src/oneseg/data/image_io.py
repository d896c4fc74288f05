"""Decoding images and label PNGs into arrays, the same way for every reader.

Images come out as RGB uint8 whatever their mode (grayscale, RGBA, palette, CMYK, 16-bit), with
their EXIF orientation applied: a phone photo stored sideways with orientation 6 is turned
upright, as every viewer and annotation tool shows it. Label PNGs get the same treatment, so an
image and its label stay aligned whether the label carries the EXIF tag or not. Images of more
than 8 bits are stretched to 0-255 by an intensity rule (`oneseg.data.intensity`).

An image whose header claims more pixels than `max_image_pixels` (PIL's decompression-bomb guard;
`dataset.max_image_pixels` in the spec) is a bad image like any other: an ImageReadError.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from oneseg.data.intensity import DATASET_SAMPLE_IMAGES, Intensity, to_uint8, value_kind
from oneseg.data.records import DataError

EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90 or 270 degrees


class ImageReadError(DataError):
    """An image or label file that is missing, not an image, or cut short."""


def set_max_image_pixels(pixels: int) -> None:
    """The largest image (width x height) a reader decodes; larger ones are bad images.
    0 keeps PIL's default (about 179 million pixels). Inherited by forked loader workers."""
    Image.MAX_IMAGE_PIXELS = (pixels // 2) if pixels else DEFAULT_MAX_IMAGE_PIXELS


DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS


def _too_large(path: Path, err: Exception) -> ImageReadError:
    return ImageReadError(
        f"{path}: {str(err).rstrip('.')}; if the image is genuine, raise dataset.max_image_pixels"
    )


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # a truncated file fails here, not later in a worker
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: a folder, not an image file") from None
    except Image.DecompressionBombError as err:
        raise _too_large(path, err) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode ({err})") from None
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) of an opened image."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1


def _upright(image: Image.Image) -> Image.Image:
    if exif_orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image, intensity: Intensity | None = None) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB.

    16-bit ('I;16*'), 32-bit integer ('I') and float ('F') images are stretched to 0-255 by
    `intensity` (default: per-image percentiles 1-99.8; see `oneseg.data.intensity`).
    Alpha is dropped.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    kind = value_kind(mode)
    if kind != "8bit":
        gray = to_uint8(np.asarray(image), kind, intensity)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P":
        # palette images with a transparent index expand through RGBA, as PIL asks
        image = image.convert("RGBA") if "transparency" in image.info else image
    return image.convert("RGB")


def read_image(path: str | Path, intensity: Intensity | None = None) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file, upright. Raises ImageReadError naming the file."""
    path = Path(path)
    image = _open(path)
    try:
        return np.asarray(to_rgb(_upright(image), intensity))
    except (OSError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot convert to RGB ({err})") from None


def read_values(path: str | Path) -> tuple[np.ndarray, str]:
    """The stored values of an image ([H, W] or [H, W, C]) and their kind ('8bit', '16bit',
    '32bit', 'float'): what an intensity rule works on."""
    image = _open(Path(path))
    return np.asarray(image), value_kind(image.mode)


def read_label(path: str | Path) -> np.ndarray:
    """The stored values of a label PNG, upright: [H, W, 3] for RGB, [H, W] otherwise.

    Palette PNGs give their indices (not the palette colours), 16-bit PNGs their 16-bit values.
    """
    path = Path(path)
    image = _upright(_open(path))
    if image.mode in ("RGBA", "RGBX", "CMYK", "YCbCr"):
        image = image.convert("RGB")
    elif image.mode in ("LA", "PA"):
        image = image.getchannel(0)
    return np.asarray(image)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as `read_image` returns it, read from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            swap = exif_orientation(image) in _SWAPS_AXES
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except Image.DecompressionBombError as err:
        raise _too_large(path, err) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not an image file PIL can read ({err})") from None
    return (width, height) if swap else (height, width)


def raw_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as stored, before the EXIF orientation is applied."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise _too_large(Path(path), err) from None
    return height, width


def dataset_window(paths: Iterable[str | Path], rule: Intensity) -> Intensity:
    """A `per: dataset` rule made `fixed`: its window computed once over (up to
    DATASET_SAMPLE_IMAGES of) the images, evenly spread; other rules are returned unchanged."""
    if rule.per != "dataset" or rule.mode in ("fixed", "full_range"):
        return rule
    paths = list(paths)
    step = max(len(paths) // DATASET_SAMPLE_IMAGES, 1)
    samples = []
    for path in paths[::step][:DATASET_SAMPLE_IMAGES]:
        values, kind = read_values(path)
        if kind != "8bit":
            flat = values.astype(np.float64).ravel()
            samples.append(flat[:: max(flat.size // 100_000, 1)])  # about 1e5 values per image
    if not samples:
        return Intensity(mode="full_range")  # 8-bit data: the rule changes nothing
    lo, hi = rule.window(np.concatenate(samples), kind)
    return Intensity(mode="fixed", low=lo, high=max(hi, lo + 1e-6))
