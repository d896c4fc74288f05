"""bf16 against fp32: oneseg and transformers' OneFormer at identical weights, one process.

    python benchmarks/bench_bf16.py                          # 512², batch 1 and 4, all parts
    python benchmarks/bench_bf16.py --batches 1 --repeats 3 --profile 25
    python benchmarks/bench_bf16.py --demo results/demo      # + PQ / mIoU / AP of the demo model
    python benchmarks/bench_bf16.py --skip-speed --skip-agreement --train-steps 0 --profile 0 \
        --demo results/demo results/demo-bf16 --demo-spec results/demo/demo_spec.yaml

Swin-T OneFormer, 150 queries, random weights saved as a transformers folder and converted
with oneseg's converter (contenders.py). Four contenders run alternately after a warm-up,
panoptic task, inference mode: oneseg in fp32 and in bf16 (`oneseg.precision`: autocast, bf16
weight packs), transformers in fp32 and under its own `torch.autocast("cpu", torch.bfloat16)`.
Each contender's outputs are cast to float32 and post-processed (panoptic); the ratios are
medians of per-round ratios (runs seconds apart: robust to a load that drifts).

Accuracy: semantic maps of the converted model in bf16 against fp32 on synthetic scenes at
512² (pixels equal, class-logit change, mask-logit signs equal), for both implementations;
with --demo, each demo model's PQ / mIoU / AP on the demo's validation split in each
precision (`oneseg evaluate` with evaluate.precision). Training: one step (forward, loss, backward,
AdamW) of oneseg in fp32 and under bf16 autocast (what Lightning's bf16-mixed does), alternated,
each with the optimizer `oneseg train` builds at its precision.
Writes benchmarks/results/NAME.{md,json} (--name, default bf16).
"""

from __future__ import annotations

from oneseg.cpu_threads import keep_freed_memory, quiet_thread_pool

quiet_thread_pool()  # before torch loads OpenMP
keep_freed_memory()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from bench_inference import Runner, inputs  # noqa: E402
from contenders import training_targets, write_hf_folder  # noqa: E402
from machine import describe, machine_line, table, write_report  # noqa: E402

from oneseg.cpu_threads import set_intra_op_threads  # noqa: E402
from oneseg.model.postprocess import postprocess  # noqa: E402
from oneseg.precision import autocast  # noqa: E402

CONTENDERS = (("oneseg", "fp32"), ("oneseg", "bf16"), ("transformers", "fp32"),
              ("transformers", "bf16"))  # fmt: skip
RATIOS = {  # name: (numerator contender, denominator contender), latency ratios
    "oneseg bf16 vs oneseg fp32": ("oneseg fp32", "oneseg bf16"),
    "oneseg bf16 vs transformers fp32": ("transformers fp32", "oneseg bf16"),
    "oneseg bf16 vs transformers bf16": ("transformers bf16", "oneseg bf16"),
    "transformers bf16 vs transformers fp32": ("transformers fp32", "transformers bf16"),
}


def float_outputs(name: str, outputs):
    """The outputs in float32, as post-processing gets them (oneseg's `predict` does this)."""
    if name == "oneseg":
        return {k: outputs[k].float() for k in ("pred_logits", "pred_masks")}
    outputs.class_queries_logits = outputs.class_queries_logits.float()
    outputs.masks_queries_logits = outputs.masks_queries_logits.float()
    return outputs


def run_once(runner: Runner, precision: str, images, tokens, size: int) -> tuple[float, float]:
    """(forward s, post-processing s) of one batch."""
    start = time.perf_counter()
    with autocast(precision, "cpu"):
        outputs = runner.forward(images, tokens)
    outputs = float_outputs(runner.name, outputs)
    middle = time.perf_counter()
    runner.postprocess(outputs, size)
    return middle - start, time.perf_counter() - middle


def time_setting(runners: dict, size: int, batch: int, repeats: int) -> dict:
    images, tokens = inputs(size, batch)
    keys = [f"{name} {precision}" for name, precision in CONTENDERS]
    for key in keys:  # warm-up (bf16 packs made), not timed
        run_once(runners[key.split()[0]], key.split()[1], images, tokens, size)
    times = {key: [] for key in keys}
    for rep in range(repeats):
        for key in keys if rep % 2 == 0 else keys[::-1]:
            fwd, post = run_once(runners[key.split()[0]], key.split()[1], images, tokens, size)
            times[key].append((fwd, post))
            print(f"{size}x{batch} {key}: forward {fwd:.2f} s, post {post:.3f} s", flush=True)
    result = {"size": size, "batch": batch}
    for key in keys:
        fwd = statistics.median(t[0] for t in times[key])
        post = statistics.median(t[1] for t in times[key])
        result[key] = {"forward_s": fwd, "postprocess_s": post, "latency_s": fwd + post,
                       "runs": times[key]}  # fmt: skip
    per_round = {
        label: [sum(a) / sum(b) for a, b in zip(times[slow], times[fast])]
        for label, (slow, fast) in RATIOS.items()
    }
    result["ratios"] = {label: statistics.median(r) for label, r in per_round.items()}
    # the spread between rounds: on a shared machine it can exceed a change being measured
    result["ratio_ranges"] = {label: [min(r), max(r)] for label, r in per_round.items()}
    return result


def scenes(size: int, count: int) -> torch.Tensor:
    """`count` synthetic scenes (shapes on textures) at size², uint8 [count, 3, size, size]."""
    import numpy as np
    from PIL import Image

    from oneseg.data.synth import write_synthetic_dataset

    root = Path(tempfile.mkdtemp(prefix="oneseg-bf16-scenes-"))
    data = write_synthetic_dataset(root, num_train=1, num_val=count, size=(size, size), seed=7)
    paths = sorted(data["val"]["images"].iterdir())[:count]
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])


def agreement(runners: dict, size: int, count: int) -> dict:
    """Semantic maps, class logits and mask-logit signs in bf16 against fp32, per contender."""
    images = scenes(size, count)
    model = runners["oneseg"].model
    normalized, sizes = model.preprocess(images)
    from contenders import task_inputs

    tokens = task_inputs(len(images), "semantic")
    result = {}
    for name in ("oneseg", "transformers"):
        runner = runners[name]
        out = {}
        for precision in ("fp32", "bf16"):
            with autocast(precision, "cpu"):
                raw = runner.forward(normalized, tokens)
            raw = float_outputs(name, raw)
            if name == "transformers":
                raw = {
                    "pred_logits": raw.class_queries_logits,
                    "pred_masks": raw.masks_queries_logits,
                }
            maps = postprocess(raw, "semantic", (size, size), sizes)
            out[precision] = (raw, torch.stack([torch.from_numpy(m.labels) for m in maps]))
        (ref, ref_maps), (low, low_maps) = out["fp32"], out["bf16"]
        signs = (ref["pred_masks"] > 0) == (low["pred_masks"] > 0)
        result[name] = {
            "semantic_pixels_equal": (ref_maps == low_maps).float().mean().item(),
            "class_logits_max_abs_change": (ref["pred_logits"] - low["pred_logits"])
            .abs()
            .max()
            .item(),
            "mask_logit_signs_equal": signs.float().mean().item(),
        }
    return result


def checkpoint_trainer(path: Path, batch: int, size: int):
    """A `bench_train.Trainer` of the model in a oneseg checkpoint (e.g. the demo's), and a
    batch of random rectangles of its own classes with their text lists."""
    from bench_train import Trainer

    from oneseg.checkpoint import read_checkpoint
    from oneseg.model.build import build_model
    from oneseg.model.criterion import build_criterion
    from oneseg.tokenizer import task_text, text_list, tokenize

    cfg, label_map, state = read_checkpoint(path)
    trainer = Trainer.__new__(Trainer)
    trainer.name, trainer.hooks = "oneseg", None
    trainer.model = build_model(cfg, num_classes=len(label_map))
    trainer.model.load_state_dict(state)
    trainer.model.train()
    trainer.criterion = build_criterion(cfg.loss, len(label_map), cfg.arch)
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-4)
    trainer.reset()
    data = training_targets(batch, size)
    gen = torch.Generator().manual_seed(2)
    n_text = cfg.num_queries - cfg.text_encoder.n_ctx
    data["labels"] = [
        torch.randint(0, len(label_map), (len(m),), generator=gen) for m in data["masks"]
    ]
    names = [[label_map.names[c] for c in labels.tolist()] for labels in data["labels"]]
    data["texts"] = torch.stack([tokenize(text_list(n, "panoptic", n_text)) for n in names])
    data["task_tokens"] = tokenize([task_text("panoptic")] * batch)
    return trainer, data


def train_steps(
    folder: Path, size: int, batch: int, steps: int, checkpoint: Path | None = None
) -> dict:
    """Seconds per oneseg training step in fp32 and under bf16 autocast, alternated: the
    converted Swin-T model, or the model of `checkpoint`. The optimizer is the one `oneseg
    train` builds at that precision (default `train.optim`; fused AdamW in bf16-mixed)."""
    from bench_train import Trainer

    from oneseg.config import OptimConfig
    from oneseg.engine.optim import build_optimizer

    data = training_targets(batch, size)
    trainers = {}
    for precision in ("fp32", "bf16"):
        if checkpoint:
            trainer, data = checkpoint_trainer(checkpoint, batch, size)
        else:
            trainer = Trainer("oneseg", folder)
        fused = precision == "bf16"
        trainer.optimizer, _ = build_optimizer(trainer.model, OptimConfig(), 1, fused=fused)
        loss = trainer._loss

        def autocast_loss(b, loss=loss, precision=precision):  # forward and loss, as Lightning
            with autocast(precision, "cpu"):
                return loss(b)

        trainer._loss = autocast_loss
        trainer.step(data)  # warm-up
        trainers[precision] = trainer
    times = {p: [] for p in trainers}
    for rep in range(steps):
        for precision in ("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32"):
            times[precision].append(trainers[precision].step(data))
            print(f"train {precision}: {times[precision][-1]:.2f} s", flush=True)
    ratio = statistics.median(a / b for a, b in zip(times["fp32"], times["bf16"]))
    return {"model": str(checkpoint or "Swin-T (converted)"), "size": size, "batch": batch,
            "steps_s": times, "speedup": ratio,
            **{f"{p}_step_s": statistics.median(v) for p, v in times.items()},
            "parts_s": {p: {k: statistics.median(v) for k, v in t.times.items() if v}
                        for p, t in trainers.items()}}  # fmt: skip


def demo_metrics(spec: Path, folders: list[Path]) -> dict:
    """PQ / mIoU / AP on the demo's validation split (`spec`, the demo_spec.yaml of `oneseg
    demo`) of each results folder's final checkpoint, evaluated in fp32 and in bf16."""
    from oneseg import cli

    result = {}
    for folder in folders:
        checkpoint = next(folder.glob("train/model_best.ckpt"), None)
        checkpoint = checkpoint or sorted(folder.glob("train/*.ckpt"))[-1]
        for precision in ("fp32", "bf16"):
            out = Path(tempfile.mkdtemp(prefix=f"oneseg-bf16-eval-{precision}-"))
            argv = ["evaluate", "-e", str(spec), f"results_dir={out}"]
            argv += [f"evaluate.checkpoint={checkpoint}", f"evaluate.precision={precision}"]
            argv += ["evaluate.iou_per_class=false"]
            if cli.main(argv) != 0:
                raise RuntimeError(f"evaluate {checkpoint} in {precision} failed")
            metrics = json.loads((out / "evaluate" / "metrics.json").read_text())["metrics"]
            keys = ("pq", "miou", "ap", "seconds_per_image")
            result[f"{checkpoint} | {precision}"] = {k: metrics[k] for k in keys}
    return result


def profile(runner: Runner, size: int, rows: int) -> str:
    images, tokens = inputs(size, 1)
    with autocast("bf16", "cpu"):
        runner.forward(images, tokens)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            runner.forward(images, tokens)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown(report: dict) -> str:
    out = ["# bf16 against fp32 (Swin-T OneFormer, 150 queries, same weights)", ""]
    out += [f"Machine: {describe(report['machine'])}.", ""]
    if report["settings"]:
        rows = []
        for s in report["settings"]:
            for name, precision in CONTENDERS:
                r = s[f"{name} {precision}"]
                setting = f"{s['size']}² ×{s['batch']}"
                rate = s["batch"] / r["latency_s"]
                rows.append(
                    [setting, name, precision, f"{r['forward_s']:.2f}", f"{r['postprocess_s']:.3f}"]
                    + [f"{rate:.2f}"]
                )
        out.append(
            table(["input", "contender", "precision", "forward s", "post s", "images/s"], rows)
        )
        out += ["", "Median of per-round latency ratios (lowest-highest round):", ""]
        labels = list(RATIOS)
        ratio_rows = [
            [f"{s['size']}² ×{s['batch']}"]
            + [
                f"{s['ratios'][k]:.2f}× ({low:.2f}-{high:.2f})"
                for k in labels
                for low, high in [s["ratio_ranges"][k]]
            ]
            for s in report["settings"]
        ]
        out.append(table(["input", *labels], ratio_rows))
    if "agreement" in report:
        out += [
            "",
            "bf16 against fp32 on the converted model (synthetic scenes, semantic task):",
            "",
        ]
        out.append(table(["implementation", "semantic pixels equal", "class logits max change",
                          "mask-logit signs equal"],
                         [[name, f"{100 * a['semantic_pixels_equal']:.2f}%",
                           f"{a['class_logits_max_abs_change']:.4f}",
                           f"{100 * a['mask_logit_signs_equal']:.2f}%"]
                          for name, a in report["agreement"].items()]))  # fmt: skip
    if "demo" in report:
        out += ["", "Demo model, validation split, evaluated in each precision:", ""]
        demo_rows = [
            key.split(" | ")
            + [f"{m[k]:.2f}" for k in ("pq", "miou", "ap")]
            + [f"{m['seconds_per_image']:.3f}"]
            for key, m in report["demo"].items()
        ]
        out.append(table(["checkpoint", "precision", "PQ", "mIoU", "AP", "s/image"], demo_rows))
    if "train" in report:
        t = report["train"]
        out += ["", f"Training step, oneseg {t['model']}, batch {t['batch']}, {t['size']}² "
                f"crops: fp32 {t['fp32_step_s']:.2f} s, bf16 {t['bf16_step_s']:.2f} s, "
                f"**{t['speedup']:.2f}×** (median of per-round ratios)", ""]  # fmt: skip
        parts = list(t["parts_s"]["fp32"])
        out.append(table(["precision", *(f"{k} s" for k in parts)],
                         [[p] + [f"{t['parts_s'][p][k]:.2f}" for k in parts]
                          for p in ("fp32", "bf16")]))  # fmt: skip
    if report.get("profile"):
        out += ["", "## torch.profiler, oneseg bf16 forward, self CPU time", "", "```",
                report["profile"], "```"]  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores available")
    parser.add_argument("--weights", type=Path, help="transformers folder (written if absent)")
    parser.add_argument("--scenes", type=int, default=4, help="images of the agreement check")
    parser.add_argument("--train-steps", type=int, default=3, help="0: no training part")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-checkpoint", type=Path, help="time this model's training step")
    parser.add_argument("--demo-spec", type=Path, help="demo_spec.yaml of `oneseg demo`")
    parser.add_argument(
        "--demo", type=Path, nargs="+", default=[], help="results folders of demo trainings"
    )
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--name", default="bf16", help="results file name")
    parser.add_argument("--profile", type=int, default=25, help="rows of a profiler table")
    parser.add_argument("--skip-speed", action="store_true", help="accuracy and training only")
    args = parser.parse_args(argv)
    set_intra_op_threads(args.threads)
    folder = write_hf_folder(args.weights or Path(tempfile.gettempdir()) / "oneseg-bench-hf")
    report = {"machine": machine_line(), "settings": []}
    runners = {}
    if not (args.skip_speed and args.skip_agreement and not args.profile):
        runners = {name: Runner(name, folder) for name in ("oneseg", "transformers")}
    if not args.skip_speed:
        for size in args.sizes:
            for batch in args.batches:
                report["settings"].append(time_setting(runners, size, batch, args.repeats))
    if not args.skip_agreement:
        report["agreement"] = agreement(runners, args.sizes[0], args.scenes)
        print(json.dumps(report["agreement"]), flush=True)
    if args.profile:
        report["profile"] = profile(runners["oneseg"], args.sizes[0], args.profile)
    del runners
    if args.train_steps:
        report["train"] = train_steps(
            folder, args.train_size, args.train_batch, args.train_steps, args.train_checkpoint
        )
    if args.demo:
        report["demo"] = demo_metrics(args.demo_spec or args.demo[0] / "demo_spec.yaml", args.demo)
    md_path, _ = write_report(args.name, markdown(report), report)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
