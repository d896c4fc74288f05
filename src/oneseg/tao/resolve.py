"""Reading a TAO-shaped spec: TAO keys out of the tree, resolved into oneseg keys.

`split_tao_keys` takes the TAO keys (those of `oneseg.tao.table.ALIASES`) out of a spec tree and
its overrides; `resolve` turns them into (oneseg key, value) assignments. Keys that belong
together (the backbone, the training sources, the task switches, the multistep milestones) are
resolved as groups by the functions of `GROUPS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from collections.abc import Callable
from typing import Any

from oneseg.tao.backbones import resolve_backbone
from oneseg.tao.table import (
    ALIASES,
    M2F_SOURCE_KEYS,
    Alias,
    SpecWarning,
    TaoKeyError,
    is_prefix,
    lookup,
)

TASK_NAMES = ("semantic", "instance", "panoptic")
MISSING = "???"  # Hydra/OmegaConf's mark of a value the spec leaves to fill in


# --------------------------------------------------------------------------- finding TAO keys


def _field_type(cls, name: str):
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    if name not in {fl.name for fl in dataclasses.fields(cls)}:
        return None
    return typing.get_type_hints(cls)[name]


def _unknown(path: str) -> TaoKeyError:
    parent = path.rsplit(".", 1)[0] + "."
    near = [k for k in ALIASES if k.startswith(parent)]
    close = difflib.get_close_matches(path, near, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return TaoKeyError(f"{path}: unknown key{hint}")


def extract(node: dict, prefix: str, cls, found: dict[str, Any]) -> dict:
    """`node` without its TAO keys, which go into `found` as dotted key -> value.

    `cls` is the oneseg section `node` holds (None inside a TAO-only mapping, where every key
    must be a TAO key)."""
    native: dict = {}
    for key, value in node.items():
        path = prefix + str(key)
        if lookup(path) is not None:
            found[path] = value
            continue
        field_tp = _field_type(cls, str(key))
        if isinstance(value, dict) and is_prefix(path):
            if field_tp is not None and dataclasses.is_dataclass(field_tp):
                native[key] = extract(value, path + ".", field_tp, found)
            else:
                rest = extract(value, path + ".", None, found)
                if rest:
                    raise _unknown(f"{path}.{next(iter(rest))}")
            continue
        if cls is None:
            raise _unknown(path)
        native[key] = value
    return native


def split_overrides(
    overrides: list[tuple[list[str], Any]], root_cls
) -> tuple[dict[str, Any], list[tuple[list[str], Any]]]:
    """(TAO keys as dotted key -> value, the overrides that are oneseg's own)."""
    found: dict[str, Any] = {}
    native = []
    for path, value in overrides:
        key = ".".join(path)
        if lookup(key) is not None:
            found[key] = value
            continue
        cls = root_cls
        for depth, name in enumerate(path[:-1]):
            cls = _field_type(cls, name)
            if not (cls is not None and dataclasses.is_dataclass(cls)):
                if is_prefix(".".join(path[: depth + 1])):  # inside a TAO-only mapping
                    raise _unknown(key)
                break
        if isinstance(value, dict) and is_prefix(key):
            cls = root_cls
            for name in path:
                cls = _field_type(cls, name)
            if not (cls is not None and dataclasses.is_dataclass(cls)):
                rest = extract(value, key + ".", None, found)
                if rest:
                    raise _unknown(f"{key}.{next(iter(rest))}")
                continue
        native.append((path, value))
    return found, native


# --------------------------------------------------------------------------- resolving


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _single(key: str, row: Alias, value: Any, emit: Callable[[str, Any], None], current) -> None:
    if row.kind == "fixed":
        if value is not None and not _same(value, row.value):
            raise TaoKeyError(f"{key}: got {value!r}; oneseg builds only {row.value!r} ({row.how})")
    elif row.kind == "ignored":
        if value not in (None, "", [], {}) and not _same(value, row.value):
            warnings.warn(f"{key}: accepted and ignored ({row.how})", SpecWarning, stacklevel=5)
    elif row.kind == "rename" and value is not None:
        if row.optional and current(row.target) is None:
            if value in ("", False):
                return
            raise TaoKeyError(f"{key}: got {value!r}, but this is not built in this version")
        if row.convert is not None:
            try:
                value = row.convert(value)
            except ValueError as err:
                raise TaoKeyError(f"{key}: {err}".replace(f"{key}: {key}: ", f"{key}: ")) from None
        emit(row.target, value)


def resolve(tao: dict[str, Any], current: Callable[[str], Any]) -> list[tuple[str, Any]]:
    """(oneseg dotted key, value) for every TAO key, in order: single keys, then groups.

    `current(key)` gives the oneseg value a key has without the TAO keys (spec, overrides or
    default), for groups that complete or scale what is there."""
    out: list[tuple[str, Any]] = []

    def emit(key: str, value: Any) -> None:
        out.append((key, value))

    groups: dict[str, dict[str, Any]] = {}
    for key, value in tao.items():
        if value == MISSING:
            raise TaoKeyError(f"{key}: '???' marks a value to fill in; give it ({key}=...)")
        row = lookup(key)
        if row.kind == "group":
            groups.setdefault(row.target, {})[key] = value
        else:
            _single(key, row, value, emit, current)
    for name, values in groups.items():
        GROUPS[name](values, current, emit)
    if any(key.startswith("model.mask_former.") for key in tao):
        emit("model.arch", "mask2former")  # TAO's Mask2Former spec section
    return out


def _train_sources(values: dict, current, emit) -> None:
    """dataset.train.{images,annotations,panoptic}: strings (one source) or lists (several)."""
    lists = {}
    for key, value in values.items():
        name = key.rsplit(".", 1)[1]
        if value not in (None, ""):
            lists[M2F_SOURCE_KEYS.get(name, name)] = value
    lengths = {k: len(v) for k, v in lists.items() if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        raise TaoKeyError(f"dataset.train: lists of different lengths {lengths}")
    count = next(iter(lengths.values()), 1)
    for name, value in lists.items():
        if not isinstance(value, list):
            lists[name] = [value] * count if count == 1 else None
            if lists[name] is None:
                raise TaoKeyError(
                    f"dataset.train.{name}: got one value for {count} sources; give a list"
                )
    existing = current("dataset.train") or []
    sources = []
    for i in range(count):
        base = dict(existing[i]) if len(existing) == count and isinstance(existing[i], dict) else {}
        base.update({name: str(value[i]) for name, value in lists.items()})
        sources.append(base)
    emit("dataset.train", sources)


def _tasks(values: dict, current, emit) -> None:
    """model.test.*_on / model.task_toggling.*_on: which tasks evaluate runs."""
    tasks = list(current("evaluate.tasks"))
    for key, on in values.items():
        task = key.rsplit(".", 1)[1].removesuffix("_on")
        if not isinstance(on, bool):
            raise TaoKeyError(f"{key}: got {on!r}, expected true or false")
        if on and task not in tasks:
            tasks.append(task)
        if not on and task in tasks:
            tasks.remove(task)
    if not tasks:
        raise TaoKeyError(f"{', '.join(values)}: every task is off")
    emit("evaluate.tasks", [t for t in TASK_NAMES if t in tasks])


def _milestones(values: dict, current, emit) -> None:
    """train.optim.steps / milestones: TAO's MultiStep steps once per epoch, so its milestones
    are epochs; oneseg's are fractions of the whole run."""
    epochs = current("train.num_epochs")
    for key, value in values.items():
        if value in (None, []):
            continue
        if isinstance(value, list) and all(isinstance(v, float) for v in value):
            emit("train.optim.milestones", value)  # oneseg's own: fractions
            continue
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise TaoKeyError(f"{key}: got {value!r}, expected a list of epochs")
        if any(v <= 0 or v > epochs for v in value):
            raise TaoKeyError(f"{key}: got {value!r}, expected epochs in 1..{epochs}")
        emit("train.optim.milestones", [v / epochs for v in sorted(value)])


def _lsj_scale(values: dict, current, emit) -> None:
    low, high = current("dataset.augmentation.lsj_scale")
    low = values.get("dataset.min_scale", low)
    high = values.get("dataset.max_scale", high)
    emit("dataset.augmentation.lsj_scale", [low, high])


def _image_size(values: dict, current, emit) -> None:
    """inference.image_size [h, w]: oneseg keeps the aspect ratio, so the shorter side becomes
    eval_min_size and the longer one eval_max_size."""
    size = values["inference.image_size"]
    if size is None:
        return
    size = [size, size] if isinstance(size, int) else size
    if not (
        isinstance(size, list) and len(size) in (1, 2) and all(isinstance(s, int) for s in size)
    ):
        raise TaoKeyError(f"inference.image_size: got {size!r}, expected [height, width]")
    emit("dataset.augmentation.eval_min_size", min(size))
    emit("dataset.augmentation.eval_max_size", max(size))


def _freeze(values: dict, current, emit) -> None:
    names = values["train.freeze"] or []
    unknown = [n for n in names if n != "backbone"]
    if unknown:
        raise TaoKeyError(
            f"train.freeze: got {names!r}; oneseg freezes the backbone only (['backbone'])"
        )
    emit("train.freeze_backbone", bool(names))


def _clip(values: dict, current, emit) -> None:
    if values["train.clip_gradients.enabled"] is False:
        emit("train.clip_grad_norm", 0.0)


def _quantize(values: dict, current, emit) -> None:
    path = values["quantize.model_path"]
    if not path:
        return
    if str(path).endswith(".onnx"):
        emit("quantize.onnx_file", str(path))
        return
    if current("quantize.checkpoint") is not None:
        emit("quantize.checkpoint", str(path))
        return
    raise TaoKeyError(
        f"quantize.model_path: got {path!r}; oneseg quantizes an exported ONNX model: export it "
        "first (oneseg export, export.checkpoint=...) and give the .onnx here"
    )


def _dataset_type(values: dict, current, emit) -> None:
    """Mask2Former's per-split `type`: one annotation format for all splits."""
    jsonl = {k: v for k, v in values.items() if k.endswith(".annot_file") and v}
    kinds = {k: v for k, v in values.items() if k.endswith(".type") and v not in (None, "")}
    if len(set(kinds.values())) > 1:
        raise TaoKeyError(f"{', '.join(kinds)}: one dataset type for all splits, got {kinds}")
    for key, kind in kinds.items():
        if kind not in ("coco_panoptic", "coco"):
            raise TaoKeyError(
                f"{key}: got {kind!r}; oneseg reads coco_panoptic and coco (ADE's JSONL is not "
                "read: use label PNGs with dataset.type semantic)"
            )
        emit("dataset.type", kind)
    if jsonl:
        key = next(iter(jsonl))
        raise TaoKeyError(
            f"{key}: got {jsonl[key]!r}; ADE's JSONL annotations are not read: use label PNGs "
            "with dataset.type semantic"
        )


def _schedule(values: dict, current, emit) -> None:
    """TAO sizes its warmup-poly schedule as iters_per_epoch x num_epochs + 1 iterations (an
    epoch still runs over the whole loader)."""
    iters = values["train.iters_per_epoch"]
    if iters is None:
        return
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise TaoKeyError(f"train.iters_per_epoch: got {iters!r}, expected an integer >= 1")
    emit("train.optim.schedule_steps", iters * current("train.num_epochs") + 1)


def _quantize_mode(values: dict, current, emit) -> None:
    """TAO's static_ptq is oneseg's calibrated INT8 (`quantize.mode: static` where that key
    exists); weight-only quantization is not built."""
    mode = values["quantize.mode"]
    if mode is None:
        return
    native = {"static_ptq": "static", "static": "static", "dynamic": "dynamic"}
    if current("quantize.mode") is None:  # calibrated static INT8 is the only mode
        native = {"static_ptq": None, "static": None}
    if str(mode).lower() not in native:
        raise TaoKeyError(f"quantize.mode: got {mode!r}, expected one of {', '.join(native)}")
    if native[str(mode).lower()] is not None:
        emit("quantize.mode", native[str(mode).lower()])


GROUPS: dict[str, Callable] = {
    "dataset_type": _dataset_type,
    "schedule": _schedule,
    "quantize_mode": _quantize_mode,
    "backbone": resolve_backbone,
    "train_sources": _train_sources,
    "tasks": _tasks,
    "milestones": _milestones,
    "lsj_scale": _lsj_scale,
    "image_size": _image_size,
    "freeze": _freeze,
    "clip": _clip,
    "quantize": _quantize,
}
