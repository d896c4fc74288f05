"""Models by name from the Hugging Face Hub, through `huggingface_hub`.

A model source may be `hf://ORG/NAME[@REVISION]` (a branch, tag or commit) wherever a checkpoint
is taken, or `hf://ORG/NAME[@REVISION]/FILE` for one checkpoint file of a repository (an original
or TAO `.pth`, a oneseg checkpoint). `download_model` fetches only what a transformers model
folder needs (config.json, preprocessor_config.json, oneseg's own files if any, and the weights:
model.safetensors, pytorch_model.bin or their shards) into huggingface_hub's cache and returns
the snapshot folder. Everything else is huggingface_hub's: the cache (`HF_HUB_CACHE` /
`HF_HOME`), `HF_HUB_OFFLINE=1`, the token (`HF_TOKEN` or a stored `hf auth login`) and the
endpoint (`HF_ENDPOINT`). The environment is read at each call, not when the library was
imported. After config.json every file is fetched at the commit config.json came from, so a
push in between cannot mix two versions; files are written to the cache whole (downloaded
beside it, then renamed), so nothing half-downloaded is read. Failures become one line naming
the repository and what to do (`HubError`, exit 2).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from oneseg.errors import CheckpointError

SCHEME = "hf://"
# names ending so are files, not repositories: `results/model.ckpt` is a missing local file
FILE_SUFFIXES = (".ckpt", ".pth", ".pt", ".pkl", ".bin", ".safetensors", ".onnx", ".engine")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# oneseg.json: what a model pushed by oneseg adds (its model config, label map, intensity rule)
OPTIONAL_FILES = ("preprocessor_config.json", "oneseg.json", "oneseg_text_branch.safetensors")
# the weights of a transformers folder, in the order transformers prefers them
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HubError(CheckpointError):
    """A hub model that cannot be fetched; the message names it and says what to do."""


class HubSource(NamedTuple):
    repo_id: str  # ORG/NAME
    revision: str | None  # branch, tag or commit; None = the default branch
    filename: str | None  # one file of the repository (a .pth, a .ckpt); None = a model folder


def split_source(source: str | Path) -> HubSource | None:
    """`hf://ORG/NAME[@REVISION][/FILE]` -> HubSource; None for anything else."""
    if not isinstance(source, str) or not source.startswith(SCHEME):
        return None
    org, _, rest = source[len(SCHEME) :].partition("/")
    name_rev, _, filename = rest.partition("/")
    name, _, revision = name_rev.partition("@")
    repo_id = f"{org}/{name}"
    if not REPO_ID.fullmatch(repo_id) or (rest.endswith("/") and not filename):
        raise HubError(
            f"{source}: not a hub model name (hf://ORG/NAME, hf://ORG/NAME@REVISION, "
            "hf://ORG/NAME[@REVISION]/FILE)"
        )
    return HubSource(repo_id, revision or None, filename or None)


def as_hub_source(text: str) -> str | None:
    """`ORG/NAME[@REVISION]` (as transformers' from_pretrained takes it) or hf://... as an
    hf:// source, unless a local path of that name exists; None if it is not a name."""
    if text.startswith(SCHEME):
        return text
    name = text.partition("@")[0]
    if Path(text).exists() or not REPO_ID.fullmatch(name) or name.endswith(FILE_SUFFIXES):
        return None  # a local path (a missing file is reported as one)
    return SCHEME + text


def endpoint() -> str:
    import huggingface_hub.constants as hc

    return os.environ.get("HF_ENDPOINT", hc.ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    import huggingface_hub.constants as hc

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(hc.HF_HUB_CACHE)


def offline() -> bool:
    import huggingface_hub.constants as hc

    flag = os.environ.get("HF_HUB_OFFLINE")
    return hc.HF_HUB_OFFLINE if flag is None else flag.upper() in ("1", "ON", "YES", "TRUE")


def _fetch(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir(),
        local_files_only=offline(),
        endpoint=endpoint(),
        library_name="oneseg",
    )
    return Path(path)


def _fetch_optional(repo_id: str, filename: str, revision: str) -> Path | None:
    """The file, or None where the repository has none (offline: where the cache has none).
    Online, a file that could not be fetched is an error, not an absent file: a processor
    config silently missing would change the model's input normalisation."""
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    try:
        return _fetch(repo_id, filename, revision)
    except RemoteEntryNotFoundError:
        return None
    except EntryNotFoundError:  # local: offline and not in the cache, or no connection
        if offline() or _known_absent(repo_id, filename, revision):
            return None
        raise


def _known_absent(repo_id: str, filename: str, revision: str) -> bool:
    """Whether the cache recorded that the repository had no such file at that commit."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir(), revision=revision)
    return found is _CACHED_NO_EXIST


def _fetch_weights(repo_id: str, revision: str) -> None:
    for name in WEIGHT_FILES:
        if _fetch_optional(repo_id, name, revision) is not None:
            return
        index = _fetch_optional(repo_id, f"{name}.index.json", revision)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            for shard in shards:
                _fetch(repo_id, shard, revision)
            return
    where = f"{repo_id} in the cache {cache_dir()}" if offline() else repo_id
    raise HubError(
        f"{SCHEME}{repo_id}: no model.safetensors or pytorch_model.bin (or shards) in {where}"
    )


def download_model(
    repo_id: str, revision: str | None = None, check_config: Callable[[dict], None] | None = None
) -> Path:
    """The local snapshot folder of a transformers model on the hub: config.json, the processor
    config if any, and the weights, fetched (or found in the cache) at one commit.
    check_config: called with config.json's content before any weights are fetched (to refuse
    a model of another type without downloading it)."""
    with hub_errors(repo_id, revision):
        config = _fetch(repo_id, "config.json", revision)
        if check_config is not None:
            check_config(json.loads(config.read_text()))
        commit = config.parent.name  # snapshots/<commit>/config.json
        for name in OPTIONAL_FILES:
            _fetch_optional(repo_id, name, commit)
        _fetch_weights(repo_id, commit)
    return config.parent


def download_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a hub repository (e.g. a timm backbone's weights), errors as one line."""
    with hub_errors(repo_id, revision):
        return _fetch(repo_id, filename, revision)


def _cached_revisions(repo_id: str) -> list[str]:
    """The refs (branches, tags) and commits the local cache holds a config.json of."""
    folder = cache_dir() / ("models--" + repo_id.replace("/", "--"))
    refs = sorted(p.name for p in (folder / "refs").glob("*") if p.is_file())
    snapshots = sorted(p.parent.name for p in (folder / "snapshots").glob("*/config.json"))
    return refs or snapshots


def _token_hint() -> str:
    from huggingface_hub import get_token

    if get_token():
        return "the token in use has no access to it"
    return "set HF_TOKEN or log in with `hf auth login`"


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, write: bool = False):
    """huggingface_hub's failures as one-line `HubError`s naming the repository; `write`: an
    upload, where 401 / 403 mean a token that may not write there."""
    from huggingface_hub import errors as he

    name = f"{SCHEME}{repo_id}" + (f"@{revision}" if revision else "")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.CRITICAL)  # its retry notes: the failure is reported below
    try:
        yield
    except he.GatedRepoError:
        raise HubError(
            f"{name}: a gated repository; accept its conditions at {endpoint()}/{repo_id} and "
            f"use a token that may read it ({_token_hint()})"
        ) from None
    except he.RepositoryNotFoundError:
        raise HubError(
            f"{name}: no such model repository on {endpoint()} (if it is private: {_token_hint()})"
        ) from None
    except he.RevisionNotFoundError:
        raise HubError(
            f"{name}: revision {revision!r} does not exist in {repo_id} (a branch, tag or commit)"
        ) from None
    except he.OfflineModeIsEnabled:
        raise HubError(f"{name}: not in the cache {cache_dir()}, and HF_HUB_OFFLINE=1") from None
    except he.LocalEntryNotFoundError as err:
        raise _not_reachable(name, repo_id, revision, err) from None
    except he.RemoteEntryNotFoundError as err:
        missing = str(err.response.url).rsplit("/", 1)[-1] if err.response else "a file"
        raise HubError(f"{name}: the repository has no {missing}") from None
    except he.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if write and status in (401, 403):
            from huggingface_hub import get_token

            need = (
                "the token in use may not write there"
                if get_token()
                else "set HF_TOKEN (or `hf auth login`) to a token that may write there"
            )
            raise HubError(
                f"{name}: {endpoint()} refused the upload (HTTP {status}); {need}"
            ) from None
        raise HubError(f"{name}: {endpoint()} answered HTTP {status}; try again later") from None
    except Exception as err:
        if not type(err).__module__.startswith(("httpx", "httpcore", "h11")):
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(
            f"{name}: the transfer from {endpoint()} broke off ({reason}); nothing partial is "
            "used: run again to resume it"
        ) from None
    finally:
        hub_logger.setLevel(level)


def _not_reachable(name: str, repo_id: str, revision: str | None, err: Exception) -> HubError:
    if offline():
        return HubError(
            f"{name}: not in the cache {cache_dir()}, and HF_HUB_OFFLINE=1 forbids downloading "
            "(unset it to download)"
        )
    cause = err.__cause__ or err.__context__
    reason = type(cause).__name__ if cause is not None else "no connection"
    held = _cached_revisions(repo_id)
    if not held:
        hint = f"the cache {cache_dir()} does not hold it"
    elif (revision or "main") in held:
        hint = "the cache holds it: run with HF_HUB_OFFLINE=1 to use it"
    else:
        hint = (
            f"the cache holds only {', '.join(held)}: run with HF_HUB_OFFLINE=1 and "
            f"{SCHEME}{repo_id}@{held[0]} to use it"
        )
    return HubError(f"{name}: cannot reach {endpoint()} ({reason}); {hint}")
