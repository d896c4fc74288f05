"""The `oneseg` command line: spec-driven actions plus data, conversion and demo tools."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from oneseg.cpu_threads import keep_freed_memory, quiet_thread_pool
from oneseg.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    BadInput,
    RunFailed,
    Stopped,
)

DEBUG_ENV = "ONESEG_DEBUG"  # set to 1 to see the traceback behind a one-line error

# What each action runs: "module:function(spec, run)". Imported only when the action is called,
# so `oneseg --help` stays instant. Only built actions are listed: the spec schema
# (`oneseg.config.ACTIONS`) may name more.
ACTION_ENTRY = {
    "train": "oneseg.engine.train:run_train",
    "evaluate": "oneseg.engine.evaluate:run_evaluate",
    "inference": "oneseg.engine.inference:run_inference",
    "export": "oneseg.export.action:run_export",
    "gen_trt_engine": "oneseg.export.tensorrt:run_gen_trt_engine",
    "quantize": "oneseg.export.quantize:run_quantize",
    "automl": "oneseg.automl.study:run_automl",
    "push": "oneseg.push:run_push",
    "serve": "oneseg.serve.action:run_serve",
}

ACTION_HELP = {
    "train": "train or fine-tune a model (Lightning; CPU, one GPU or many GPUs and nodes)",
    "evaluate": "PQ / AP / mIoU of a checkpoint on dataset.val or dataset.test",
    "inference": "segment images; write COCO panoptic PNG+JSON, RLE JSON, label PNGs, overlays",
    "export": "export to ONNX with post-processing in the graph",
    "gen_trt_engine": "build a TensorRT engine from an ONNX model",
    "quantize": "INT8-quantize an ONNX model",
    "automl": "search the spec's hyper-parameters (Optuna): many trainings, one best spec",
    "push": "publish a model on the Hugging Face Hub (weights, config, label map, model card)",
    "serve": "an HTTP JSON API and a web page for a model, on this machine",
}


class CliError(Exception):
    """A problem to report as one line with a non-zero exit."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneseg",
        description="Universal image segmentation: OneFormer and Mask2Former. Each action reads "
        "a YAML spec (-e) and dotted overrides (key.sub=value) and writes into "
        "results_dir/ACTION/. A failure is one line; exit 2 = bad input, 1 = failed, "
        "143 = stopped (SIGTERM).",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for action in ACTION_ENTRY:
        p = sub.add_parser(action, help=ACTION_HELP[action], description=ACTION_HELP[action])
        p.add_argument("-e", "--experiment-spec", dest="spec", help="YAML spec file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.num_epochs=5")
        p.add_argument(
            "--explain", action="store_true", help="print what each TAO key becomes, run nothing"
        )
    p = sub.add_parser("tao", help="TAO specs: explain what each TAO key of a spec becomes")
    tao_sub = p.add_subparsers(dest="tao_command", metavar="TAO_COMMAND")
    p = tao_sub.add_parser("explain", help="each TAO key of a spec and what oneseg does with it")
    p.add_argument("-e", "--experiment-spec", dest="spec", help="YAML spec file")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p = sub.add_parser("template", help="print a complete default spec for an action")
    p.add_argument("action", choices=list(ACTION_ENTRY))
    p.add_argument(
        "--preset",
        choices=("coco", "ade20k", "cityscapes"),
        help="the published training recipe of this dataset instead of the defaults",
    )
    p = sub.add_parser("schema", help="print the JSON Schema of an action's spec")
    p.add_argument("action", choices=list(ACTION_ENTRY))

    data = sub.add_parser("data", help="dataset tools: synth, check, convert")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = data_sub.add_parser("synth", help="write a small synthetic COCO-panoptic dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--num-train", type=int, default=None, help="training images")
    p.add_argument("--num-val", type=int, default=None, help="validation images")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="image height and width")
    p.add_argument("--seed", type=int, default=0)
    p = data_sub.add_parser("check", help="validate a dataset and name every problem")
    p.add_argument("-e", "--experiment-spec", dest="spec", help="YAML spec file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("overrides", nargs="*", help="dotted overrides")

    p = data_sub.add_parser("convert", help="labels of annotation tools to COCO panoptic / COCO")
    p.add_argument("--from", dest="source", required=True, help="labelme|masks|yolo|ade_jsonl")
    p.add_argument("src", help="folder (or .jsonl file) of the labels")
    p.add_argument("--to", dest="target", required=True, help="coco_panoptic|coco")
    p.add_argument("out", help="output folder")
    p.add_argument("--label-map", help="JSON list of {id, name, isthing, color}")

    p = sub.add_parser(
        "convert", help="convert transformers OneFormer/Mask2Former weights to oneseg and back"
    )
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from-hf",
        help="transformers OneFormer/Mask2Former: a local folder or a hub name ORG/NAME[@REV]",
    )
    way.add_argument("--to-hf", help="oneseg checkpoint to write as a transformers folder")
    p.add_argument("--out", required=True, help="output checkpoint file (or folder, --to-hf)")
    p.add_argument(
        "--task-text",
        help="--from-hf: the OneFormer task prompt the weights were trained with, recorded in "
        "the checkpoint (NV-OneFormer: 'This task is {task}.'); default: the source's",
    )

    p = sub.add_parser("demo", help="synthesize data, train on CPU, evaluate and draw results")
    p.add_argument("--results-dir", default="results/demo", help="where everything goes")
    p.add_argument("--fast", action="store_true", help="a much shorter run, for smoke tests")
    return parser


def _load(args):
    from oneseg.data.image_io import set_max_image_pixels  # imported on use: --help stays fast
    from oneseg.spec import load_spec  # imported on use: --help stays fast

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = load_spec(args.spec, args.overrides)
    for warning in caught:  # an ignored TAO key: one line each, as errors are
        print(f"oneseg: warning: {warning.message}", file=sys.stderr)
    if spec.tao is not None:
        print(f"oneseg: {spec.tao.summary()}", file=sys.stderr)
    set_max_image_pixels(spec.dataset.max_image_pixels)
    return spec


def _run_action(action: str, args) -> int:
    from oneseg.experiment import ActionRun  # imported on use: --help stays fast
    from oneseg.local_inputs import localize  # imported on use: --help stays fast
    from oneseg.spec import check_inputs  # imported on use: --help stays fast

    if args.explain:
        return _explain(args)
    spec = _load(args)
    if spec.tao is not None:
        from oneseg.spec import SpecError  # imported on use: --help stays fast

        try:
            spec.tao.refuse(action)
        except ValueError as err:
            raise SpecError(str(err)) from None
    entry = ACTION_ENTRY[action]
    check_inputs(spec, action)
    module_name, func_name = entry.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    with ActionRun(spec, action) as run:
        if spec.tao is not None:  # status.json says how the TAO spec was read
            run.log("RUNNING", spec.tao.summary())
        func(localize(spec, action, _download_logger(run)), run)
    if run.rank == 0:  # the other processes of a multi-process run say nothing more
        print(f"{action}: done; results in {run.dir}")
    return 0


def _download_logger(run):
    """Counts in status.json the files downloaded for the spec's URLs (0: all were cached)."""

    def on_download(url: str, count: int) -> None:
        run.kpis["downloaded_files"] = run.kpis.get("downloaded_files", 0) + count
        if count:
            run.log("RUNNING", message=f"downloaded {count} file(s) of {url}")

    return on_download


def _dispatch(args, parser) -> int:
    command = args.command
    if command is None:
        parser.print_help()
        return 2
    if command in ACTION_ENTRY:
        return _run_action(command, args)
    if command == "template":
        from oneseg.spec import template  # imported on use: --help stays fast

        sys.stdout.write(template(args.action, args.preset))
        return 0
    if command == "schema":
        from oneseg.spec import json_schema  # imported on use: --help stays fast

        print(json.dumps(json_schema(args.action), indent=2))
        return 0
    if command == "data":
        return _data(args, parser)
    if command == "tao":
        if args.tao_command != "explain":
            parser.parse_args(["tao", "--help"])
            return 2
        return _explain(args)
    if command == "convert":
        return _convert(args)
    if command == "demo":
        from oneseg.demo import run_demo  # imported on use: --help stays fast

        return run_demo(args.results_dir, fast=args.fast)
    raise CliError(f"unknown command {command}")


def _explain(args) -> int:
    from oneseg.spec import load_spec  # imported on use: --help stays fast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the explanation names every ignored key
        spec = load_spec(args.spec, args.overrides)
    if spec.tao is None:
        print("no TAO keys: every key is oneseg's own (oneseg template ACTION lists them)")
        return 0
    sys.stdout.write(spec.tao.explain())
    return 0


def _convert(args) -> int:
    if args.to_hf:
        from oneseg.checkpoint import convert_to_hf  # imported on use: --help stays fast

        convert_to_hf(args.to_hf, args.out)
    else:
        from oneseg.checkpoint import convert_checkpoint  # imported on use: --help stays fast
        from oneseg.hub import as_hub_source

        source = as_hub_source(args.from_hf) or args.from_hf
        convert_checkpoint(source, args.out, task_text=args.task_text)
    print(f"convert: wrote {args.out}")
    return 0


def _data(args, parser) -> int:
    if args.data_command == "synth":
        from oneseg.data.synth import write_synthetic_dataset  # imported on use: --help stays fast

        kwargs = {"seed": args.seed}
        if args.num_train is not None:
            kwargs["num_train"] = args.num_train
        if args.num_val is not None:
            kwargs["num_val"] = args.num_val
        if args.size is not None:
            kwargs["size"] = tuple(args.size)
        paths = write_synthetic_dataset(args.out, **kwargs)
        print(f"data synth: wrote {args.out}")
        print(f"  label map: {paths['label_map']}")
        for split in ("train", "val"):
            for name, path in paths[split].items():
                print(f"  {split} {name}: {path}")
        return 0
    if args.data_command == "check":
        from oneseg.data.archive import unpack_dataset_archives  # imported on use
        from oneseg.data.check import check_main  # imported on use: --help stays fast
        from oneseg.local_inputs import localize  # imported on use: --help stays fast

        spec = localize(_load(args), "check")  # archives unpacked as train and evaluate do
        dataset = unpack_dataset_archives(spec.dataset, Path(spec.results_dir) / "cache")
        return check_main(dataset, as_json=args.json)
    if args.data_command == "convert":
        from oneseg.data.convert import convert  # imported on use: --help stays fast

        report = convert(args.source, args.src, args.target, args.out, args.label_map)
        for line in report.lines():
            print(f"data convert: {line}")
        print(f"data convert: wrote {args.out} (report: {args.out}/convert_report.json)")
        return 0
    parser.parse_args(["data", "--help"])
    return 2


def describe_failure(err: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an exception that ended a command: every failure the user can
    act on is named here, once, for every command."""
    from oneseg.spec import SpecError  # imported on use: --help stays fast

    if isinstance(err, SpecError):
        return EXIT_BAD_INPUT, f"spec error: {_first_line(err)}"
    if isinstance(err, Stopped) or type(err).__name__ == "SIGTERMException":
        return EXIT_STOPPED, str(Stopped())
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; run the same command to resume"
    if isinstance(err, BadInput):
        return err.exit_code, f"error: {_first_line(err)}"
    if isinstance(err, RunFailed):
        return err.exit_code, f"failed: {_first_line(err)}"
    if isinstance(err, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return EXIT_BAD_INPUT, f"error: {_os_error(err)}"
    if isinstance(err, PermissionError | FileExistsError):
        return EXIT_BAD_INPUT, f"error: {_os_error(err)}"
    if isinstance(err, MemoryError):
        return EXIT_FAILED, "failed: out of memory; use smaller images or batches"
    if isinstance(err, CliError | KeyError | ValueError):
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        return EXIT_FAILED, f"error: {_first_line(msg)}"
    hint = f"run again with --debug or {DEBUG_ENV}=1 for the traceback"
    return EXIT_FAILED, f"failed: {type(err).__name__}: {_first_line(err)} ({hint})"


def _first_line(err) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if text.startswith("Caught ") and any(line.startswith("Original Traceback") for line in lines):
        # raised in a data-loader worker: the original message is the traceback's last line
        name, _, message = lines[-1].partition(": ")
        text = message if message and " " not in name else lines[-1]
    return text if len(text) <= 400 else text[:397] + "..."


def _os_error(err: OSError) -> str:
    if err.filename is None:
        return _first_line(err)
    return f"{err.filename}: {err.strerror or _first_line(err)}"


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = _parser()
    args = parser.parse_args(argv)
    quiet_thread_pool()  # before an action imports torch: OpenMP reads it once, when loaded
    keep_freed_memory()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if in_main_thread else None
    try:
        return _dispatch(args, parser)
    except (Exception, Stopped, KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, SystemExit) and type(err).__name__ != "SIGTERMException":
            raise
        code, line = describe_failure(err)
        if debug:
            traceback.print_exception(err)
        print(f"oneseg: {line}", file=sys.stderr)
        return code
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
