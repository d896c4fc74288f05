"""What every benchmark report states about the machine, the fp32 matmul peak measured in the
run, peak memory, and the markdown + JSON writer of `benchmarks/results/`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> dict:
    import transformers

    from oneseg.cpu_threads import available_cores

    load = os.getloadavg()
    return {
        "cpu": cpu_name(),
        "cores_available": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "(default)"),
        "load_average_1m_5m": [round(load[0], 2), round(load[1], 2)],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def describe(machine: dict) -> str:
    return (
        f"{machine['cpu']}, {machine['cores_available']} cores available, "
        f"{machine['torch_threads']} torch threads, OMP_WAIT_POLICY {machine['omp_wait_policy']}, "
        f"GOMP_SPINCOUNT {machine.get('gomp_spincount', '(default)')}, "
        f"load average {machine['load_average_1m_5m'][0]} (1 min) at start; torch "
        f"{machine['torch']}, transformers {machine['transformers']}; {machine['date']}"
    )


def matmul_peak_gflops(size: int = 2048, repeats: int = 6) -> float:
    """Best fp32 GFLOP/s of a [size, size] x [size, size] product on this process's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    VmHWM belongs to the process's own memory map; ru_maxrss would carry over the parent's
    size into a child started by fork + exec (Linux keeps the larger across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(name: str, markdown: str, data: dict) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    md_path, json_path = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
    for path, text in ((md_path, markdown), (json_path, json.dumps(data, indent=2) + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md_path, json_path


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
