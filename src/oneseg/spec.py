"""Loading, validating and describing experiment specs.

`load_spec(path, overrides)` reads a YAML file, applies dotted overrides (`model.hidden_dim=64`,
values parsed as YAML scalars or lists) and returns a checked `ExperimentConfig`. Every problem is
one `SpecError` line naming the dotted key, the value given and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from oneseg.backbones import BACKBONE_NAMES
from oneseg.config import ACTIONS, ExperimentConfig
from oneseg.presets import preset_values
from oneseg.redact import redact
from oneseg.spec_checks import check_expanded_size, check_spec_fields, check_spec_file
from oneseg.tao.defaults import dotted_keys, flavour, missing_defaults
from oneseg.tao.report import TaoReport
from oneseg.tao.resolve import MISSING, extract, resolve, split_overrides
from oneseg.tao.table import TaoKeyError


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the key."""


_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


# --------------------------------------------------------------------------- types


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_describe(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _refuse(value: Any, tp, key: str, expected: str | None = None):
    raise SpecError(f"{key}: got {value!r}, expected {expected or _describe(tp)}")


def _convert(value: Any, tp, key: str, meta: dict) -> Any:
    """`value` checked against type `tp` (and bounds in `meta`), converted where lossless."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _refuse(value, tp, key)
        return _build(tp, value, key)
    if origin is Literal:
        return _convert_choice(value, tp, key)
    if origin is list:
        if not isinstance(value, list):
            _refuse(value, tp, key)
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _refuse(value, tp, key)
        _, item_tp = get_args(tp)
        return {str(k): _convert(v, item_tp, f"{key}.{k}", meta) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _convert(value, option, key, meta)
            except SpecError:
                pass
        _refuse(value, tp, key)
    value = _convert_scalar(value, tp, key, meta)
    _check_bounds(value, key, meta)
    return value


def _convert_choice(value: Any, tp, key: str) -> Any:
    """One of a Literal's choices; "8" stands for 8 where the choices are numbers, a YAML
    boolean for on / off where those are the choices."""
    choices = get_args(tp)
    if isinstance(value, bool) and {"on", "off"} <= set(choices):
        value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
    if value not in choices and str(value) in [str(c) for c in choices]:
        value = type(choices[0])(value)
    if value not in choices:
        _refuse(value, tp, key)
    return value


def _convert_scalar(value: Any, tp, key: str, meta: dict) -> Any:
    """A bool, int, finite float or str (a number given for a string becomes its text)."""
    if tp is bool:
        if not isinstance(value, bool):
            _refuse(value, tp, key)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _refuse(value, tp, key)
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                _refuse(value, tp, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _refuse(value, tp, key)
        value = float(value)
        if not math.isfinite(value):
            _refuse(value, tp, key, "a finite number")
    elif tp is str:
        if value is None:  # `key:` with no value, as TAO specs leave paths to fill in
            value = ""
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            else:
                _refuse(value, tp, key)
        if "contains" in meta and meta["contains"] not in value:
            _refuse(value, tp, key, f"a string containing {meta['contains']}")
    return value


def _check_bounds(value: Any, key: str, meta: dict) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if "ge" in meta and value < meta["ge"]:
        raise SpecError(f"{key}: got {value!r}, expected a value >= {meta['ge']}")
    if "gt" in meta and value <= meta["gt"]:
        raise SpecError(f"{key}: got {value!r}, expected a value > {meta['gt']}")
    if "le" in meta and value > meta["le"]:
        raise SpecError(f"{key}: got {value!r}, expected a value <= {meta['le']}")


def _unknown_key(cls, name: str, prefix: str) -> SpecError:
    names = [fl.name for fl in dataclasses.fields(cls)]
    if not _KEY_NAME.fullmatch(name):  # a file that is no spec (/etc/shadow): show none of it
        where = f"'{prefix.rstrip('.')}' has" if prefix else "the file has"
        return SpecError(f"{where} a key that is not a spec key name; is it an oneseg spec?")
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
    return SpecError(f"{prefix}{name}: unknown key{hint}")


def _build(cls, data: dict, prefix: str):
    hints = _hints(cls)
    fields = {fl.name: fl for fl in dataclasses.fields(cls)}
    kwargs = {}
    base = f"{prefix}." if prefix else ""
    for name, value in data.items():
        if name not in fields:
            raise _unknown_key(cls, str(name), base)
        kwargs[name] = _convert(value, hints[name], base + name, fields[name].metadata)
    section = cls(**kwargs)
    object.__setattr__(section, _KEYS_SET, frozenset(kwargs))
    return section


_KEYS_SET = "_oneseg_keys_set"


def keys_set(section) -> frozenset[str] | None:
    """The keys of a spec section that its YAML or overrides gave (defaults are not among
    them); None for a section not read from a spec (built in code)."""
    return getattr(section, _KEYS_SET, None)


# --------------------------------------------------------------------------- loading


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"{text}: an override must look like a.b.c=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise SpecError(f"{key}: cannot parse value {raw!r} as YAML") from None
    check_expanded_size(key, value)
    return key.split("."), value


def _set_dotted(tree: dict, path: list[str], value: Any, cls=ExperimentConfig) -> None:
    """Put `value` at `path` in the nested dict, refusing paths that are not in the schema."""
    node, node_cls = tree, cls
    for depth, name in enumerate(path[:-1]):
        prefix = ".".join(path[:depth])
        prefix = f"{prefix}." if prefix else ""
        field_names = {fl.name for fl in dataclasses.fields(node_cls)}
        if name not in field_names:
            raise _unknown_key(node_cls, name, prefix)
        child_tp = _hints(node_cls)[name]
        if not dataclasses.is_dataclass(child_tp):
            raise SpecError(f"{prefix}{name}.{path[depth + 1]}: '{prefix}{name}' has no sub-keys")
        if node.get(name) is not None and not isinstance(node[name], dict):
            # the spec gave a scalar where a section belongs: refuse, as the spec alone is
            raise SpecError(f"{prefix}{name}: got {node[name]!r}, expected a mapping")
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node, node_cls = node[name], child_tp
    last = path[-1]
    if last not in {fl.name for fl in dataclasses.fields(node_cls)}:
        prefix = ".".join(path[:-1])
        raise _unknown_key(node_cls, last, f"{prefix}." if prefix else "")
    node[last] = value


def spec_from_dict(data: dict | None, overrides: list[str] = ()) -> ExperimentConfig:
    parsed = [_parse_override(text) for text in overrides]
    tree, parsed, report = _resolve_tao_keys(copy.deepcopy(dict(data or {})), parsed)
    for path, value in parsed:
        _set_dotted(tree, path, value)
    spec = _build(ExperimentConfig, tree, "")
    _check_spec(spec)
    spec.tao = report  # not a spec field: what the TAO keys became (dump_spec, explain)
    spec.missing = [key for key, value in _leaves(spec, "") if value == MISSING]
    if report is not None:
        spec.missing += report.resolution.missing
    return spec


# --------------------------------------------------------------------------- TAO keys
# TAO keys (oneseg.tao.table) are taken out of the tree and the overrides and resolved into
# oneseg keys before anything else is read; a TAO key in the file yields to an oneseg override
# and a TAO override wins over the file, as any override does.


def _resolve_tao_keys(tree: dict, parsed: list) -> tuple[dict, list, TaoReport | None]:
    try:
        given = set(dotted_keys(tree))
        for path, _ in parsed:
            given.update(".".join(path[: i + 1]) for i in range(len(path)))
        values = {k: v for k, v in _flat(tree).items()}
        values.update({".".join(path): value for path, value in parsed})
        kind = flavour(sorted(given), values)
        defaults = missing_defaults(kind, given)
        for key, value in defaults:  # TAO's defaults, read as if the spec gave them
            _put(tree, key.split("."), copy.deepcopy(value))
        found: dict = {}
        tree = extract(tree, "", ExperimentConfig, found)
        from_overrides, parsed = split_overrides(parsed, ExperimentConfig)
        found.update(from_overrides)
        if not found:
            return tree, parsed, None
        current = _current_value(tree, parsed)
        overridden = {".".join(path) for path, _ in parsed}
        resolution = resolve(found, current, kind, given, overridden)
    except TaoKeyError as err:
        raise SpecError(str(err)) from None
    for key, value in resolution.assignments:
        _set_dotted(tree, key.split("."), value)
    if kind is None and all(_is_oneseg_key(key) for key in found):
        return tree, parsed, None  # oneseg's own keys that TAO spells the same way
    return tree, parsed, TaoReport(kind, defaults, resolution)


def _is_oneseg_key(key: str) -> bool:
    cls = ExperimentConfig
    for name in key.split("."):
        if not dataclasses.is_dataclass(cls) or name not in {
            f.name for f in dataclasses.fields(cls)
        }:
            return False
        cls = _hints(cls)[name]
    return True


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _put(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for name in path[:-1]:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[path[-1]] = value


def _current_value(tree: dict, parsed: list):
    def current(key: str):
        """The value of an oneseg key from the native overrides, the tree or the default."""
        path = key.split(".")
        for override_path, value in reversed(parsed):
            if override_path == path:
                return value
        node = tree
        for name in path:
            if not isinstance(node, dict) or name not in node:
                break
            node = node[name]
        else:
            return node
        default = ExperimentConfig()
        for name in path:
            default = getattr(default, name, None)
        if isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
            default = [dataclasses.asdict(d) for d in default]
        return default

    return current


def _leaves(node, prefix: str):
    """(dotted key, value) of every non-section value of a spec."""
    for fl in dataclasses.fields(node):
        value = getattr(node, fl.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{fl.name}.")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                yield from _leaves(item, f"{prefix}{fl.name}[{i}].")
        else:
            yield f"{prefix}{fl.name}", value


def _check_spec(spec: ExperimentConfig) -> None:
    """Checks across a field's type: names that must be known ('???' is checked by the action
    that reads it, `check_inputs`)."""
    if spec.model.backbone not in BACKBONE_NAMES:
        raise SpecError(
            f"model.backbone: got {spec.model.backbone!r}, expected one of "
            f"{', '.join(BACKBONE_NAMES)}"
        )
    check_spec_fields(spec)
    for section in ("inference", "evaluate"):
        tile = getattr(spec, section).tile
        size = tile.size or spec.dataset.augmentation.eval_min_size
        if tile.overlap >= size:
            raise SpecError(
                f"{section}.tile.overlap: got {tile.overlap}, expected less than the window "
                f"side {size} ({section}.tile.size, 0 = dataset.augmentation.eval_min_size)"
            )


def load_spec(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """The checked spec of a YAML file (or the defaults when `path` is None) with overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path}: spec file not found")
        check_spec_file(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a YAML spec (not UTF-8 text)") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise SpecError(f"{path}: not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: the spec must be a mapping of sections")
        check_expanded_size(path, data)
        if not all(isinstance(k, str) and _KEY_NAME.fullmatch(k) for k in data):
            # lines of another kind of file (/etc/shadow) read as keys: show none of them
            raise SpecError(f"{path}: a top-level key is not a key name; is it an oneseg spec?")
    return spec_from_dict(data, overrides)


def spec_to_dict(spec) -> dict:
    return dataclasses.asdict(spec)


def dump_spec(spec) -> str:
    text = yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=None)
    report = getattr(spec, "tao", None)
    text = (report.yaml_comment() if report is not None else "") + text
    return redact(text)  # a storage URL's password stays out of every written spec


# --------------------------------------------------------------------------- template / schema

_SECTIONS_OF = {
    "train": ("results_dir", "model", "dataset", "train"),
    "evaluate": ("results_dir", "model", "dataset", "evaluate"),
    "inference": ("results_dir", "model", "dataset", "inference"),
    "export": ("results_dir", "model", "dataset", "export"),
    "gen_trt_engine": ("results_dir", "dataset", "gen_trt_engine"),
    "quantize": ("results_dir", "model", "dataset", "quantize"),
    "automl": ("results_dir", "model", "dataset", "train", "evaluate", "automl"),
    "push": ("results_dir", "model", "dataset", "train", "push"),
    "serve": ("results_dir", "model", "dataset", "serve"),
}


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")


def _template_lines(obj, indent: int) -> list[str]:
    lines = []
    pad = "  " * indent
    for fl in dataclasses.fields(obj):
        value = getattr(obj, fl.name)
        help_text = fl.metadata.get("help", "")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{fl.name}:  # {help_text}")
            lines.extend(_template_lines(value, indent + 1))
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{pad}{fl.name}:  # {help_text}")
            for item in value:
                item_lines = _template_lines(item, indent + 2)
                first = item_lines[0].lstrip()
                lines.append(f"{pad}  - {first}")
                lines.extend(item_lines[1:])
        else:
            lines.append(f"{pad}{fl.name}: {_yaml_value(value)}  # {help_text}")
    return lines


def template(action: str, preset: str | None = None) -> str:
    """A complete, commented default spec for `action` that loads back to the defaults, or to
    the published recipe `preset` (see `oneseg.presets`)."""
    if action not in ACTIONS:
        raise SpecError(f"{action}: unknown action; expected one of {', '.join(ACTIONS)}")
    if preset is None:
        spec = ExperimentConfig()
        lines = [
            f"# oneseg {action} spec: every key with its default. Run: oneseg {action} -e FILE"
        ]
    else:
        try:
            spec = spec_from_dict(preset_values(preset))
        except ValueError as err:
            raise SpecError(str(err)) from None
        lines = [
            f"# oneseg {action} spec, preset {preset}: the published recipe (see oneseg.presets), "
            f"every other key at its default. Run: oneseg {action} -e FILE"
        ]
    for fl in dataclasses.fields(spec):
        if fl.name not in _SECTIONS_OF[action]:
            continue
        value = getattr(spec, fl.name)
        if dataclasses.is_dataclass(value):
            lines.append("")
            lines.append(f"{fl.name}:  # {fl.metadata.get('help', '')}")
            lines.extend(_template_lines(value, 1))
        else:
            lines.append(f"{fl.name}: {_yaml_value(value)}  # {fl.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


def _schema_of(tp, default: Any, meta: dict) -> dict:
    origin = get_origin(tp)
    out: dict[str, Any] = {}
    if meta.get("help"):
        out["description"] = meta["help"]
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        instance = default if default is not None else tp()
        out.update(
            type="object",
            additionalProperties=False,
            properties={
                fl.name: _schema_of(hints[fl.name], getattr(instance, fl.name), fl.metadata)
                for fl in dataclasses.fields(tp)
            },
        )
        return out
    if origin is Literal:
        out["enum"] = list(get_args(tp))
    elif origin is list:
        (item_tp,) = get_args(tp)
        out.update(type="array", items=_schema_of(item_tp, None, {}))
    elif origin is dict:
        out.update(type="object", additionalProperties=_schema_of(get_args(tp)[1], None, {}))
    elif origin in (typing.Union, types.UnionType):
        out["anyOf"] = [_schema_of(option, None, {}) for option in get_args(tp)]
    else:
        out["type"] = {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]
    for bound, name in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum")):
        if bound in meta:
            out[name] = meta[bound]
    if default is not None and not dataclasses.is_dataclass(default):
        out["default"] = (
            [dataclasses.asdict(d) for d in default]
            if isinstance(default, list) and default and dataclasses.is_dataclass(default[0])
            else default
        )
    return out


def json_schema(action: str) -> dict:
    """JSON Schema (draft 2020-12) of the spec sections `action` reads."""
    if action not in ACTIONS:
        raise SpecError(f"{action}: unknown action; expected one of {', '.join(ACTIONS)}")
    full = _schema_of(ExperimentConfig, ExperimentConfig(), {})
    props = {k: v for k, v in full["properties"].items() if k in _SECTIONS_OF[action]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"oneseg {action} spec",
        "type": "object",
        "additionalProperties": True,
        "properties": props,
    }


# --------------------------------------------------------------------------- input files

# the files each action reads (folders of images are named too): checked to exist before any
# work, and fetched first when they are URLs (`oneseg.local_inputs`)
INPUT_FILES = {
    "train": (
        "model.pretrained",
        "dataset.label_map",
        "train.resume_training_checkpoint_path",
        "train.pretrained_model",
        "train.pretrained_backbone",
    ),
    "evaluate": (
        "model.pretrained",
        "dataset.label_map",
        "evaluate.checkpoint",
        "evaluate.onnx_file",
        "evaluate.trt_engine",
    ),
    "inference": (
        "model.pretrained",
        "dataset.label_map",
        "inference.checkpoint",
        "inference.onnx_file",
        "inference.trt_engine",
    ),
    "export": ("model.pretrained", "export.checkpoint", "export.check_image", "dataset.label_map"),
    "push": ("model.pretrained", "push.checkpoint", "push.metrics_file"),
    "gen_trt_engine": ("gen_trt_engine.onnx_file",),
    "quantize": (
        "quantize.onnx_file",
        "dataset.quant_calibration_dataset.images_dir",
        "dataset.label_map",
    ),
    "serve": ("serve.model",),
    "check": ("dataset.label_map",),
}


def _get_dotted(spec, key: str):
    value = spec
    for name in key.split("."):
        value = getattr(value, name)
    return value


def _hub_name(key: str, value: str) -> bool:
    """A model named on the Hugging Face Hub (hf://ORG/NAME[@REV]; timm's hf-hub:ORG/NAME for
    a backbone): fetched, or refused with its reason, when the action opens it."""
    return value.startswith("hf://") or (
        key == "train.pretrained_backbone" and value.startswith("hf-hub:")
    )


def check_inputs(spec: ExperimentConfig, action: str) -> None:
    """Refuse, before any work starts, a spec whose input files or folders do not exist (URLs
    are checked when they are read: `oneseg.local_inputs`)."""
    from oneseg.remote import is_url

    for key in getattr(spec, "missing", []):  # TAO's '???': only what this action reads
        if key.split(".")[0] in _SECTIONS_OF.get(action, (key.split(".")[0],)):
            raise SpecError(f"{key}: '???' marks a value to fill in; give it ({key}=...)")
    keys = list(INPUT_FILES.get(action, ()))
    sources = {
        "train": [(f"dataset.train[{i}]", s) for i, s in enumerate(spec.dataset.train)]
        + [("dataset.val", spec.dataset.val)],
        "evaluate": [
            (f"dataset.{spec.evaluate.split}", getattr(spec.dataset, spec.evaluate.split))
        ],
    }.get(action, [])
    for key in keys:
        value = _get_dotted(spec, key)
        if value and not is_url(value) and not Path(value).exists() and not _hub_name(key, value):
            raise SpecError(f"{key}: got {value!r}, no such file or folder")
    for prefix, source in sources:
        for name in ("images", "annotations", "panoptic", "labels"):
            value = getattr(source, name)
            if value and not is_url(value) and not Path(value).exists():
                raise SpecError(f"{prefix}.{name}: got {value!r}, no such file or folder")
    if action in ("evaluate", "inference"):
        section = getattr(spec, action)
        if not (
            section.checkpoint or spec.model.pretrained or section.onnx_file or section.trt_engine
        ):
            raise SpecError(
                f"{action}.checkpoint is empty (and model.pretrained, {action}.onnx_file and "
                f"{action}.trt_engine too): name the model"
            )
    if action == "evaluate":
        source = getattr(spec.dataset, spec.evaluate.split)
        if not (source.images or source.annotations or source.labels):
            raise SpecError(
                f"evaluate.split: got {spec.evaluate.split!r}, but dataset.{spec.evaluate.split} "
                "names no images; set its images and annotations (or labels)"
            )


def section_from_dict(cls, data: dict, prefix: str):
    """A checked spec section (e.g. ModelConfig) from a nested dict; keys named from `prefix`."""
    return _build(cls, data, prefix)
