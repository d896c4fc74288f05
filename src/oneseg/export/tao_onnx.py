"""ONNX files and TensorRT engines made by TAO instead of oneseg: recognised, and refused with
one line saying exactly what running them would need.

TAO's exports (nvidia_tao_pytorch `cv/{mask2former,oneformer}/scripts/export.py`, run by
tao_deploy's inferencers) differ from oneseg's in three ways that decide whether they can run:
- the deformable attention of the pixel decoder is one custom node,
  `nvidia::MultiscaleDeformableAttnPlugin_TRT`, a TensorRT plugin with no ONNX Runtime kernel;
- the input is a float image already resized, scaled and normalised outside the graph
  (Mask2Former: `inputs` [B, 3, H, W], (x / 255 - mean) / std with the spec's 0-1 mean and std;
  OneFormer: `images` plus `task_tokens` [B, 77], the CLIP ids of the task text);
- the outputs are the network's raw predictions, post-processed by tao_deploy in numpy
  (Mask2Former semantic: `pred_masks` = per-class scores; instance: `pred_masks`,
  `pred_scores`, `pred_classes`; panoptic: `prob_masks` too; OneFormer: `pred_logits` and
  `pred_masks` of every query), with class indices that are raw category ids when the spec's
  `contiguous_id` is false and 1-based positions when true.
oneseg's files hold the pre- and post-processing in the graph and run on ONNX Runtime, and their
description names classes, size and task. The first difference alone stops ONNX Runtime from
loading a TAO file, so `tao_refusal` names it (and the rest) instead of running it.
"""

from __future__ import annotations

from pathlib import Path

TAO_PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"
MASK2FORMER_INPUTS = ("inputs",)
ONEFORMER_INPUTS = ("images", "task_tokens")
_NEEDED = (
    "run it as TAO does (tao_deploy) or export the model again with `oneseg export` from a "
    "oneseg checkpoint"
)


def tao_layout(proto) -> str | None:
    """'mask2former' or 'oneformer' when an ONNX model has TAO's inputs or plugin, else None."""
    inputs = tuple(i.name for i in proto.graph.input)
    plugin = any(node.op_type == TAO_PLUGIN for node in proto.graph.node)
    if inputs[: len(ONEFORMER_INPUTS)] == ONEFORMER_INPUTS:
        return "oneformer"
    if inputs[:1] == MASK2FORMER_INPUTS or plugin:
        return "mask2former"
    return None


def tao_refusal(path: str | Path, proto) -> str | None:
    """One line refusing a TAO-exported ONNX file, or None when it does not look like one."""
    kind = tao_layout(proto)
    if kind is None:
        return None
    outputs = ", ".join(o.name for o in proto.graph.output)
    plugin = sum(node.op_type == TAO_PLUGIN for node in proto.graph.node)
    missing = [
        f"{plugin} {TAO_PLUGIN} node(s), a TensorRT plugin ONNX Runtime has no kernel for"
        if plugin
        else "",
        "the resize and normalisation before it (TAO does them outside the graph)",
        f"the post-processing of its raw outputs ({outputs})",
        "the classes (TAO keeps them in the spec's label map, not in the file)",
    ]
    what = "; ".join(m for m in missing if m)
    return f"{path}: a TAO {kind} ONNX export, which oneseg cannot run: it holds {what}; {_NEEDED}"


def tao_engine_refusal(path: str | Path, sidecar: Path) -> str:
    """One line refusing a TensorRT engine without oneseg's description (a TAO-built engine)."""
    return (
        f"{path}: no {sidecar.name} beside it: not built by `oneseg gen_trt_engine` (a TAO-built "
        "engine takes TAO's resized, normalised float input and returns raw predictions that "
        "tao_deploy post-processes; oneseg's engines hold both steps and their description "
        f"names the classes, size and task); {_NEEDED} and build its engine with "
        "`oneseg gen_trt_engine`"
    )
