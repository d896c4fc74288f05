"""The intra-op thread count follows the cores available, the loader workers and the spec."""

from __future__ import annotations

import os

import pytest

from oneseg import cpu_threads
from oneseg.cpu_threads import available_cores, intra_op_threads, set_intra_op_threads


def test_cores_minus_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 8)
    assert intra_op_threads(0, loader_workers=2) == 6
    assert intra_op_threads(0, loader_workers=2, processes=2) == 2
    assert intra_op_threads(0, loader_workers=12) == 1  # never below one
    assert intra_op_threads(3, loader_workers=2) == 3  # the spec key wins
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert intra_op_threads(0, loader_workers=2) == 5  # the user's environment next
    with pytest.raises(ValueError, match="cpu_threads"):
        intra_op_threads(-1)


def test_affinity_is_what_counts():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity on this platform")
    assert available_cores() == len(os.sched_getaffinity(0)) >= 1


def test_set_and_restore(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert set_intra_op_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        set_intra_op_threads(1, processes=2)
        assert os.environ["OMP_NUM_THREADS"] == "1"  # inherited by distributed processes
        monkeypatch.setattr(cpu_threads, "available_cores", lambda: 4)
        assert intra_op_threads(0, processes=2) == 2  # our own export is not a user choice
    finally:
        torch.set_num_threads(before)


def test_quiet_pool_keeps_the_users_choice(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("KMP_BLOCKTIME", "200")
    monkeypatch.delenv("KMP_BLOCKTIME")  # absent, and restored to absent afterwards
    assert cpu_threads.quiet_thread_pool() is False  # torch is loaded in this process
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["KMP_BLOCKTIME"] == "0"


def test_keep_freed_memory_applies_on_glibc_and_respects_the_user(monkeypatch):
    import platform

    from oneseg.cpu_threads import keep_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert keep_freed_memory() is False  # the user's own allocator setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected


def test_quiet_pool_spins_briefly_unless_the_user_said_how_to_wait(monkeypatch):
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(key, raising=False)
    cpu_threads.quiet_thread_pool()
    assert os.environ["GOMP_SPINCOUNT"] == "1000" and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the user's policy sets the spin
    cpu_threads.quiet_thread_pool()
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "50000")
    cpu_threads.quiet_thread_pool()
    assert os.environ["GOMP_SPINCOUNT"] == "50000" and "OMP_WAIT_POLICY" not in os.environ


def test_a_fresh_process_gets_the_brief_spin():
    """Importing oneseg's thread module does not load torch, so the setting is in place
    before OpenMP reads it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = (
        "import os; from oneseg.cpu_threads import quiet_thread_pool; "
        "print(quiet_thread_pool(), os.environ.get('GOMP_SPINCOUNT'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "1000"], out.stderr
