"""bf16 against float32 attention at each call site of the Swin-T OneFormer's inference forward.

    python benchmarks/bench_attention.py                  # 512², batch 1 and 4
    python benchmarks/bench_attention.py --batches 1 --threads 1

Whether a bf16 forward should run some attention in float32 depends on the CPU's kernels, so
this times `F.scaled_dot_product_attention` at the shapes the model calls it with: in bf16, in
float32 with the casts it would take (q, k, v and a float bias to float32, the output back to
bf16), and the float32 kernel alone. Per site and batch: the best of `--repeats` runs, the two
settings alternated in rounds (robust to a load that drifts). Inference mode, as the predictor.

The query transformer's cross-attention on CPU runs `grid_attention` (its values are a row plus
a column table): a second table times it against the fused kernel on the dense values, both
precisions, with each one's largest error against float64 on the same inputs.
Writes benchmarks/results/NAME.{md,json} (--name, default attention).
"""

from __future__ import annotations

from oneseg.cpu_threads import keep_freed_memory, quiet_thread_pool

quiet_thread_pool()  # before torch loads OpenMP
keep_freed_memory()

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import describe, machine_line, table, write_report  # noqa: E402

from oneseg.cpu_threads import set_intra_op_threads  # noqa: E402
from oneseg.model.layers import GridValues, grid_attention  # noqa: E402
from oneseg.precision import cpu_flags  # noqa: E402

HEAD_DIM = 32  # every attention of Swin-T OneFormer (hidden 256, 8 heads; Swin 96 per 3 heads)
WINDOW = 49  # Swin's 7x7 windows


def projected(batch: int, length: int, heads: int) -> torch.Tensor:
    """[B, heads, L, Dh] in bf16, laid out as a projection's output viewed per head."""
    x = torch.randn(batch, length, heads * HEAD_DIM, dtype=torch.bfloat16)
    return x.view(batch, length, heads, HEAD_DIM).transpose(1, 2)


def sites(size: int, batch: int) -> dict:
    """name: (q, k, v, mask) as the model passes them at `size`² and `batch` images."""
    out = {}
    for stage, heads in enumerate((3, 6, 12, 24)):
        side = -(-size // (4 << stage) // 7)  # windows per side, padded to whole windows
        count = batch * side * side
        qkv = torch.randn(count, WINDOW, 3, heads, HEAD_DIM, dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = torch.randn(count, heads, WINDOW, WINDOW, dtype=torch.bfloat16)  # shifted
        out[f"Swin stage {stage + 1} windows ({count}x{heads} heads)"] = (q, k, v, bias)
    keys = (size // 4) ** 2
    value = torch.randn(1, 8, keys, HEAD_DIM, dtype=torch.bfloat16).expand(batch, -1, -1, -1)
    query = projected(batch, 149, 8)
    out[f"query transformer cross 149x{keys}"] = (query, projected(batch, keys, 8), value, None)
    for stride in (32, 16, 8):
        keys = (size // stride) ** 2
        mask = torch.rand(batch, 1, 150, keys) > 0.3
        k, v = projected(batch, keys, 8), projected(batch, keys, 8)
        out[f"masked cross 150x{keys}"] = (projected(batch, 150, 8), k, v, mask)
    out["self 150x150"] = tuple(projected(batch, 150, 8) for _ in range(3)) + (None,)
    return out


def in_bf16(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def in_float32(q, k, v, mask):
    if mask is not None and mask.is_floating_point():
        mask = mask.float()
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return out.to(torch.bfloat16)


def best_of(fn, args, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def time_site(args, repeats: int, rounds: int) -> dict:
    """ms of bf16, float32 with casts and the float32 kernel alone, alternated."""
    floats = tuple(a.float() if a is not None and a.is_floating_point() else a for a in args)
    runs = {"bf16": (in_bf16, args), "fp32+casts": (in_float32, args), "fp32": (in_bf16, floats)}
    times = {name: float("inf") for name in runs}
    for fn, inputs in runs.values():
        fn(*inputs)  # warm-up
    for _ in range(rounds):
        for name, (fn, inputs) in runs.items():
            times[name] = min(times[name], best_of(fn, inputs, repeats) * 1e3)
    return times


def grid_site(size: int, batch: int, repeats: int, rounds: int) -> dict:
    """The query transformer's cross-attention (149 queries, (size/4)² keys, 8 heads): the fused
    kernel on dense values against `grid_attention`, bf16 and float32; ms and max error."""
    side = size // 4
    gen = torch.Generator().manual_seed(size + batch)
    rows = torch.randn(8, side, HEAD_DIM, generator=gen) * 0.5
    cols = torch.randn(8, side, HEAD_DIM, generator=gen) * 0.5
    dense = (rows[:, :, None] + cols[:, None]).flatten(1, 2)[None].expand(batch, -1, -1, -1)
    q = torch.randn(batch, 149, 8, HEAD_DIM, generator=gen).transpose(1, 2) * 0.5
    k = torch.randn(batch, side * side, 8, HEAD_DIM, generator=gen).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), dense.double())
    grid = GridValues(rows, cols)
    runs = {}
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        qd, kd, vd = q.to(dtype), k.to(dtype), dense.to(dtype)
        runs[f"fused {name}"] = lambda q=qd, k=kd, v=vd: F.scaled_dot_product_attention(q, k, v)
        runs[f"grid {name}"] = lambda q=qd, k=kd: grid_attention(q, k, grid)
    times = {name: float("inf") for name in runs}
    errors = {name: float((fn().double() - ref).abs().max()) for name, fn in runs.items()}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name] = min(times[name], best_of(fn, (), repeats) * 1e3)
    return {"ms": times, "max_error": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5, help="runs per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: the cores available")
    parser.add_argument("--name", default="attention", help="results file name")
    args = parser.parse_args(argv)
    set_intra_op_threads(args.threads)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx")))
    report = {"machine": machine_line(), "cpu_bf16_flags": flags, "sites": []}
    rows = []
    with torch.inference_mode():
        for batch in args.batches:
            for name, site in sites(args.size, batch).items():
                times = time_site(site, args.repeats, args.rounds)
                report["sites"].append({"batch": batch, "site": name, "ms": times})
                ratio = times["fp32+casts"] / times["bf16"]
                rows.append([batch, name] + [f"{times[k]:.2f}" for k in times] + [f"{ratio:.2f}"])
                print(f"x{batch} {name}: {times} fp32+casts/bf16 {ratio:.2f}", flush=True)
    grid_rows = []
    with torch.inference_mode():
        for batch in args.batches:
            result = grid_site(args.size, batch, args.repeats, args.rounds)
            report["grid"] = report.get("grid", []) + [{"batch": batch, **result}]
            for name in result["ms"]:
                ms, err = result["ms"][name], result["max_error"][name]
                grid_rows.append([batch, name, f"{ms:.2f}", f"{err:.1e}"])
            print(f"x{batch} query transformer: {result}", flush=True)
    header = ["batch", "site", "bf16 ms", "fp32+casts ms", "fp32 kernel ms", "fp32+casts / bf16"]
    grid_header = ["batch", "attention", "ms", "max error vs float64"]
    markdown = (
        f"# Attention per call site, bf16 against float32 ({args.size}²)\n\n"
        f"Machine: {describe(report['machine'])}; CPU bf16 flags: {', '.join(flags) or 'none'}."
        f"\n\n{table(header, rows)}\n\nAbove 1: float32 (with its casts) is slower than bf16.\n"
        f"\n## Query transformer: fused kernel on dense values against `grid_attention`\n\n"
        f"{table(grid_header, grid_rows)}\n"
    )
    md_path, _ = write_report(args.name, markdown, report)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
