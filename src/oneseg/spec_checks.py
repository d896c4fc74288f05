"""Checks between fields of a spec, and limits on its size, run before any work starts.

A field's own type and range are checked as it is read (`oneseg.spec`); what depends on two
fields (heads that must divide a width), on the machine (threads) or on the reading itself
(a spec file too large, a YAML alias bomb) is checked here. Every refusal is a `SpecError`
naming the key. `check_model` is also applied to the model config a checkpoint carries, before
anything is built from it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from oneseg.constants import TASKS

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; a larger file is not one
MAX_SPEC_NODES = 100_000  # values of the spec once YAML aliases are expanded
EXPORT_MAX_OPSET = 20  # the highest opset torch.onnx's TorchScript exporter writes

# The largest size of each model setting accepted: ten times or more the largest published
# OneFormer / Mask2Former; a checkpoint asking for more is refused before anything is allocated.
MODEL_LIMITS = {
    "num_classes": 100_000,
    "hidden_dim": 4096,
    "num_queries": 5000,
    "nheads": 256,
    "dim_feedforward": 32768,
    "dec_layers": 64,
    "query_dec_layers": 64,
    "task_seq_len": 4096,
    "backbone_embed_dim": 4096,
    "backbone_window_size": 1024,
    "test_topk_per_image": 100_000,
    "pixel_decoder.conv_dim": 4096,
    "pixel_decoder.mask_dim": 4096,
    "pixel_decoder.enc_layers": 64,
    "pixel_decoder.enc_heads": 256,
    "pixel_decoder.enc_points": 64,
    "pixel_decoder.enc_ffn_dim": 32768,
    "text_encoder.width": 4096,
    "text_encoder.layers": 64,
    "text_encoder.context_length": 4096,
    "text_encoder.n_ctx": 4096,
    "text_encoder.proj_layers": 64,
    "text_encoder.vocab_size": 1_000_000,
    "loss.train_num_points": 1 << 20,
}
MAX_BACKBONE_BLOCKS = 256  # sum of backbone_depths
MAX_BACKBONE_HEADS = 256  # each of backbone_num_heads


class _Refuse:
    """Raises `SpecError("PREFIXkey: got VALUE, expected ...")`, the one form of a refusal."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __call__(self, key: str, value, expected: str) -> None:
        from oneseg.spec import SpecError

        expected = expected if expected.startswith("expected") else f"expected {expected}"
        raise SpecError(f"{self.prefix}{key}: got {value!r}, {expected}")


def _get(section, dotted: str):
    for name in dotted.split("."):
        section = getattr(section, name)
    return section


def check_model(model, prefix: str = "model.") -> None:
    """Refuse a model config that would fail (or allocate without limit) when built: sizes above
    `MODEL_LIMITS`, widths that heads or groups do not divide, normalisation values that are
    not three positive numbers, fewer queries than text context entries."""
    refuse = _Refuse(prefix)
    for key, limit in MODEL_LIMITS.items():
        value = _get(model, key)
        if value > limit:
            refuse(key, value, f"expected at most {limit}")
    if sum(model.backbone_depths) > MAX_BACKBONE_BLOCKS:
        refuse("backbone_depths", model.backbone_depths, f"at most {MAX_BACKBONE_BLOCKS} blocks")
    for heads in model.backbone_num_heads:
        if not 1 <= heads <= MAX_BACKBONE_HEADS:
            refuse("backbone_num_heads", model.backbone_num_heads, "each in 1..256")
    if model.hidden_dim % model.nheads or model.hidden_dim % 2:
        refuse("hidden_dim", model.hidden_dim, f"an even multiple of model.nheads ({model.nheads})")
    pd = model.pixel_decoder
    if pd.conv_dim % pd.norm_groups:
        refuse(
            "pixel_decoder.norm_groups", pd.norm_groups, f"a divisor of conv_dim ({pd.conv_dim})"
        )
    if pd.conv_dim % pd.enc_heads or pd.conv_dim % 2:
        refuse(
            "pixel_decoder.conv_dim", pd.conv_dim, f"an even multiple of enc_heads ({pd.enc_heads})"
        )
    te = model.text_encoder
    if model.arch == "oneformer":
        if te.width % max(1, te.width // 64):
            refuse("text_encoder.width", te.width, "a multiple of its heads (width // 64)")
        if te.n_ctx >= model.num_queries:
            refuse(
                "text_encoder.n_ctx",
                te.n_ctx,
                f"a value below model.num_queries ({model.num_queries})",
            )
    for key in ("pixel_mean", "pixel_std"):
        values = getattr(model, key)
        if len(values) != 3:
            refuse(key, values, "expected three values (R, G, B)")
    if any(v <= 0 for v in model.pixel_std):
        refuse("pixel_std", model.pixel_std, "expected three values above 0")


def _check_dataset(dataset) -> None:
    refuse = _Refuse("dataset.")
    aug = dataset.augmentation
    if not aug.train_min_size or any(s < 1 for s in aug.train_min_size):
        refuse("augmentation.train_min_size", aug.train_min_size, "expected sizes of 1 or more")
    if aug.crop_size and (len(aug.crop_size) != 2 or min(aug.crop_size) < 1):
        refuse("augmentation.crop_size", aug.crop_size, "expected [height, width] or []")
    if len(aug.lsj_scale) != 2 or not 0 < aug.lsj_scale[0] <= aug.lsj_scale[1]:
        refuse("augmentation.lsj_scale", aug.lsj_scale, "expected [low, high] with 0 < low <= high")
    unknown = [t for t in dataset.task_prob if t not in TASKS]
    if unknown:
        known = ", ".join(TASKS)
        refuse(f"task_prob.{unknown[0]}", dataset.task_prob[unknown[0]], f"a task of {known}")
    if any(p < 0 for p in dataset.task_prob.values()) or sum(dataset.task_prob.values()) <= 0:
        refuse("task_prob", dataset.task_prob, "expected values >= 0, at least one above 0")


def _check_machine(spec) -> None:
    from oneseg.cpu_threads import available_cores

    cores = available_cores()
    if spec.cpu_threads > cores:
        _Refuse("")(
            "cpu_threads", spec.cpu_threads, f"at most {cores} (the cores this process may use)"
        )


def _check_export(spec) -> None:
    # the input size is checked against the checkpoint's size divisibility, when it is read
    refuse = _Refuse("export.")
    if spec.export.opset_version > EXPORT_MAX_OPSET:
        refuse("opset_version", spec.export.opset_version, f"at most {EXPORT_MAX_OPSET}")


def _expand_home(node) -> None:
    """`~` at the start of any path-like string becomes the home folder, as a shell does."""
    for fl in dataclasses.fields(node):
        value = getattr(node, fl.name)
        if dataclasses.is_dataclass(value):
            _expand_home(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for item in value:
                _expand_home(item)
        elif isinstance(value, str) and (value == "~" or value.startswith("~/")):
            setattr(node, fl.name, os.path.expanduser(value))


def check_spec_fields(spec) -> None:
    """Every check between fields of a whole spec (see the module docstring)."""
    _expand_home(spec)
    check_model(spec.model)
    _check_dataset(spec.dataset)
    _check_export(spec)
    _check_machine(spec)


def check_spec_file(path: Path) -> None:
    """Refuse a spec file larger than `MAX_SPEC_BYTES` before reading it."""
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        from oneseg.spec import SpecError

        raise SpecError(
            f"{path}: {size / 2**20:.1f} MiB, a spec is at most {MAX_SPEC_BYTES >> 20} MiB"
        )


def check_expanded_size(path, data) -> None:
    """Refuse YAML whose aliases expand to more than `MAX_SPEC_NODES` values (a "billion
    laughs" file is a few hundred bytes that expand to billions)."""
    from oneseg.spec import SpecError

    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_SPEC_NODES:
            raise SpecError(
                f"{path}: expands to more than {MAX_SPEC_NODES} values (YAML aliases); "
                "write the spec out without repeating aliases"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
