"""Files written whole or not at all, JSON, and COCO panoptic id PNGs.

Every writer here goes through `write_atomic`: the data goes to a uniquely named temporary file
beside the target, which is then renamed onto it. A run that is stopped leaves either the old
file or the new one, never half of one, and its temporary file is removed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.errors import NoSpace

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


def write_atomic(path: str | Path, write: Callable[[Path], None], size_hint: int = 0) -> None:
    """Call `write(tmp_path)` on a fresh temporary file beside `path`, then rename it onto
    `path` (creating the folder). On any error the temporary file is removed; a full disk is
    `NoSpace` naming the folder and the megabytes needed (`size_hint`, or what was written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}{temp_marker()}", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as open() makes it
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as err:
        written = _size(Path(tmp))
        Path(tmp).unlink(missing_ok=True)
        raise_if_no_space(err, path.parent, max(size_hint, written))
        raise


# ------------------------------------------------------------------ temporaries, full disks
# Every temporary file or folder oneseg writes beside its results carries `.oneseg-PID-` in
# its name; a later run removes those of processes that no longer exist (killed with -9).
_TEMP = re.compile(r"\.oneseg-(\d+)[-.]")


def temp_marker() -> str:
    """The part of a temporary's name that says which process writes it."""
    return f".oneseg-{os.getpid()}-"


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """A temporary file name beside `path`, for writers that need to name their own."""
    path = Path(path)
    return path.with_name(f".{path.name}{temp_marker()}{suffix.lstrip('.')}")


def temp_folder(parent: str | Path) -> tempfile.TemporaryDirectory:
    """A temporary folder in `parent` (removed on exit), named so a later run can tell that it
    is stale when this process is killed."""
    return tempfile.TemporaryDirectory(prefix=temp_marker().lstrip("."), dir=parent)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` whose writing process has ended; returns them."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _TEMP.search("." + entry.name.lstrip("."))
        if found is None or pid_running(int(found.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def pid_running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has ended its work)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def raise_if_no_space(err: BaseException, folder: str | Path, needed: int) -> None:
    """Raise `NoSpace` ("no space left on FOLDER: N MB needed") when `err` (or its cause) is a
    full disk or quota, or the folder's disk has less free space than `needed` bytes."""
    cause, full = err, False
    while cause is not None and not full:
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = cause.__cause__ or cause.__context__
    if not full and isinstance(err, (OSError, RuntimeError)) and needed:
        try:
            full = shutil.disk_usage(folder).free < needed
        except OSError:
            full = False
    if full:
        mb = max(1, math.ceil(needed / 2**20))
        raise NoSpace(f"no space left on {folder}: {mb} MB needed") from err


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
