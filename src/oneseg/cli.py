"""The `oneseg` command line: spec-driven actions plus data, conversion and demo tools."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from oneseg.config import ACTIONS

# What each action runs: "module:function(spec, run)". Imported only when the action is called,
# so `oneseg --help` stays instant. An action mapped to None is not built yet.
ACTION_ENTRY = {
    "train": "oneseg.engine.train:run_train",
    "evaluate": "oneseg.engine.evaluate:run_evaluate",
    "inference": "oneseg.inference:run_inference",
    "export": None,
    "gen_trt_engine": None,
    "quantize": None,
}

ACTION_HELP = {
    "train": "train or fine-tune a model (Lightning; CPU, one GPU or many GPUs and nodes)",
    "evaluate": "PQ / AP / mIoU of a checkpoint on dataset.val or dataset.test",
    "inference": "segment images; write COCO panoptic PNG+JSON, RLE JSON, label PNGs, overlays",
    "export": "export to ONNX with post-processing in the graph",
    "gen_trt_engine": "build a TensorRT engine from an ONNX model",
    "quantize": "INT8-quantize an ONNX model",
}


class CliError(Exception):
    """A problem to report as one line with a non-zero exit."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneseg",
        description="Universal image segmentation: OneFormer and Mask2Former. Each action reads "
        "a YAML spec (-e) and dotted overrides (key.sub=value) and writes into "
        "results_dir/ACTION/.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for action in ACTIONS:
        p = sub.add_parser(action, help=ACTION_HELP[action], description=ACTION_HELP[action])
        p.add_argument("-e", "--experiment-spec", dest="spec", help="YAML spec file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.num_epochs=5")
    p = sub.add_parser("template", help="print a complete default spec for an action")
    p.add_argument("action", choices=ACTIONS)
    p = sub.add_parser("schema", help="print the JSON Schema of an action's spec")
    p.add_argument("action", choices=ACTIONS)

    data = sub.add_parser("data", help="dataset tools: synth, check")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = data_sub.add_parser("synth", help="write a small synthetic COCO-panoptic dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--num-train", type=int, default=None, help="training images")
    p.add_argument("--num-val", type=int, default=None, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    p = data_sub.add_parser("check", help="validate a dataset and name every problem")
    p.add_argument("-e", "--experiment-spec", dest="spec", help="YAML spec file")
    p.add_argument("overrides", nargs="*", help="dotted overrides")

    p = sub.add_parser("convert", help="convert transformers OneFormer weights to oneseg")
    p.add_argument("--from-hf", required=True, help="local transformers OneFormer folder")
    p.add_argument("--out", required=True, help="output checkpoint file")

    p = sub.add_parser("demo", help="synthesize data, train on CPU, evaluate and draw results")
    p.add_argument("--results-dir", default="results/demo", help="where everything goes")
    p.add_argument("--fast", action="store_true", help="a much shorter run, for smoke tests")
    return parser


def _load(args):
    from oneseg.spec import load_spec

    return load_spec(args.spec, args.overrides)


def _run_action(action: str, args) -> int:
    from oneseg.experiment import ActionRun
    from oneseg.spec import check_inputs

    spec = _load(args)
    entry = ACTION_ENTRY[action]
    if entry is None:
        raise CliError(f"'{action}' is not built yet in this version of oneseg")
    check_inputs(spec, action)
    module_name, func_name = entry.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    with ActionRun(spec, action) as run:
        func(spec, run)
    print(f"{action}: done; results in {run.dir}")
    return 0


def _dispatch(args, parser) -> int:
    command = args.command
    if command is None:
        parser.print_help()
        return 2
    if command in ACTIONS:
        return _run_action(command, args)
    if command == "template":
        from oneseg.spec import template

        sys.stdout.write(template(args.action))
        return 0
    if command == "schema":
        from oneseg.spec import json_schema

        print(json.dumps(json_schema(args.action), indent=2))
        return 0
    if command == "data":
        return _data(args, parser)
    if command == "convert":
        from oneseg.model.convert_hf import convert_hf_checkpoint

        convert_hf_checkpoint(args.from_hf, args.out)
        print(f"convert: wrote {args.out}")
        return 0
    if command == "demo":
        from oneseg.demo import run_demo

        return run_demo(args.results_dir, fast=args.fast)
    raise CliError(f"unknown command {command}")


def _data(args, parser) -> int:
    if args.data_command == "synth":
        from oneseg.data.synth import write_synthetic_dataset

        kwargs = {"seed": args.seed}
        if args.num_train is not None:
            kwargs["num_train"] = args.num_train
        if args.num_val is not None:
            kwargs["num_val"] = args.num_val
        paths = write_synthetic_dataset(args.out, **kwargs)
        print(f"data synth: wrote {args.out}")
        print(f"  label map: {paths['label_map']}")
        for split in ("train", "val"):
            for name, path in paths[split].items():
                print(f"  {split} {name}: {path}")
        return 0
    if args.data_command == "check":
        from oneseg.data.check import check_main

        return check_main(_load(args).dataset)
    parser.parse_args(["data", "--help"])
    return 2


def main(argv: list[str] | None = None) -> int:
    from oneseg.spec import SpecError

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser)
    except SpecError as err:
        print(f"oneseg: spec error: {err}", file=sys.stderr)
        return 2
    except (CliError, FileNotFoundError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"oneseg: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("oneseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
