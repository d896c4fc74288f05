import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oneseg.model.postprocess import (
    instance_inference,
    panoptic_inference,
    postprocess,
    resize_mask_logits,
    semantic_inference,
)

NUM_CLASSES = 5
ISTHING = [True, True, False, False, True]


def blobby_masks(batch, queries, size, generator):
    """Mask logits where each query mostly owns its own random patches, with noisy borders."""
    owner = torch.randint(queries, (batch, size // 4, size // 4), generator=generator)
    coarse = F.one_hot(owner, queries).permute(0, 3, 1, 2) * 8.0 - 4.0  # [B, Q, h, w]
    coarse += torch.randn(coarse.shape, generator=generator) * 2
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def confident_class_logits(labels):
    """Class logits whose softmax is exactly 1.0 (float32) at `labels` (K = no-object)."""
    logits = torch.full((*labels.shape, NUM_CLASSES + 1), -20.0)
    logits.scatter_(-1, labels[..., None], 20.0)
    return logits


def hf_image_processing():
    """transformers' OneFormer image-processing module; the parity tests that call this are
    skipped where transformers is not installed, the others run."""
    return pytest.importorskip("transformers.models.oneformer.image_processing_oneformer")


def hf_processor():
    processor = hf_image_processing().OneFormerImageProcessor()
    processor.class_info_file = ""  # it tests `"ade20k" in class_info_file`
    processor.metadata = {"thing_ids": [i for i, t in enumerate(ISTHING) if t]}
    return processor


def hf_outputs(class_logits, mask_logits):
    return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)


def same_up_to_renumbering(ours, theirs):
    """A bijection between segment ids maps one segment map onto the other (0 stays 0)."""
    pairs = torch.unique(torch.stack([ours.flatten().long(), theirs.flatten().long()]), dim=1)
    ours_ids, theirs_ids = pairs
    return len(torch.unique(ours_ids)) == pairs.shape[1] == len(torch.unique(theirs_ids)) and bool(
        ((ours_ids == 0) == (theirs_ids == 0)).all()
    )


def test_semantic_matches_transformers():
    g = torch.Generator().manual_seed(0)
    class_logits = torch.randn(2, 12, NUM_CLASSES + 1, generator=g) * 3
    mask_logits = blobby_masks(2, 12, 32, g)
    outputs = {"pred_logits": class_logits, "pred_masks": mask_logits}
    ours = postprocess(outputs, "semantic", (32, 32), [(32, 32)] * 2, num_classes=NUM_CLASSES)
    theirs = hf_processor().post_process_semantic_segmentation(
        hf_outputs(class_logits, mask_logits)
    )
    for result, expected in zip(ours, theirs):
        assert result.labels.dtype == np.int32
        assert np.array_equal(result.labels, expected.numpy())
    assert len(np.unique(ours[0].labels)) > 2


def test_semantic_inference_batched_equals_per_image():
    g = torch.Generator().manual_seed(1)
    class_logits = torch.randn(3, 7, NUM_CLASSES + 1, generator=g)
    mask_logits = torch.randn(3, 7, 9, 11, generator=g)
    batched = semantic_inference(class_logits, mask_logits)
    assert batched.shape == (3, NUM_CLASSES, 9, 11)
    for b in range(3):
        torch.testing.assert_close(batched[b], semantic_inference(class_logits[b], mask_logits[b]))


def panoptic_case(seed):
    """Confident thing and stuff queries (score exactly 1), confident no-object, unsure ones."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 4, NUM_CLASSES, NUM_CLASSES, 1, 3, 0])
    class_logits = confident_class_logits(labels)
    class_logits[-3:] = 0.0  # uniform: score 1/(K+1), below any threshold used here
    mask_logits = blobby_masks(1, len(labels), 48, g)[0]
    return class_logits, mask_logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panoptic_matches_transformers_with_argmax_rule(seed):
    # With class scores of exactly 1, transformers' overlap test on score-scaled probabilities
    # equals the original's; the overlap threshold is chosen so that no area ratio ties it.
    class_logits, mask_logits = panoptic_case(seed)
    threshold = 0.6180339887
    ids, segments = panoptic_inference(
        class_logits, mask_logits, NUM_CLASSES, ISTHING, 0.8, threshold, require_own_mask=False
    )
    (theirs,) = hf_processor().post_process_panoptic_segmentation(
        hf_outputs(class_logits[None], mask_logits[None]),
        threshold=0.8,
        overlap_mask_area_threshold=threshold,
        label_ids_to_fuse={i for i, t in enumerate(ISTHING) if not t},
    )
    assert ids.dtype == torch.int32
    assert same_up_to_renumbering(ids, theirs["segmentation"])
    their_labels = {s["id"]: s["label_id"] for s in theirs["segments_info"]}
    for segment in segments:
        their_id = theirs["segmentation"][ids == segment["id"]][0].item()
        assert their_labels[their_id] == segment["label"]
        assert segment["area"] == (ids == segment["id"]).sum().item()
        assert segment["isthing"] == ISTHING[segment["label"]]
    # stuff of one class is one segment; ids run from 1
    stuff_labels = [s["label"] for s in segments if not s["isthing"]]
    assert len(stuff_labels) == len(set(stuff_labels))
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert len(segments) >= 3
    # transformers lists a merged stuff segment once per query
    assert len(theirs["segments_info"]) > len(segments)


def test_panoptic_own_mask_rule_voids_unsure_pixels():
    class_logits, mask_logits = panoptic_case(3)
    args = (class_logits, mask_logits, NUM_CLASSES, ISTHING, 0.8, 0.5)
    argmax_ids, _ = panoptic_inference(*args, require_own_mask=False)
    own_ids, segments = panoptic_inference(*args)
    scores, labels = class_logits.softmax(-1).max(-1)
    kept = (scores > 0.8) & (labels != NUM_CLASSES)
    best_prob = mask_logits[kept].sigmoid().max(0).values
    expected = torch.where(best_prob >= 0.5, argmax_ids, torch.zeros_like(argmax_ids))
    assert same_up_to_renumbering(own_ids, expected)
    assert (own_ids == 0).sum() > (argmax_ids == 0).sum()
    assert sum(s["area"] for s in segments) == (own_ids > 0).sum().item()


def test_panoptic_merges_stuff_and_keeps_things_apart():
    # two stuff queries of class 2 and two thing queries of class 0, each owning a quadrant
    mask_logits = torch.full((4, 4, 4), -5.0)
    mask_logits[0, :2, :2] = mask_logits[1, :2, 2:] = 5.0  # stuff, class 2
    mask_logits[2, 2:, :2] = mask_logits[3, 2:, 2:] = 5.0  # things, class 0
    class_logits = confident_class_logits(torch.tensor([2, 2, 0, 0]))
    ids, segments = panoptic_inference(class_logits, mask_logits, NUM_CLASSES, ISTHING)
    assert ids.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert [(s["id"], s["label"], s["isthing"], s["area"]) for s in segments] == [
        (1, 2, False, 8),
        (2, 0, True, 4),
        (3, 0, True, 4),
    ]


def test_panoptic_without_confident_queries_is_void():
    class_logits = torch.zeros(3, NUM_CLASSES + 1)
    ids, segments = panoptic_inference(class_logits, torch.randn(3, 5, 6), NUM_CLASSES, ISTHING)
    assert segments == [] and ids.shape == (5, 6) and not ids.any()


def spy_on_hf_instance_selection(monkeypatch, processor, class_logits, mask_logits, task_type):
    """The (masks, scores, labels) transformers picks before making its segment map."""
    seen = {}

    def spy(mask_pred, scores, labels, *args, **kwargs):
        seen.update(masks=mask_pred.clone(), scores=scores.clone(), labels=labels.clone())
        return torch.zeros(mask_pred.shape[1:], dtype=torch.int32), []

    monkeypatch.setattr(hf_image_processing(), "compute_segments", spy)
    processor.post_process_instance_segmentation(
        hf_outputs(class_logits[None], mask_logits[None]), task_type=task_type, is_demo=False
    )
    order = seen["scores"].argsort(descending=True)
    return {k: v[order] for k, v in seen.items()}


@pytest.mark.parametrize("task_type", ["instance", "panoptic"])
def test_instance_topk_matches_transformers(monkeypatch, task_type):
    g = torch.Generator().manual_seed(4)
    queries = 10
    class_logits = torch.randn(queries, NUM_CLASSES + 1, generator=g) * 2
    mask_logits = torch.randn(queries, 16, 16, generator=g)
    theirs = spy_on_hf_instance_selection(
        monkeypatch, hf_processor(), class_logits, mask_logits, task_type
    )
    # transformers keeps top-Q pairs and drops stuff only when told the task is panoptic
    things = [i for i, t in enumerate(ISTHING) if t] if task_type == "panoptic" else None
    ours = instance_inference(class_logits, mask_logits, NUM_CLASSES, queries, things)
    class_probs = class_logits.softmax(-1)[ours["queries"], ours["labels"]]
    assert torch.equal(ours["labels"], theirs["labels"])
    torch.testing.assert_close(class_probs, theirs["scores"])
    assert torch.equal(ours["masks"], theirs["masks"] > 0)
    if things is None:
        assert len(ours["labels"]) == queries
    else:
        assert 0 < len(ours["labels"]) < queries and all(ISTHING[i] for i in ours["labels"])


def test_instance_scores_by_hand():
    class_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # Q=2, K=2
    mask_logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]], [[-1.0, -2.0], [-3.0, -4.0]]])
    result = instance_inference(class_logits, mask_logits, num_classes=2, topk=3)
    probs = class_logits.softmax(-1)[:, :-1]
    assert result["labels"].tolist() == [0, 1, 0]
    assert result["queries"].tolist() == [0, 1, 1]
    assert result["masks"][0].tolist() == [[True, False], [True, False]]
    mean_inside = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(0.5))) / 2
    torch.testing.assert_close(result["scores"][0], probs[0, 0] * mean_inside)
    assert result["scores"][1] == result["scores"][2] == 0  # empty mask of query 1
    only_class_0 = instance_inference(class_logits, mask_logits, 2, topk=3, thing_classes=[0])
    assert only_class_0["queries"].tolist() == [0, 1]
    confident = instance_inference(class_logits, mask_logits, 2, topk=3, score_threshold=0.6)
    assert confident["queries"].tolist() == [0]


def test_wrong_num_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        instance_inference(torch.zeros(3, 4), torch.zeros(3, 2, 2), num_classes=4)


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_padded_input_equals_unpadded_part(task):
    g = torch.Generator().manual_seed(5)
    class_logits = confident_class_logits(torch.tensor([0, 2, 3, 4, 1, 5]))[None]
    padded = blobby_masks(1, 6, 48, g)
    padded[..., 30:, :] = padded[..., :, 36:] = 8.0  # padding that would win if it leaked
    kwargs = dict(isthing=ISTHING, output_sizes=[(45, 54)])
    cropped = postprocess(
        {"pred_logits": class_logits, "pred_masks": padded}, task, (48, 48), [(30, 36)], **kwargs
    )[0]
    unpadded = {"pred_logits": class_logits, "pred_masks": padded[..., :30, :36]}
    expected = postprocess(unpadded, task, (30, 36), [(30, 36)], **kwargs)[0]
    assert_same(cropped, expected)


def test_crop_keeps_padding_out_where_transformers_lets_it_in():
    # Low-resolution logits (stride 4) of a 32x32 padded input whose image is 20x24.
    mask_logits = torch.full((1, 2, 8, 8), -6.0)
    mask_logits[0, 0, :5, :6] = 6.0  # class 0 covers the image
    mask_logits[0, 1, 6:, :] = 6.0  # class 1 covers only padding rows
    class_logits = confident_class_logits(torch.tensor([0, 1]))[None]
    outputs = {"pred_logits": class_logits, "pred_masks": mask_logits}
    (ours,) = postprocess(outputs, "semantic", (32, 32), [(20, 24)], [(40, 48)])
    assert (ours.labels == 0).all()

    at_padded_size = F.interpolate(mask_logits, size=(32, 32), mode="bilinear")
    (theirs,) = hf_processor().post_process_semantic_segmentation(
        hf_outputs(class_logits, at_padded_size), target_sizes=[(40, 48)]
    )
    assert (theirs == 1).any()


def test_resize_mask_logits_shapes():
    logits = torch.randn(2, 3, 8, 10)
    resized = resize_mask_logits(logits, (32, 40), (30, 33), (60, 66))
    assert resized.shape == (2, 3, 60, 66)
    same = resize_mask_logits(logits, (8, 10), (8, 10), (8, 10))
    assert torch.equal(same, logits)


def assert_same(a, b):
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        assert_same(dataclasses.asdict(a), dataclasses.asdict(b))
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_postprocess_batched_equals_per_image():
    g = torch.Generator().manual_seed(6)
    class_logits = torch.randn(2, 8, NUM_CLASSES + 1, generator=g) * 6
    mask_logits = blobby_masks(2, 8, 16, g)
    sizes, out_sizes = [(40, 36), (28, 40)], [(20, 18), (56, 80)]
    outputs = {"pred_logits": class_logits, "pred_masks": mask_logits}
    for task in ("semantic", "instance", "panoptic"):
        batched = postprocess(outputs, task, (40, 40), sizes, out_sizes, isthing=ISTHING)
        for i in range(2):
            single = {k: v[i : i + 1] for k, v in outputs.items()}
            (alone,) = postprocess(
                single, task, (40, 40), [sizes[i]], [out_sizes[i]], isthing=ISTHING
            )
            assert_same(alone, batched[i])
        if task == "panoptic":
            assert all(len(result.segments) >= 2 for result in batched)
    with pytest.raises(ValueError, match="task"):
        postprocess(outputs, "detection", (40, 40), sizes)


@pytest.mark.parametrize("threshold", [0.3, 1.0])
def test_panoptic_postprocess_resizes_only_the_queries_that_take_part(threshold):
    """postprocess resizes the kept queries only; the result equals panoptic_inference on all
    queries resized, including the case where no query is confident."""
    from oneseg.model.postprocess import PostprocessConfig, postprocess, resize_mask_logits

    gen = torch.Generator().manual_seed(3)
    class_logits = torch.randn(1, 12, 5, generator=gen) * 3
    mask_logits = torch.randn(1, 12, 8, 10, generator=gen) * 4
    isthing = [True, True, False, False]
    config = PostprocessConfig(object_mask_threshold=threshold, overlap_threshold=0.5)
    out = postprocess(
        {"pred_logits": class_logits, "pred_masks": mask_logits},
        "panoptic",
        (32, 40),
        [(30, 37)],
        [(45, 50)],
        isthing=isthing,
        config=config,
    )[0]
    masks = resize_mask_logits(mask_logits, (32, 40), (30, 37), (45, 50))[0]
    ids, segments = panoptic_inference(class_logits[0], masks, 4, isthing, threshold, 0.5)
    assert np.array_equal(out.segment_ids, ids.numpy()) and out.segments == segments
    assert ids.shape == (45, 50)
    assert (len(segments) > 0) == (threshold < 1)
