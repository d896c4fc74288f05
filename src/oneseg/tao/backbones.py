"""TAO backbone settings -> oneseg backbone names, and the names the spec check accepts.

TAO names a backbone by family (`name: D2SwinTransformer` / `D2DiNAT` in OneFormer specs,
`type: swin` with `swin.type: tiny` in Mask2Former specs) and gives its sizes; oneseg names the
size (`swin_large`) and keeps `model.backbone_*` for what differs from it. Absent TAO keys take
TAO's defaults: OneFormer's Swin is Swin-L with window 12, Mask2Former's is Swin-T (window 7
unless `swin.window_size` says otherwise), OneFormer's DiNAT is DiNAT-L.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oneseg.backbones import BACKBONE_NAMES, DINAT_SIZES, SWIN_SIZES
from oneseg.tao.table import TaoKeyError

_FAMILY_NAMES = {"d2swintransformer": "swin", "swin": "swin", "d2dinat": "dinat", "dinat": "dinat"}
# TAO's defaults for a family named without sizes.
_TAO_DEFAULT = {("name", "swin"): "swin_large", ("type", "swin"): "swin_tiny"}


def known_names() -> str:
    return ", ".join(["D2SwinTransformer", "D2DiNAT", "swin", "dinat", *BACKBONE_NAMES])


def _family(values: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(family, oneseg name if named outright, which key named it)."""
    for key in ("name", "type"):
        given = values.get(f"model.backbone.{key}")
        if given in (None, ""):
            continue
        if given in BACKBONE_NAMES:
            return given.split("_")[0], given, key
        family = _FAMILY_NAMES.get(str(given).lower())
        if family is None:
            raise TaoKeyError(
                f"model.backbone.{key}: got {given!r}, expected one of {known_names()}"
            )
        return family, None, key
    for family in ("swin", "dinat"):
        if any(k.startswith(f"model.backbone.{family}.") for k in values):
            return family, None, None
    return None, None, None


def _pick_size(family: str, sub: dict[str, Any], by: str | None) -> str:
    sizes = SWIN_SIZES if family == "swin" else DINAT_SIZES
    named = sub.get("type")
    if named is not None:
        name = f"{family}_{str(named).lower()}"
        if name not in sizes:
            raise TaoKeyError(
                f"model.backbone.{family}.type: got {named!r}, expected one of "
                f"{', '.join(n.split('_')[1] for n in sizes)}"
            )
        return name
    if "embed_dim" not in sub:
        return _TAO_DEFAULT.get((by, family), f"{family}_large")
    depths = sub.get("depths")
    matches = [n for n, s in sizes.items() if s.embed_dim == sub["embed_dim"]]
    exact = [n for n in matches if depths is None or list(sizes[n].depths) == list(depths)]
    if exact or matches:
        return (exact or matches)[0]
    return f"{family}_tiny"  # an unnamed width: every size key below is set explicitly


def resolve_backbone(values: dict[str, Any], current, emit: Callable[[str, Any], None]) -> None:
    """model.backbone.{name,type,freeze_at,swin.*,dinat.*} -> model.backbone(+_*)."""
    freeze_at = values.get("model.backbone.freeze_at")
    if freeze_at not in (None, 0):
        raise TaoKeyError(
            f"model.backbone.freeze_at: got {freeze_at!r}; oneseg trains the whole backbone "
            "(0) or freezes all of it (train.freeze_backbone: true)"
        )
    family, outright, by = _family(values)
    if family is None:
        return
    prefix = f"model.backbone.{family}."
    sub = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix) and v is not None}
    other = "dinat" if family == "swin" else "swin"
    stray = [k for k in values if k.startswith(f"model.backbone.{other}.")]
    if stray and outright is None and by is None:
        raise TaoKeyError(
            f"{stray[0]}: both swin and dinat settings given; set model.backbone.name"
        )
    name = outright or _pick_size(family, sub, by)
    if name not in BACKBONE_NAMES:
        raise TaoKeyError(
            f"model.backbone: {name} is not built in this version; known: {known_names()}"
        )
    emit("model.backbone", name)
    size = (SWIN_SIZES if family == "swin" else DINAT_SIZES).get(name)
    embed, depths, heads, window, mlp = (
        (size.embed_dim, list(size.depths), list(size.num_heads), size.window, size.mlp_ratio)
        if size
        else (None, None, None, None, None)
    )
    if by == "type" and family == "swin" and "window_size" not in sub:
        sub["window_size"] = 7  # TAO Mask2Former's Swin default, whatever the size
    window_key = "window_size" if family == "swin" else "kernel_size"
    for key, default, target in (
        ("embed_dim", embed, "model.backbone_embed_dim"),
        ("depths", depths, "model.backbone_depths"),
        ("num_heads", heads, "model.backbone_num_heads"),
        (window_key, window, "model.backbone_window_size"),
    ):
        if key in sub and sub[key] != default:
            emit(target, sub[key])
    if family == "dinat":
        if "dilations" in sub:
            emit("model.backbone_dilations", sub["dilations"])
        if "mlp_ratio" in sub and float(sub["mlp_ratio"]) != mlp:
            raise TaoKeyError(
                f"model.backbone.dinat.mlp_ratio: got {sub['mlp_ratio']!r}; {name} has {mlp}"
            )
