"""Intra-op threads that fit the CPU this process may actually use.

PyTorch starts one OpenMP thread per core it sees and lets them spin at every barrier. On a
machine shared with another busy process (a data-loader worker, a second job), one of those
threads is often descheduled and the others burn their time slices waiting for it: a training
step was seen to go from 0.7 s to 14 s beside a single busy process. Two things keep the pool
fitting the machine:

- `quiet_thread_pool()` lets a waiting OpenMP thread spin only ~10 us (libgomp's
  GOMP_SPINCOUNT=1000; about 100 spins a microsecond) before it sleeps, instead of OpenMP's
  default of milliseconds. Against sleeping at once (OMP_WAIT_POLICY=PASSIVE, this module's
  earlier setting), on 2 Zen 4 cores: Swin-T OneFormer bf16 at 512x512 8% faster alone, 5%
  slower beside a busy process; the demo model's training 1.59x the steps/s alone, 0.77x
  beside a spinning process (docs/benchmarks.md, "CPU threads").
  OpenMP reads this once, when torch loads it, so it must run before `import torch` (the
  `oneseg` command does; a script can call it first thing). Later it changes nothing and says
  so. A wait policy or spin count the user set is kept.
- `keep_freed_memory()` lets glibc's allocator reuse freed blocks of up to 32 MB instead of
  returning them to the system: a CPU forward allocates and frees tensors of that size dozens of
  times, and every fresh mapping is paid again in page faults (about 7% of a Swin-T OneFormer
  forward at 512x512).
- `set_intra_op_threads()` uses the cores of this process's affinity mask, minus the data-loader
  worker processes that will compete for them, unless a count is asked for (spec `cpu_threads`).
"""

from __future__ import annotations

import os
import sys

# libgomp (PyTorch's OpenMP on Linux): spin ~10 us, then sleep; Intel's OpenMP: sleep at once
QUIET_POOL_ENV = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
_WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # either, set by the user, decides
_exported: list[str] = []  # OMP_NUM_THREADS values this module wrote (not the user's choice)


def quiet_thread_pool() -> bool:
    """Make OpenMP threads spin briefly, then sleep, while waiting, unless the environment
    already says how they wait. Returns True when it can still take effect (torch not imported
    yet)."""
    users = any(key in os.environ for key in _WAIT_KEYS)
    for key, value in QUIET_POOL_ENV.items():
        if not (users and key in _WAIT_KEYS):
            os.environ.setdefault(key, value)
    return "torch" not in sys.modules


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MB from the heap and keep freed heap memory for reuse
    (glibc `mallopt`; what MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would set). The
    process keeps its peak heap instead of giving it back between forwards. Does nothing
    where the C library is not glibc or the user set these variables. Returns whether it
    applied."""
    if not sys.platform.startswith("linux"):
        return False
    if any(key in os.environ for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    done &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    done &= mallopt(_M_TOP_PAD, 64 * 2**20)
    return bool(done)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; os.cpu_count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def intra_op_threads(requested: int = 0, loader_workers: int = 0, processes: int = 1) -> int:
    """The thread count to use: `requested` when > 0, else OMP_NUM_THREADS when set (the user
    chose), else this process's share of the available cores minus the data-loader workers it
    starts, at least 1."""
    if requested < 0 or loader_workers < 0 or processes < 1:
        raise ValueError(
            f"cpu_threads {requested}, loader workers {loader_workers} and processes "
            f"{processes} must be >= 0, >= 0 and >= 1"
        )
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0 and env not in _exported:
        return int(env)
    return max(1, available_cores() // processes - loader_workers)


def set_intra_op_threads(requested: int = 0, loader_workers: int = 0, processes: int = 1) -> int:
    """Set torch's intra-op thread count (see `intra_op_threads`); returns it.

    With several processes OMP_NUM_THREADS is set to the count as well: the distributed
    processes started later inherit it, and Lightning keeps a value that is set."""
    import torch

    threads = intra_op_threads(requested, loader_workers, processes)
    if processes > 1:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        _exported.append(str(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
