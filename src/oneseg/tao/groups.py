"""TAO keys resolved together: each function of `GROUPS` reads the values of its group's keys
and emits oneseg assignments through a `Context`.

A group reads what TAO's own code does with its keys (`nvidia_tao_pytorch/cv/{oneformer,
mask2former}/`): which split key a loader opens, how a dataloader scales images, which
scheduler reads which list. `ctx.flavour` says which TAO model the spec is for (see
`oneseg.tao.defaults`); a spec that is no TAO spec keeps oneseg's meaning of shared keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from oneseg.tao.table import M2F_SOURCE_KEYS, TaoKeyError

TASK_NAMES = ("semantic", "instance", "panoptic")
TYPE_FILE = {"coco_panoptic": "panoptic_json", "coco": "instance_json", "ade": "annot_file"}


@dataclass
class Context:
    """What a group sees: the current oneseg values (the spec's, TAO's already emitted, or
    the defaults; a native override always wins), the spec's TAO flavour, the dotted keys the
    spec and overrides give, and where it writes."""

    lookup: Callable[[str], Any]
    flavour: str | None
    given: set[str]
    emitted: list[tuple[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refusals: dict[str, str] = field(default_factory=dict)  # action -> one-line refusal

    def current(self, key: str) -> Any:
        return self.lookup(key)

    def emit(self, key: str, value: Any) -> None:
        self.emitted.append((key, value))

    def note(self, text: str) -> None:
        self.notes.append(text)


def _last(key: str) -> str:
    return key.rsplit(".", 1)[1]


# --------------------------------------------------------------------------- data sources


def _source_type(values: dict, ctx: Context) -> str | None:
    """One annotation format for all splits: the splits' `type`, else what their keys imply."""
    kinds = {k: str(v).lower() for k, v in values.items() if _last(k) == "type" and v}
    if len(set(kinds.values())) > 1:
        raise TaoKeyError(f"{', '.join(kinds)}: one dataset type for all splits, got {kinds}")
    for key, kind in kinds.items():
        if kind not in TYPE_FILE:
            raise TaoKeyError(f"{key}: got {kind!r}, expected one of {', '.join(TYPE_FILE)}")
        return kind
    given = {_last(k) for k, v in values.items() if v not in (None, "")}
    for kind, name in TYPE_FILE.items():
        if name in given:
            ctx.note(f"dataset.type: {kind} (TAO's loader for {name}; no split names a type)")
            return kind
    return None


def _split_source(split: str, values: dict, kind: str | None, ctx: Context) -> dict:
    """TAO's names of one split's files -> oneseg's (images, annotations, panoptic)."""
    given = {
        _last(k): v
        for k, v in values.items()
        if k.startswith(f"dataset.{split}.") and v not in (None, "")
    }
    out = {name: given[name] for name in ("images", "annotations", "panoptic") if name in given}
    for name in ("img_dir", "panoptic_dir"):
        if name in given:
            out[M2F_SOURCE_KEYS[name]] = given[name]
    files = [n for n in ("panoptic_json", "instance_json", "annot_file") if n in given]
    if files:
        wanted = TYPE_FILE.get(kind or "")
        if wanted in files:
            out["annotations"] = given[wanted]
            for other in (f for f in files if f != wanted):
                ctx.note(f"dataset.{split}.{other}: not read (TAO's {kind} loader reads {wanted})")
        else:
            raise TaoKeyError(
                f"dataset.{split}.{files[0]}: TAO's {kind} loader reads {wanted}, not {files[0]}"
            )
    if "root_dir" in given:
        if kind == "ade":
            out["images"] = given["root_dir"]
        else:
            ctx.note(f"dataset.{split}.root_dir: unused (TAO reads it for ade only)")
    return out


def sources(values: dict, ctx: Context) -> None:
    """dataset.{train,val,test}.* file keys (OneFormer's and Mask2Former's names) and type."""
    kind = _source_type(values, ctx)
    if kind is not None:
        ctx.emit("dataset.type", kind)
    train = _split_source("train", values, kind, ctx)
    if train:
        _train_sources(train, ctx)
    for split in ("val", "test"):
        for name, value in _split_source(split, values, kind, ctx).items():
            if isinstance(value, list):  # oneseg evaluates one source
                if len(value) != 1:
                    raise TaoKeyError(
                        f"dataset.{split}.{name}: got {len(value)} sources; oneseg evaluates "
                        "one: give one (or merge their annotation files)"
                    )
                value = value[0]
            ctx.emit(f"dataset.{split}.{name}", str(value))
    test_images = values.get("dataset.test.img_dir")
    if ctx.flavour == "mask2former" and test_images and "inference.images" not in ctx.given:
        ctx.emit("inference.images", str(test_images))  # what TAO Mask2Former's inference reads


def _train_sources(lists: dict, ctx: Context) -> None:
    """Strings (one source) or lists (several sources, zipped) -> the dataset.train list."""
    lengths = {k: len(v) for k, v in lists.items() if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        raise TaoKeyError(f"dataset.train: lists of different lengths {lengths}")
    count = next(iter(lengths.values()), 1)
    for name, value in list(lists.items()):
        if not isinstance(value, list):
            if count != 1:
                raise TaoKeyError(
                    f"dataset.train.{name}: got one value for {count} sources; give a list"
                )
            lists[name] = [value]
    existing = ctx.current("dataset.train") or []
    out = []
    for i in range(count):
        base = dict(existing[i]) if len(existing) == count and isinstance(existing[i], dict) else {}
        base.update({name: str(value[i]) for name, value in lists.items()})
        out.append(base)
    ctx.emit("dataset.train", out)


def target_size(values: dict, ctx: Context) -> None:
    """Mask2Former's per-split target_size: images stretched to [h, w] before anything else."""
    for key, size in values.items():
        if not size:
            continue
        split = key.split(".")[1]
        if split == "train":
            raise TaoKeyError(
                f"{key}: got {size!r}; TAO stretches training images to it before augmenting, "
                "which oneseg does not do: remove it"
            )
        ctx.emit(
            "dataset.augmentation.eval_resize" if split == "val" else "inference.resize",
            _hw(key, size),
        )


def _hw(key: str, size: Any) -> list[int]:
    size = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if isinstance(size, list) and len(size) == 1:
        size = size * 2
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise TaoKeyError(f"{key}: got {size!r}, expected [height, width] or one size")
    return [int(s) for s in size]


# --------------------------------------------------------------------------- model and data


def pixel(values: dict, ctx: Context) -> None:
    """dataset.pixel_mean/std: TAO Mask2Former divides images by 255 before normalising."""
    for key, value in values.items():
        if value is None:
            continue
        target = "model." + _last(key)
        if ctx.flavour == "mask2former":
            if any(v > 1.0 for v in value):
                raise TaoKeyError(
                    f"{key}: got {value!r}; TAO Mask2Former reads it on the 0-1 scale (it "
                    "divides images by 255 first): give 0-1 values or model.{_last(key)} (0-255)"
                )
            value = [round(v * 255.0, 6) for v in value]
        ctx.emit(target, value)


def dropout(values: dict, ctx: Context) -> None:
    """TAO builds its pixel decoder with this dropout; OneFormer's query transformer too."""
    for key, value in values.items():
        if value is None:
            continue
        ctx.emit("model.pixel_decoder.dropout", value)
        if key.startswith("model.one_former."):
            ctx.emit("model.query_dropout", value)


def train_min_size(values: dict, ctx: Context) -> None:
    """Mask2Former's loader expands zero or one size into a multi-scale range."""
    sizes = values["dataset.augmentation.train_min_size"]
    if ctx.flavour == "mask2former" and isinstance(sizes, list) and len(sizes) <= 1:
        short = int(sizes[0]) if sizes else min(ctx.current("dataset.augmentation.crop_size"))
        sizes = list(range(short // 2, short * 2 + 64, 64))
        ctx.note(f"dataset.augmentation.train_min_size: {sizes[0]}..{sizes[-1]} step 64 (TAO)")
    ctx.emit("dataset.augmentation.train_min_size", sizes)


def contiguous(values: dict, ctx: Context) -> None:
    on = values["dataset.contiguous_id"]
    if ctx.flavour is None or on is not False:
        ctx.emit("dataset.contiguous_id", on)
        return
    ctx.emit("dataset.contiguous_id", True)
    ctx.emit("model.num_classes", 0)  # the label map's count; TAO's covered the raw ids
    ctx.note(
        "dataset.contiguous_id false: one class per label-map category, counted from the label "
        "map (TAO's num_classes covered the raw ids); outputs carry the same category ids"
    )


def mode(values: dict, ctx: Context) -> None:
    """Mask2Former's mode: the task it trains for, and (TAO) the task its export holds."""
    task = values["model.mode"]
    if task is None:
        return
    ctx.emit("model.mode", task)
    if ctx.flavour == "mask2former" and "export.task" not in ctx.given:
        ctx.emit("export.task", task)


def eval_resize(values: dict, ctx: Context) -> None:
    size = values["dataset.image_size"]
    if size not in (None, "", []):
        ctx.emit("dataset.augmentation.eval_resize", _hw("dataset.image_size", size))


def image_size(values: dict, ctx: Context) -> None:
    size = values["inference.image_size"]
    if size not in (None, "", []):
        ctx.emit("inference.resize", _hw("inference.image_size", size))


def short_edge_scale(values: dict, ctx: Context) -> None:
    low = values.get("dataset.min_scale", 0.1)
    high = values.get("dataset.max_scale", 2.0)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low <= high):
        raise TaoKeyError(
            f"dataset.min_scale, dataset.max_scale: got {low!r}, {high!r}; expected 0 < min <= max"
        )
    ctx.emit("dataset.augmentation.short_edge_scale", [float(low), float(high)])
