"""The search space of a study: which spec keys it varies, and over what.

A searched key is a dotted spec key (`train.optim.lr`). Its range comes from the schema in
`oneseg.config` and from the spec's own value, unless `automl.ranges.KEY` gives one:

- an enum (`Literal`) or a boolean: every allowed choice;
- a number bounded on both sides by the schema (`ge`/`le`): the whole interval, linear;
- learning rates, weight decay and the backbone multiplier: log scale, the spec's value divided
  and multiplied by 10, clipped to the schema's bounds;
- any other number: the spec's value / and x 4 (floats) or 2 (integers), clipped to the schema;
- a list of equal numbers (`crop_size: [512, 512]`): one number that fills every entry;
- a mapping of numbers (`dataset.task_prob`): one number per entry (the dataset normalises).

Strings, file paths and lists of unequal values are refused unless `automl.ranges` lists choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from oneseg.spec import SpecError, spec_from_dict, spec_to_dict

# searched when `automl.parameters` is empty: the keys published recipes tune first
POPULAR_PARAMETERS = (
    "train.optim.lr",
    "train.optim.weight_decay",
    "train.optim.backbone_multiplier",
    "model.num_queries",
    "dataset.augmentation.crop_size",
    "dataset.task_prob",
    "model.loss.no_object_weight",
)
LOG_SCALE_NAMES = ("lr", "weight_decay", "backbone_multiplier")  # last name of a dotted key
LOG_SPREAD = 10.0
FLOAT_SPREAD = 4.0
INT_SPREAD = 2


@dataclass(frozen=True)
class SearchParam:
    """One searched key. `choices` for a choice; `low`/`high` (and `log`) for a number;
    `repeat` > 0 when the key holds a list that the one sampled number fills."""

    key: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()
    repeat: int = 0

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key}: one of {list(self.choices)}"
        scale = " (log)" if self.log else ""
        fill = f" in every one of {self.repeat} entries" if self.repeat else ""
        return f"{self.key}: {self.kind} in [{self.low:g}, {self.high:g}]{scale}{fill}"


def search_space(spec) -> list[SearchParam]:
    """The searched parameters of `spec.automl`, each checked against the schema; every problem
    is a `SpecError` naming the key."""
    automl = spec.automl
    keys = list(automl.parameters) or list(POPULAR_PARAMETERS)
    for key in automl.disabled_parameters:
        _resolve(spec, key, "automl.disabled_parameters")
    disabled = set(automl.disabled_parameters)
    leaves: list[str] = []
    for key in keys:
        if key in disabled:
            continue
        for leaf in _leaves(spec, key):
            if leaf not in disabled and leaf not in leaves:
                leaves.append(leaf)
    unknown = sorted(set(automl.ranges) - set(leaves) - set(keys))
    if unknown:
        raise SpecError(
            f"automl.ranges.{unknown[0]}: not a searched parameter; searched: {', '.join(leaves)}"
        )
    if not leaves:
        raise SpecError("automl.parameters: nothing left to search")
    tree = spec_to_dict(spec)
    space = [_param(spec, leaf, automl.ranges.get(leaf)) for leaf in leaves]
    for param in space:
        _check_ends(tree, param)
    return space


def suggest(trial, space: list[SearchParam]) -> dict[str, Any]:
    """The values an Optuna trial draws for every parameter, by key."""
    values = {}
    for p in space:
        if p.kind == "choice":
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high))
        else:
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log)
    return values


def apply_values(tree: dict, space: list[SearchParam], values: dict[str, Any]) -> dict:
    """A copy of the nested spec dict `tree` with `values` put at their keys."""
    tree = copy.deepcopy(tree)
    for param in space:
        *parents, last = param.key.split(".")
        node = tree
        for name in parents:
            node = node[name]
        value = values[param.key]
        node[last] = [value] * param.repeat if param.repeat else value
    return tree


# --------------------------------------------------------------------------- resolving keys


def _resolve(spec, key: str, where: str) -> tuple[Any, dict, Any]:
    """(type, schema metadata, current value) of a dotted key, or a SpecError naming it."""
    node, tp, meta = spec, type(spec), {}
    names = key.split(".")
    for depth, name in enumerate(names):
        prefix = ".".join(names[:depth])
        if dataclasses.is_dataclass(tp):
            fields = {fl.name: fl for fl in dataclasses.fields(tp)}
            known = list(fields)
        elif get_origin(tp) is dict and isinstance(node, dict):
            known = list(node)
        else:
            raise SpecError(f"{where}: {key!r} is not a spec key ('{prefix}' has no sub-keys)")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            dotted = f"{prefix}.{close[0]}" if prefix and close else (close[0] if close else "")
            hint = f"; did you mean '{dotted}'?" if close else ""
            raise SpecError(f"{where}: {key!r} is not a spec key{hint}")
        if dataclasses.is_dataclass(tp):
            meta = dict(fields[name].metadata)
            tp = typing.get_type_hints(tp)[name]
            node = getattr(node, name)
        else:
            meta, tp, node = {}, get_args(tp)[1], node[name]
    return tp, meta, node


def _leaves(spec, key: str) -> list[str]:
    """`key` itself, or one key per entry when it names a mapping of numbers."""
    tp, _, value = _resolve(spec, key, "automl.parameters")
    if get_origin(tp) is dict and get_args(tp)[1] in (int, float) and value:
        return [f"{key}.{name}" for name in value]
    return [key]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param(spec, key: str, given: list | None) -> SearchParam:
    tp, meta, value = _resolve(spec, key, "automl.parameters")
    origin = get_origin(tp)
    if origin is Literal or tp is bool:
        choices = tuple(given) if given is not None else (get_args(tp) or (False, True))
        return SearchParam(key, "choice", choices=choices)
    repeat = 0
    if origin is list and get_args(tp)[0] in (int, float) and value and len(set(value)) == 1:
        tp, repeat, value = get_args(tp)[0], len(value), value[0]
    if tp not in (int, float):
        if given is not None:
            return SearchParam(key, "choice", choices=tuple(given))
        numbers = origin is list and get_args(tp)[0] in (int, float)
        what = "a list of unequal numbers" if numbers else _type_name(tp)
        raise SpecError(
            f"automl.parameters: {key} is {what}, not a number, boolean or enum; list its "
            f"choices in automl.ranges.{key} to search it"
        )
    if given is not None and not (len(given) == 2 and all(map(_is_number, given))):
        return SearchParam(key, "choice", choices=tuple(given), repeat=repeat)
    log = key.rsplit(".", 1)[-1] in LOG_SCALE_NAMES
    if given is not None:
        low, high = given
        if tp is int and not (isinstance(low, int) and isinstance(high, int)):
            raise SpecError(f"automl.ranges.{key}: got {given}, expected two integers")
        _check_bounds(key, low, high, meta, log)
    else:
        low, high = _derived_range(key, value, meta, tp is int, log)
    return SearchParam(key, "int" if tp is int else "float", low, high, log, repeat=repeat)


def _type_name(tp) -> str:
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a section" if dataclasses.is_dataclass(tp) else "a mapping"
    return {str: "a string"}.get(tp, str(tp))


def _derived_range(key: str, value, meta: dict, is_int: bool, log: bool) -> tuple:
    """The schema's interval when it bounds both sides, else the spec's value spread out and
    clipped to the one bound."""
    if not log and "ge" in meta and "le" in meta:
        low, high = meta["ge"], meta["le"]
    else:
        if not _is_number(value) or value <= 0:
            raise SpecError(
                f"automl.parameters: {key} is {value!r} and the schema does not bound it on "
                f"both sides, so no range follows; give automl.ranges.{key}: [low, high]"
            )
        spread = LOG_SPREAD if log else (INT_SPREAD if is_int else FLOAT_SPREAD)
        low, high = value / spread, value * spread
    low = max(low, meta.get("ge", low))
    high = min(high, meta.get("le", high))
    if is_int:
        low, high = int(math.ceil(low)), int(math.floor(high))
    if not low < high:
        raise SpecError(f"automl.parameters: {key} leaves no range ({low} to {high})")
    return low, high


def _check_bounds(key: str, low, high, meta: dict, log: bool) -> None:
    where = f"automl.ranges.{key}: got [{low}, {high}]"
    if not low < high:
        raise SpecError(f"{where}, expected low < high")
    if log and low <= 0:
        raise SpecError(f"{where}, expected low > 0 (searched in log scale)")
    if "ge" in meta and low < meta["ge"]:
        raise SpecError(f"{where}, the schema allows >= {meta['ge']}")
    if "gt" in meta and low <= meta["gt"]:
        raise SpecError(f"{where}, the schema allows > {meta['gt']}")
    if "le" in meta and high > meta["le"]:
        raise SpecError(f"{where}, the schema allows <= {meta['le']}")


def _check_ends(tree: dict, param: SearchParam) -> None:
    """Every choice (or both ends of a range) must make a spec the schema accepts."""
    values = param.choices if param.kind == "choice" else (param.low, param.high)
    for value in values:
        try:
            spec_from_dict(apply_values(tree, [param], {param.key: value}))
        except SpecError as err:
            raise SpecError(f"automl.ranges.{param.key}: {value!r} is refused: {err}") from None


def searched_tree(base_tree: dict, space, values: dict, metric: str) -> dict:
    """The nested spec of a trial: the base spec with the sampled values, and model_best.ckpt
    kept by the searched metric."""
    tree = apply_values(base_tree, space, values)
    tree["train"]["monitor"] = metric
    return tree
