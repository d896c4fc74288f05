"""Decoding images and label PNGs into arrays, the same way for every reader.

Images come out as RGB uint8 whatever their mode (grayscale, RGBA, palette, CMYK, 16-bit), with
their EXIF orientation applied: a phone photo stored sideways with orientation 6 is turned
upright, as every viewer and annotation tool shows it. Label PNGs get the same treatment, so an
image and its label stay aligned whether the label carries the EXIF tag or not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from oneseg.data.records import DataError

EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90 or 270 degrees


class ImageReadError(DataError):
    """An image or label file that is missing, not an image, or cut short."""


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # a truncated file fails here, not later in a worker
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
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


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB.

    16-bit modes ('I;16*') are scaled by 1/257 so that 65535 maps to 255. 32-bit integer ('I')
    images are scaled the same way when they exceed 255, else taken as 8-bit values; float ('F')
    images in [0, 1] are taken as fractions, otherwise as 0-255. Alpha is dropped.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0
        elif mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P":
        # palette images with a transparent index expand through RGBA, as PIL asks
        image = image.convert("RGBA") if "transparency" in image.info else image
    return image.convert("RGB")


def read_image(path: str | Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file, upright. Raises ImageReadError naming the file."""
    path = Path(path)
    image = _open(path)
    try:
        return np.asarray(to_rgb(_upright(image)))
    except (OSError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot convert to RGB ({err})") from None


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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not an image file PIL can read ({err})") from None
    return (width, height) if swap else (height, width)


def raw_size(path: str | Path) -> tuple[int, int]:
    """(height, width) as stored, before the EXIF orientation is applied."""
    with Image.open(path) as image:
        width, height = image.size
    return height, width
