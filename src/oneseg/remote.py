"""Files and folders named by URL (`s3://`, `gs://`, `az://`, `http(s)://`), read through fsspec
into a local cache.

`fetch(url, cache_root)` gives a local path holding what the URL names: a file, a folder (an
object-store prefix, copied file by file), or a glob (its matching files, returned as the same
pattern over the copy). Each URL has one folder under `cache_root` (named by the URL's hash);
a manifest there records every file's remote version (ETag, generation, size, modification
time: whatever the store reports), so a later run downloads only what changed, and nothing when
nothing did. Files are written whole or not at all, one process downloads while the others of a
multi-process run wait on a lock, and the disk is checked before a download starts.

Credentials and endpoints are never taken from a spec: fsspec's back-ends read them where their
SDKs do (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE,
~/.aws/config, instance roles). A URL shown in a message or log loses its user, password and
query (a presigned URL carries its signature there).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from oneseg.errors import BadInput
from oneseg.io import write_json_atomic

# scheme -> (the package fsspec needs for it, the oneseg extra that installs that package)
SCHEMES = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "adl": ("adlfs", "azure"),
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
}
MANIFEST = ".remote.json"
_MARGIN_BYTES = 64 << 20  # left free besides the downloaded files
_BATCH = 256  # files downloaded concurrently, and between two writes of the manifest
_GLOB_CHARS = re.compile(r"[*?\[]")
# the first of these that a store reports tells one version of an object from another
_VERSION_KEYS = ("ETag", "etag", "generation", "VersionId", "version_id", "md5Hash", "content_md5")
_TIME_KEYS = ("LastModified", "last_modified", "updated", "mtime", "Last-Modified")


class RemoteError(BadInput):
    """A URL that cannot be read: no such bucket or key, access denied, no network, no package."""


def is_url(value) -> bool:
    """Whether `value` is a URL of a store oneseg reads through fsspec (not a local path)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", str(value))
    return bool(match) and match.group(1).lower() in SCHEMES


def shown(url: str) -> str:
    """`url` as messages and logs may show it: without user, password, query or fragment."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def filesystem(url: str):
    """(fsspec file system, path within it) for `url`; RemoteError naming the missing package."""
    import fsspec

    scheme = url.split("://", 1)[0].lower()
    package, extra = SCHEMES[scheme]
    try:
        # a fresh instance: the credentials and listings of now, not of an earlier call
        return fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except ImportError:
        raise RemoteError(
            f"{shown(url)}: reading {scheme}:// needs the {package} package: "
            f"pip install 'oneseg[{extra}]' (or pip install {package})"
        ) from None


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from (a store wraps its client's errors)."""
    seen = [err]
    while len(seen) < 8:
        nxt = seen[-1].__cause__ or seen[-1].__context__
        if nxt is None or nxt in seen:
            break
        seen.append(nxt)
    return seen


def _is_network(err: BaseException) -> bool:
    return isinstance(err, ConnectionError | TimeoutError | socket.gaierror) or bool(
        re.search(r"Connect|Timeout|DNS", type(err).__name__)
    )


def describe_error(url: str, err: BaseException) -> RemoteError:
    """The one-line error of a failed read of `url`: missing bucket or key, access, network."""
    chain = _chain(err)
    text = " ".join(f"{type(e).__name__} {e}" for e in chain)
    where = shown(url)
    if any(_is_network(e) for e in chain):
        return RemoteError(
            f"{where}: no network connection to the store ({type(chain[-1]).__name__}); check "
            "the network and the endpoint (for S3: AWS_ENDPOINT_URL)"
        )
    if isinstance(err, FileNotFoundError) or "NoSuchKey" in text or "NoSuchBucket" in text:
        if url.lower().startswith(("http://", "https://")):
            return RemoteError(f"{where}: no such file on the server")
        bucket = re.search(r"NoSuchBucket|bucket does not exist|container", text, re.I)
        return RemoteError(f"{where}: {'no such bucket' if bucket else 'no such key'}")
    if isinstance(err, PermissionError) or re.search(
        r"AccessDenied|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch|403|401", text
    ):
        said = str(err).strip().split(". ")[0][:120]
        return RemoteError(
            f"{where}: access denied ({said}); check the credentials of the environment (for "
            "S3: AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/credentials, the instance role)"
        )
    if re.search(r"NoCredentials|Unable to locate credentials", text):
        return RemoteError(f"{where}: no credentials found in the environment or config files")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return RemoteError(f"{where}: cannot read ({type(err).__name__}: {first[:200]})")


def _version(info: dict) -> str:
    """What tells this version of a remote file from another: the store's tag, size and time."""
    tag = next((str(info[k]) for k in _VERSION_KEYS if info.get(k)), "")
    stamp = next((str(info[k]) for k in _TIME_KEYS if info.get(k)), "")
    return f"{tag}|{info.get('size')}|{stamp}"


def _entry_name(url: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(urlsplit(url).path).name or "root")
    return f"{stem[:60]}-{hashlib.sha1(url.encode()).hexdigest()[:12]}"


def _listing(fs, path: str, url: str) -> tuple[str, dict[str, tuple], str | None]:
    """(what the URL names: file, folder or glob; {relative path: (fs, remote path, info)} of
    its files; for a glob, the pattern relative to the copied folder)."""
    if _is_glob(url, path):
        static = _GLOB_CHARS.split(path, 1)[0].rsplit("/", 1)[0]
        found = fs.glob(path, detail=True)
        files = {
            _relative(name, static): (fs, name, info)
            for name, info in found.items()
            if info.get("type", "file") == "file"
        }
        return "glob", files, _relative(path, static)
    info = fs.info(path)
    if info.get("type") == "directory":
        base = path.rstrip("/")
        found = fs.find(base, detail=True)
        files = {
            _relative(name, base): (fs, name, info)
            for name, info in found.items()
            if info.get("type") == "file"
        }
        return "folder", files, None
    return "file", {PurePosixPath(urlsplit(url).path).name or "file": (fs, path, info)}, None


def _is_glob(url: str, path: str) -> bool:
    """A pattern of object names (an http(s) URL is never one: `?` starts its query)."""
    return not url.lower().startswith(("http://", "https://")) and bool(_GLOB_CHARS.search(path))


def _relative(path: str, base: str) -> str:
    path, base = path.strip("/"), base.strip("/")
    return path[len(base) :].lstrip("/") if base and path.startswith(base) else path


def _download(url: str, files: dict[str, tuple], target: Path) -> int:
    """Copy into `target` each file whose version differs from the manifest's, and remove the
    files the URL no longer names; the count downloaded.

    files: {relative path: (file system, remote path, info)}."""
    manifest = _read_manifest(target)
    removed = set(manifest) - set(files)
    for rel in removed:  # gone from the store: gone from the copy
        (target / rel).unlink(missing_ok=True)
        del manifest[rel]
    todo = {
        rel: item
        for rel, item in files.items()
        if manifest.get(rel) != _version(item[2]) or not (target / rel).is_file()
    }
    needed = sum(int(item[2].get("size") or 0) for item in todo.values())
    free = shutil.disk_usage(target).free
    if needed + _MARGIN_BYTES > free:
        raise RemoteError(
            f"{shown(url)}: downloading needs {needed / 2**30:.2f} GiB, only {free / 2**30:.2f} "
            f"GiB free in {target}"
        )
    items = sorted(todo.items())
    for start in range(0, len(items), _BATCH):
        _get_batch(items[start : start + _BATCH], target)
        manifest.update({rel: _version(item[2]) for rel, item in items[start : start + _BATCH]})
        write_json_atomic(target / MANIFEST, manifest)
    if removed and not todo:
        write_json_atomic(target / MANIFEST, manifest)
    return len(todo)


def _get_batch(items: list[tuple[str, tuple]], target: Path) -> None:
    """Download files concurrently (fsspec's batched `get`) to temporary names beside their
    targets, then rename each onto its target: a stopped run leaves no half file."""
    by_fs: dict[int, list] = {}
    for rel, (fs, source, _) in items:
        by_fs.setdefault(id(fs), [fs, [], [], []])
        tmp = target / rel
        tmp = tmp.parent / f".{tmp.name}.part{os.getpid()}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        group = by_fs[id(fs)]
        group[1].append(source)
        group[2].append(str(tmp))
        group[3].append(target / rel)
    for fs, sources, temps, finals in by_fs.values():
        try:
            fs.get(sources, temps)
            for tmp, final in zip(temps, finals):
                os.replace(tmp, final)
        finally:
            for tmp in temps:
                Path(tmp).unlink(missing_ok=True)


def _read_manifest(target: Path) -> dict:
    try:
        return json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _locked_download(url: str, cache_root: str | Path, list_files, on_download) -> tuple:
    """(target folder, what list_files returned) after bringing the URL's copy up to date."""
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / _entry_name(url)
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process downloads, the others wait and reuse
        try:
            listed = list_files()
            if not listed[1]:
                raise FileNotFoundError(f"{url}: names no file")
            target.mkdir(parents=True, exist_ok=True)
            count = _download(url, listed[1], target)
        except RemoteError:
            raise
        except Exception as err:  # every store raises its own types; each becomes one line
            raise describe_error(url, err) from None
    if on_download is not None:
        on_download(shown(url), count)
    return target, listed


def fetch(url: str, cache_root: str | Path, on_download=None) -> Path:
    """A local path holding what `url` names, brought up to date in `cache_root`: the file, the
    folder of a prefix's files, or the glob pattern over the copy of its matches.

    on_download(url, count): told how many files were downloaded (0: all were in the cache),
    with the URL as `shown` gives it.
    Raises RemoteError naming the URL (shown without credentials) when it cannot be read."""
    fs, path = filesystem(url)
    target, (kind, files, pattern) = _locked_download(
        url, cache_root, lambda: _listing(fs, path, url), on_download
    )
    if kind == "file":
        return target / next(iter(files))
    return target / pattern if kind == "glob" else target


def fetch_each(urls: list[str], name: str, cache_root: str | Path, on_download=None) -> list[Path]:
    """Local copies of many remote files (an image list's lines), in one folder named by
    `name` (the list's URL or path), below it as below their longest common URL prefix."""
    stripped = [u.split("://", 1)[1] for u in urls]
    common = stripped[0].rsplit("/", 1)[0] if len(urls) == 1 else _common_folder(stripped)
    rels = [_relative(s, common) for s in stripped]

    def list_files():
        files, systems = {}, {}
        for url, rel in zip(urls, rels):
            scheme = url.split("://", 1)[0]
            if scheme not in systems:
                systems[scheme] = filesystem(url)[0]
            fs = systems[scheme]
            path = fs._strip_protocol(url)
            try:
                files[rel] = (fs, path, fs.info(path))
            except Exception as err:
                raise describe_error(url, err) from None
        return "list", files, None

    target, _ = _locked_download(name, cache_root, list_files, on_download)
    return [target / rel for rel in rels]


def _common_folder(paths: list[str]) -> str:
    parts = [p.split("/")[:-1] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)
