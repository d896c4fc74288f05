"""Image and label folders given as `.tar` / `.tar.gz` archives (TAO's `images.tar.gz` layout).

An archive is unpacked once into `results_dir/cache/` (keyed by its path, size and time, so a
changed archive is unpacked again), after checking that the disk holds what it expands to;
later runs and every process of a multi-process run reuse that folder. An archive holding one
top folder stands for that folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import shutil
import tarfile
from pathlib import Path

from oneseg.data.records import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
FOLDER_KEYS = ("images", "panoptic", "labels")
_MARGIN_BYTES = 64 << 20  # left free besides the unpacked files


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES) and Path(path).is_file()


def _cache_name(archive: Path) -> str:
    stat = archive.stat()
    key = f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    stem = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _content_root(folder: Path) -> Path:
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def unpack_archive(archive: str | Path, cache_root: str | Path) -> Path:
    """The folder holding the contents of `archive`, unpacked under `cache_root` if not yet.

    Raises DataError naming the archive when it cannot be read or the disk is too small."""
    archive, cache_root = Path(archive), Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / _cache_name(archive)
    with open(cache_root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process unpacks, the others wait and reuse
        if target.is_dir():
            return _content_root(target)
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                needed = sum(m.size for m in members if m.isfile())
                free = shutil.disk_usage(cache_root).free
                if needed + _MARGIN_BYTES > free:
                    raise DataError(
                        f"{archive}: unpacking needs {needed / 2**30:.2f} GiB, only "
                        f"{free / 2**30:.2f} GiB free in {cache_root}"
                    )
                tmp = cache_root / f".{target.name}.tmp{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise DataError(f"{archive}: cannot unpack ({type(err).__name__}: {err})") from None
        os.rename(tmp, target)
    return _content_root(target)


def unpack_dataset_archives(dataset_cfg, cache_root: str | Path):
    """`dataset_cfg` with every archive among the sources' folders replaced by its unpacked
    folder (unchanged when there is none)."""

    def source(src):
        changes = {
            key: str(unpack_archive(getattr(src, key), cache_root))
            for key in FOLDER_KEYS
            if getattr(src, key) and is_archive(getattr(src, key))
        }
        return dataclasses.replace(src, **changes) if changes else src

    return dataclasses.replace(
        dataset_cfg,
        train=[source(s) for s in dataset_cfg.train],
        val=source(dataset_cfg.val),
        test=source(dataset_cfg.test),
    )


def with_unpacked_archives(spec):
    """The spec with `.tar`/`.tar.gz` dataset folders unpacked into results_dir/cache."""
    cache = Path(spec.results_dir) / "cache"
    return dataclasses.replace(spec, dataset=unpack_dataset_archives(spec.dataset, cache))
