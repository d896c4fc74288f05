"""TAO key groups of training and the actions (schedule, clipping, tasks, quantization), and
`GROUPS`, every group function by name. See `oneseg.tao.groups` for the `Context` they share."""

from __future__ import annotations

from collections.abc import Callable

from oneseg.tao import groups
from oneseg.tao.backbones import resolve_backbone
from oneseg.tao.groups import TASK_NAMES, Context
from oneseg.tao.table import TaoKeyError


def milestones(values: dict, ctx: Context) -> None:
    """TAO's MultiStepLR steps once per epoch, so its milestones are epochs (Mask2Former reads
    `milestones`, OneFormer `steps`); oneseg's are fractions of the run. Under poly TAO reads
    neither; an epoch past the run is never reached, in TAO as here."""
    scheduler = ctx.current("train.optim.lr_scheduler")
    epochs = ctx.current("train.num_epochs")
    for key, value in values.items():
        if value in (None, []):
            continue
        if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
            ctx.emit("train.optim.milestones", value)  # oneseg's own: fractions (bounds checked)
            continue
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise TaoKeyError(f"{key}: got {value!r}, expected a list of epochs")
        if scheduler != "multistep":
            ctx.note(f"{key}: unused under the {scheduler} schedule (as in TAO)")
            continue
        reached = sorted(v for v in value if 0 < v < epochs)
        if len(reached) < len(value):
            ctx.note(
                f"{key}: epochs {sorted(set(value) - set(reached))} lie past the run's "
                f"{epochs} epochs and are never reached (as in TAO)"
            )
        ctx.emit("train.optim.milestones", [v / epochs for v in reached])


def warmup(values: dict, ctx: Context) -> None:
    """TAO OneFormer warms up under its WarmupPoly schedule only."""
    steps = values["train.optim.warmup_iters"]
    if steps is None:
        return
    scheduler = ctx.current("train.optim.lr_scheduler")
    if scheduler != "poly" and ctx.flavour is not None:
        ctx.note(f"train.optim.warmup_iters: no warmup under {scheduler} (as in TAO)")
        steps = 0
    ctx.emit("train.optim.warmup_steps", steps)


def clip(values: dict, ctx: Context) -> None:
    """train.clip_gradients.*: what TAO's OneFormer clips by (it does not read
    train.clip_grad_norm, which a command-line override still sets): the full-model norm."""
    kind = values.get("train.clip_gradients.clip_type")
    if kind not in (None, "full_model"):
        raise TaoKeyError(
            f"train.clip_gradients.clip_type: got {kind!r}; oneseg clips the full-model norm "
            "only (full_model), not each value"
        )
    if values.get("train.clip_gradients.enabled") is False:
        ctx.emit("train.clip_grad_norm", 0.0)
        return
    value = values.get("train.clip_gradients.clip_value")
    if value is None:
        return
    if "train.clip_grad_norm" in ctx.given and ctx.flavour == "oneformer":
        native = ctx.current("train.clip_grad_norm")
        if float(native) != float(value):  # TAO's own defaults hold both: 0.1 and 1.0
            ctx.note(
                f"train.clip_grad_norm {native!r}: not read by TAO's OneFormer, which clips by "
                f"clip_gradients.clip_value ({value!r})"
            )
    ctx.emit("train.clip_grad_norm", float(value))


def tasks(values: dict, ctx: Context) -> None:
    """model.test.*_on / model.task_toggling.*_on: which tasks evaluate runs."""
    chosen = list(ctx.current("evaluate.tasks"))
    for key, on in values.items():
        task = key.rsplit(".", 1)[1].removesuffix("_on")
        if not isinstance(on, bool):
            raise TaoKeyError(f"{key}: got {on!r}, expected true or false")
        if on and task not in chosen:
            chosen.append(task)
        if not on and task in chosen:
            chosen.remove(task)
    if not chosen:
        raise TaoKeyError(f"{', '.join(values)}: every task is off")
    ctx.emit("evaluate.tasks", [t for t in TASK_NAMES if t in chosen])


def freeze(values: dict, ctx: Context) -> None:
    names = values["train.freeze"] or []
    unknown = [n for n in names if n != "backbone"]
    if unknown:
        raise TaoKeyError(
            f"train.freeze: got {names!r}; oneseg freezes the backbone only (['backbone'])"
        )
    ctx.emit("train.freeze_backbone", bool(names))


def schedule(values: dict, ctx: Context) -> None:
    """TAO sizes its warmup-poly schedule as iters_per_epoch x num_epochs + 1 iterations (an
    epoch still runs over the whole loader)."""
    iters = values["train.iters_per_epoch"]
    if iters is None:
        return
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise TaoKeyError(f"train.iters_per_epoch: got {iters!r}, expected an integer >= 1")
    ctx.emit("train.optim.schedule_steps", iters * ctx.current("train.num_epochs") + 1)


def quantize(values: dict, ctx: Context) -> None:
    path = values["quantize.model_path"]
    if not path:
        return
    if str(path).endswith(".onnx"):
        ctx.emit("quantize.onnx_file", str(path))
        return
    ctx.refusals["quantize"] = (
        f"quantize.model_path: got {path!r}; oneseg quantizes an exported ONNX model: export it "
        "first (oneseg export, export.checkpoint=...) and give the .onnx here"
    )


def quantize_mode(values: dict, ctx: Context) -> None:
    """TAO's static_ptq is oneseg's calibrated INT8; weight-only INT8 is not built, which only
    the quantize action needs to know (TAO's default is weight_only_ptq)."""
    mode = values["quantize.mode"]
    if mode in (None, "", "static_ptq", "static"):
        return
    ctx.refusals["quantize"] = (
        f"quantize.mode: got {mode!r}; oneseg quantizes weights and activations (static_ptq): "
        "set quantize.mode=static_ptq"
    )


def inference_batch(values: dict, ctx: Context) -> None:
    size = values["inference.batch_size"]
    if size == -1:
        ctx.note("inference.batch_size -1 (TAO: all images): 1; the batch size changes speed only")
        size = 1
    ctx.emit("inference.batch_size", size)


def test_batch(values: dict, ctx: Context) -> None:
    size = values["dataset.test.batch_size"]
    if size is not None and "inference.batch_size" not in ctx.given:
        ctx.emit("inference.batch_size", 1 if size == -1 else size)


def backbone(values: dict, ctx: Context) -> None:
    resolve_backbone(values, ctx.current, ctx.emit)


GROUPS: dict[str, Callable[[dict, Context], None]] = {
    "sources": groups.sources,
    "target_size": groups.target_size,
    "pixel": groups.pixel,
    "dropout": groups.dropout,
    "train_min_size": groups.train_min_size,
    "contiguous": groups.contiguous,
    "mode": groups.mode,
    "eval_resize": groups.eval_resize,
    "image_size": groups.image_size,
    "short_edge_scale": groups.short_edge_scale,
    "schedule": schedule,
    "quantize_mode": quantize_mode,
    "backbone": backbone,
    "tasks": tasks,
    "milestones": milestones,
    "freeze": freeze,
    "clip": clip,
    "warmup": warmup,
    "quantize": quantize,
    "inference_batch": inference_batch,
    "test_batch": test_batch,
}
