"""An uploaded image, checked against the server's limits and decoded to RGB.

Every refusal is an `UploadError` carrying the HTTP status and one line that names the limit:

    413  the body is larger than serve.max_request_mb, or the image has more pixels than
         dataset.max_image_pixels (read from the header, before decoding)
    415  not an image PIL can read
    422  empty, cut short, or a side shorter than serve.min_image_side

Decoding follows `oneseg.data.image_io`: EXIF orientation applied, any mode (16-bit, float,
palette, CMYK) made RGB, more than 8 bits stretched by the model's intensity rule.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from oneseg.data.intensity import Intensity
from oneseg.predictor import as_rgb_array


class UploadError(Exception):
    """A request the server refuses: `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(
    data: bytes,
    *,
    max_image_pixels: int,
    min_image_side: int,
    intensity: Intensity | None = None,
) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an uploaded file, upright.

    Arguments:
        data: the file's bytes.
        max_image_pixels: width x height allowed at most; 0 = no limit of ours (PIL's own
            decompression-bomb guard still applies).
        min_image_side: the shortest side allowed.
    """
    if not data:
        raise UploadError(422, "empty body: send an image file (multipart field or raw body)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadError(415, "not an image file PIL can read (PNG, JPEG, TIFF, ...)") from None
    except Image.DecompressionBombError as err:
        raise UploadError(413, f"{err}; the limit is dataset.max_image_pixels") from None
    width, height = image.size
    if max_image_pixels and width * height > max_image_pixels:
        raise UploadError(
            413,
            f"the image has {width}x{height} = {width * height} pixels, more than "
            f"dataset.max_image_pixels = {max_image_pixels}",
        )
    if min(width, height) < min_image_side:
        raise UploadError(
            422,
            f"the image is {width}x{height}, a side is shorter than "
            f"serve.min_image_side = {min_image_side}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
        return as_rgb_array(image, intensity)
    except Image.DecompressionBombError as err:
        raise UploadError(413, f"{err}; the limit is dataset.max_image_pixels") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UploadError(422, f"cannot decode the image, cut short or damaged ({err})") from None
