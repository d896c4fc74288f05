"""The export graph's fixed-size post-processing against `oneseg.model.postprocess`, on
hand-made logits rich enough to exercise every rule (several segments per image, stuff merged,
non-things dropped, queries failing the overlap test), in PyTorch and through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oneseg.export.graph import ExportGraph
from oneseg.model.postprocess import instance_inference, panoptic_inference, semantic_inference

ISTHING = [False, True, True, False, True]
QUERIES, SIZE = 12, 48


def logits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """class logits [2, Q, K+1] and smooth, blob-like mask logits [2, Q, H, W]."""
    gen = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(2, QUERIES, len(ISTHING) + 1, generator=gen) * 6
    coarse = torch.randn(2, QUERIES, 4, 4, generator=gen) * 12 - 8
    mask_logits = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return class_logits, mask_logits


class _Stub(nn.Module):
    num_queries = QUERIES


class PostprocessOnly(nn.Module):
    """The graph's post-processing of one task with the logits as inputs."""

    def __init__(self, task: str):
        super().__init__()
        self.graph = ExportGraph(
            _Stub(), task, isthing=ISTHING, task_tokens=None, topk=20, object_mask_threshold=0.6
        )

    def forward(self, class_logits, mask_logits):
        if self.graph.task != "instance":  # these two take the queries last, [B, H, W, Q]
            mask_logits = mask_logits.permute(0, 2, 3, 1)
        return getattr(self.graph, f"_{self.graph.task}")(class_logits, mask_logits)


def expected(task: str, class_logits, mask_logits, i: int):
    if task == "semantic":
        return semantic_inference(class_logits[i], mask_logits[i]).argmax(0)
    if task == "instance":
        things = [k for k, t in enumerate(ISTHING) if t]
        return instance_inference(class_logits[i], mask_logits[i], len(ISTHING), 20, things)
    return panoptic_inference(
        class_logits[i], mask_logits[i], len(ISTHING), ISTHING, object_mask_threshold=0.6
    )


def assert_matches(task, outputs, class_logits, mask_logits):
    outputs = [torch.as_tensor(np.asarray(o)) for o in outputs]
    for i in range(2):
        want = expected(task, class_logits, mask_logits, i)
        if task == "semantic":
            assert torch.equal(outputs[0][i], want)
        elif task == "instance":
            classes, scores, masks = (o[i] for o in outputs)
            kept = classes >= 0
            assert torch.equal(classes[kept], want["labels"])
            torch.testing.assert_close(scores[kept], want["scores"], atol=1e-4, rtol=0)
            assert torch.equal(masks[kept], want["masks"])
        else:
            segment_ids, segments = want
            panoptic_map, classes, scores, count = (o[i] for o in outputs)
            assert int(count) == len(segments)
            assert torch.equal(panoptic_map, segment_ids)
            assert classes[: len(segments)].tolist() == [s["label"] for s in segments]
            torch.testing.assert_close(
                scores[: len(segments)],
                torch.tensor([s["score"] for s in segments]),
                atol=1e-4,
                rtol=0,
            )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_graph_postprocess_equals_reference(task, seed):
    class_logits, mask_logits = logits(seed)
    with torch.no_grad():
        outputs = PostprocessOnly(task)(class_logits, mask_logits)
    assert_matches(task, outputs, class_logits, mask_logits)


def test_the_cases_are_rich():
    """Across the seeds: an image with several segments, confident queries dropped by the
    overlap test, stuff queries merged into one segment and non-thing detections dropped."""
    counts, dropped, merged, dropped_stuff = [], False, False, False
    for seed in range(3):
        class_logits, mask_logits = logits(seed)
        for i in range(2):
            _, segments = expected("panoptic", class_logits, mask_logits, i)
            counts.append(len(segments))
            scores, labels = class_logits[i].softmax(-1).max(-1)
            confident = int(((labels < len(ISTHING)) & (scores > 0.6)).sum())
            _, unmerged = panoptic_inference(
                class_logits[i], mask_logits[i], len(ISTHING), [True] * len(ISTHING), 0.6
            )
            merged |= len(unmerged) > len(segments)
            dropped |= confident > len(unmerged)
            detections = instance_inference(class_logits[i], mask_logits[i], len(ISTHING), 20)
            dropped_stuff |= any(not ISTHING[int(k)] for k in detections["labels"])
    assert max(counts) >= 4 and dropped and merged and dropped_stuff


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_graph_postprocess_through_onnxruntime(tmp_path, task):
    class_logits, mask_logits = logits(0)
    module = PostprocessOnly(task).eval()
    path = tmp_path / f"{task}.onnx"
    torch.onnx.export(
        module,
        (class_logits, mask_logits),
        str(path),
        input_names=["c", "m"],
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"c": class_logits.numpy(), "m": mask_logits.numpy()})
    assert_matches(task, outputs, class_logits, mask_logits)
