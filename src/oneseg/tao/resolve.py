"""Reading a TAO-shaped spec: TAO keys out of the tree, resolved into oneseg keys.

`split_tao_keys` takes the TAO keys (those of `oneseg.tao.table.ALIASES`) out of a spec tree and
its overrides; `resolve` turns them into (oneseg key, value) assignments. Keys that belong
together (the backbone, the training sources, the task switches, the multistep milestones) are
resolved as groups by the functions of `oneseg.tao.run_groups.GROUPS`. `Resolution.lines`
says, key by key, what oneseg does with each TAO key (`oneseg tao explain`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oneseg.tao.groups import Context
from oneseg.tao.run_groups import GROUPS
from oneseg.tao.table import ALIASES, Alias, SpecWarning, TaoKeyError, is_prefix, lookup

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


@dataclass
class Resolution:
    """The oneseg assignments of a spec's TAO keys, in order, and what was done with each key."""

    assignments: list[tuple[str, Any]] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (TAO key(s), what oneseg does)
    refusals: dict[str, str] = field(default_factory=dict)  # action -> one-line refusal
    missing: list[str] = field(default_factory=list)  # TAO keys left '???' (to fill in)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _fmt(assignments: list[tuple[str, Any]]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in assignments)


def _single(key: str, row: Alias, value: Any, ctx: Context) -> str:
    """Resolve one non-group key into `ctx`; returns what was done, for the explanation."""
    if row.kind == "fixed":
        if value is not None and not _same(value, row.value):
            raise TaoKeyError(f"{key}: got {value!r}; oneseg builds only {row.value!r} ({row.how})")
        return f"fixed: oneseg builds {row.value!r} ({row.how})"
    if row.kind == "ignored":
        if value not in (None, "", [], {}) and not _same(value, row.value):
            warnings.warn(f"{key}: accepted and ignored ({row.how})", SpecWarning, stacklevel=6)
        return f"ignored: {row.how}"
    if value is None:
        return "unset: nothing to do"
    if row.optional and ctx.current(row.target) is None:
        if value in ("", False):
            return "unset: nothing to do"
        raise TaoKeyError(f"{key}: got {value!r}, but this is not built in this version")
    if row.convert is not None:
        try:
            value = row.convert(value)
        except ValueError as err:
            raise TaoKeyError(f"{key}: {err}".replace(f"{key}: {key}: ", f"{key}: ")) from None
    ctx.emit(row.target, value)
    return f"-> {row.target} = {value!r}" + ("" if row.how == "same meaning" else f" ({row.how})")


def resolve(
    tao: dict[str, Any],
    current: Callable[[str], Any],
    flavour: str | None = None,
    given: set[str] | None = None,
    overridden: set[str] | None = None,
) -> Resolution:
    """(oneseg dotted key, value) for every TAO key, in order: single keys, then groups.

    `current(key)` gives the oneseg value a key has without the TAO keys (spec, overrides or
    default); `flavour` is the TAO model of the spec (`oneseg.tao.defaults.flavour`); `given`
    the dotted keys the spec and overrides set; `overridden` the oneseg keys a native override
    sets (those win over anything a TAO key says)."""
    out = Resolution()
    emitted: dict[str, Any] = {}
    overridden = overridden or set()

    def lookup_value(key: str) -> Any:
        if key in emitted and key not in overridden:
            return emitted[key]
        return current(key)

    groups: dict[str, dict[str, Any]] = {}
    for key, value in tao.items():
        if value == MISSING:  # refused by the actions that read it (`oneseg.spec.check_inputs`)
            out.missing.append(key)
            out.lines.append((key, "'???': a value to fill in before an action reads it"))
            continue
        row = lookup(key)
        if row.kind == "group":
            groups.setdefault(row.target, {})[key] = value
            continue
        ctx = Context(lookup_value, flavour, given or set())
        out.lines.append((key, _single(key, row, value, ctx)))
        _collect(ctx, out, emitted)
    for name, values in groups.items():
        ctx = Context(lookup_value, flavour, given or set())
        GROUPS[name](values, ctx)
        what = _fmt(ctx.emitted) or "nothing to set"
        out.lines.append((", ".join(values), f"-> {what}" if ctx.emitted else what))
        out.lines += [("", f"  note: {n}") for n in ctx.notes]
        _collect(ctx, out, emitted)
    if flavour == "mask2former" and "model.arch" not in overridden:
        out.assignments.append(("model.arch", "mask2former"))  # TAO's Mask2Former spec
        out.lines.append(("(Mask2Former spec)", "-> model.arch = 'mask2former'"))
    return out


def _collect(ctx: Context, out: Resolution, emitted: dict[str, Any]) -> None:
    out.assignments += ctx.emitted
    emitted.update(ctx.emitted)
    out.refusals.update(ctx.refusals)
