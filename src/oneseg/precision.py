"""The numeric precision of a model's inference forward: fp32, bf16, fp16 or auto.

Low precision covers the network's forward (backbone, pixel decoder with its deformable
sampling, query transformer, masked-attention decoder): matrix products and convolutions run
in bf16 / fp16 through `torch.autocast`, and the oneDNN-prepacked linears (`model.packed`) keep
packs of their weights in that dtype. What low precision would spoil stays in float32 inside
the forward (the task token, read from token ids as numbers; the sampling positions and the
softmax of the deformable attention; the class head) and after it: `OneFormer.predict` hands
float32 outputs to post-processing (class softmax, mask sigmoid thresholds), and training's
matcher disables autocast itself.

`auto` picks bf16 on a CPU whose flags (`/proc/cpuinfo`) list AVX512-BF16 or AMX (native bf16
matrix products), bf16 on a CUDA device that supports it and fp16 on one that does not, fp32
anywhere else.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

log = logging.getLogger(__name__)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU listed in `cpuinfo` (empty where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm
            return set(value.split())
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.is_bf16_supported()


def choose_precision(requested: str, device: str | torch.device) -> str:
    """The precision the forward runs in on `device`: `requested` itself, or for "auto" the
    one this device computes fastest without losing accuracy (module docstring).

    Raises ValueError for an unknown name, and for bf16 on a CUDA device without it."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {list(PRECISIONS)}")
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        if device.type == "cuda":
            return "bf16" if _cuda_bf16(device) else "fp16"
        return "fp32"
    if requested == "bf16" and device.type == "cuda" and not _cuda_bf16(device):
        raise ValueError(f"precision bf16: the CUDA device {device} does not support bfloat16")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision bf16 on a CPU without AVX512-BF16 or AMX: emulated, slow")
    return requested


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context a forward runs in at `precision` ("fp32", "bf16" or "fp16", as chosen by
    `choose_precision`) on `device`: `torch.autocast` in the low-precision dtype, or, for fp32,
    autocast disabled (so an enclosing autocast does not leak in)."""
    if precision not in DTYPES:
        raise ValueError(f"precision {precision!r}: choose one of {list(DTYPES)} first")
    device_type = torch.device(device).type
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=DTYPES[precision])


def full_precision(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast disabled on `tensor`'s device: what runs inside stays in its inputs' dtype."""
    return torch.autocast(tensor.device.type, enabled=False)


def precision_setting(
    requested: str, device: str | torch.device, key: str, exported: bool = False
) -> str:
    """`choose_precision` for the spec key `key` (e.g. "inference.precision"): what cannot be
    honoured becomes a `SpecError` naming the key (exit 2). An exported file (`exported`) runs
    in the precision it was built in: bf16 / fp16 asked for one are refused, fp32 and auto
    leave it as it is (and "fp32" is returned)."""
    from oneseg.spec import SpecError  # on use: the model imports this module

    if exported:
        if requested in ("bf16", "fp16"):
            raise SpecError(
                f"{key}: {requested} applies to checkpoints; an exported file runs in the "
                "precision it was built in (gen_trt_engine.tensorrt.data_type for TensorRT)"
            )
        return "fp32"
    try:
        return choose_precision(requested, device)
    except ValueError as err:
        raise SpecError(f"{key}: {err}") from None


def log_precision(run, requested: str, picked: str | None) -> None:
    """Say which precision an action's forward runs in: the log and status.json's KPIs
    (`run`: an `oneseg.experiment.ActionRun`); nothing for an exported file (None)."""
    if picked is None:
        return
    run.kpis["precision"] = picked
    run.log("RUNNING", f"forward precision {picked} ({requested} asked)")
    log.info("forward precision %s (%s asked)", picked, requested)
