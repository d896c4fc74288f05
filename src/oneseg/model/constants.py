"""Tensors that depend on weights and input sizes only, made once at inference.

Position encodings, relative-position biases, attention masks and the projections of such
tensors are the same for every image of a given size. An inference forward remakes them
every time and, in low precision, casts them every time as well (an fp32 constant added to
bf16 activations makes the sum fp32, and the next product casts it back). `constant` keeps
them on the module that owns the weights, in the dtype the forward computes in, made again
whenever a weight they read changes (its storage or version counter) or the size, dtype or
device does; one entry per name and dtype, so the memory held is that of one input size
in each precision used (a process that alternates fp32 and bf16 forwards, as an evaluation
in both precisions or a benchmark does, keeps both instead of remaking them every forward).

No cache where a gradient may flow or a graph is traced: there the constants are computed
as before, every time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import nn

from oneseg.model.packed import is_exporting


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype products on `x` run in: the autocast dtype where autocast is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def caching(owner: nn.Module, *weights: torch.Tensor) -> bool:
    """Whether constants of `owner` read from `weights` may be kept: no gradient wanted for
    `owner`'s parameters, no graph traced, weights with a version counter (not made under
    inference mode)."""
    if is_exporting() or torch.compiler.is_compiling():
        return False
    if any(w.is_inference() for w in weights):
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(p.requires_grad for p in (*weights, *owner.parameters()))


def constant(
    owner: nn.Module,
    name: str,
    setting: Hashable,
    weights: tuple[torch.Tensor, ...],
    make: Callable[[], object],
    dtype: torch.dtype | None = None,
):
    """`make()` (a tensor, a tuple of tensors or any object), kept on `owner` under `name`
    for `setting` (the sizes, device, ... it depends on) and the current values of `weights`;
    floating-point tensors kept in `dtype` where given (the forward's `compute_dtype`).
    Where `caching(owner, *weights)` is False: `make()` as it is, every time."""
    if not caching(owner, *weights):
        return make()
    key = (setting, tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights))
    cache = owner.__dict__.setdefault("_constants", {})
    entry = cache.get((name, dtype))
    if entry is None or entry[0] != key:
        value = make()
        if dtype is not None:
            value = _cast(value, dtype)
        entry = (key, value)
        cache[(name, dtype)] = entry
    return entry[1]


def _cast(value, dtype: torch.dtype):
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast(v, dtype) for v in value]
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value
