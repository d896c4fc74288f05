"""Files written whole or not at all, JSON, and COCO panoptic id PNGs.

Every writer here goes through `write_atomic`: the data goes to a uniquely named temporary file
beside the target, which is then renamed onto it. A run that is stopped leaves either the old
file or the new one, never half of one, and its temporary file is removed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

_MISSING = object()


def _umask() -> int:
    """The process's umask: from /proc where Linux shows it, else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a fresh temporary file beside `path`, then rename it onto
    `path` (creating the folder). On any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as open() makes it
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_json(value):
    """`value` with every NaN or infinite float replaced by None, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json_atomic(path: str | Path, data) -> None:
    """`data` as compact strict JSON (NaN and inf written as null)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(finite_json(data), out, separators=(",", ":"), allow_nan=False)

    write_atomic(path, write)


def read_json(path: str | Path, default=_MISSING):
    """The JSON in `path`; `default` when there is no such file (if given). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        if default is _MISSING:
            raise FileNotFoundError(f"{path}: no such file")
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def write_png_atomic(path: str | Path, array: np.ndarray) -> None:
    """An [H, W] or [H, W, 3] uint8 array, or an [H, W] uint16 array, as a PNG."""
    image = Image.fromarray(array)
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


# ------------------------------------------------------------------ COCO panoptic id PNGs
def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic colours [H, W, 3] uint8 -> segment ids [H, W] int32: R + 256 G + 256² B."""
    ids = rgb[..., 2].astype(np.int32)  # in-place shifts: one [H, W] buffer, no [H, W, 3] copy
    ids <<= 8
    ids |= rgb[..., 1]
    ids <<= 8
    ids |= rgb[..., 0]
    return ids


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] -> COCO panoptic colours [H, W, 3] uint8."""
    # little-endian uint32 bytes are R, G, B, X: one [H, W] copy instead of int64 temporaries
    ids = np.ascontiguousarray(ids, dtype="<u4")
    return np.ascontiguousarray(ids.view(np.uint8).reshape(*ids.shape, 4)[..., :3])


def read_id_png(path: str | Path) -> np.ndarray:
    """COCO panoptic PNG -> [H, W] int32 segment ids."""
    with Image.open(path) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        # RGBX bytes read as little-endian uint32 are R + 256 G + 256² B + 256³ X: two passes
        # over the pixels instead of the six of rgb_to_id on an [H, W, 3] array
        ids = np.frombuffer(image.tobytes("raw", "RGBX"), "<u4").reshape(image.height, image.width)
        return (ids & np.uint32(0xFFFFFF)).view(np.int32)  # ids < 2^24: the same bits


def write_id_png(path: str | Path, segment_ids: np.ndarray) -> None:
    """Segment ids [H, W] as a COCO panoptic PNG."""
    write_png_atomic(path, id_to_rgb(segment_ids))
