"""Very large outputs are post-processed in strips of rows: the same results as the direct path
(to float rounding of the upsampling) within a bounded memory."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oneseg.model import postprocess as pp
from oneseg.model.strips import upsample_rows
from oneseg.results import QueryMasks

NUM_CLASSES = 5
ISTHING = [True, True, False, False, True]
PADDED, IMAGE, OUTPUT = (64, 96), (60, 90), (301, 452)  # the output 5x the model's input


def _outputs(seed=0, queries=10):
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(queries, (1, 16, 24), generator=g)
    masks = F.one_hot(owner, queries).permute(0, 3, 1, 2) * 8.0 - 4.0  # [1, Q, h, w]
    masks += torch.randn(masks.shape, generator=g) * 2
    classes = torch.randn(1, queries, NUM_CLASSES + 1, generator=g) * 3
    classes[0, :, :-1] += 4.0  # confident queries, so panoptic keeps several
    return {"pred_logits": classes, "pred_masks": masks}


def _both(task, monkeypatch, **kwargs):
    args = (_outputs(), task, PADDED, [IMAGE], [OUTPUT])
    config = pp.PostprocessConfig(object_mask_threshold=0.5, **kwargs)
    kwargs = dict(num_classes=NUM_CLASSES, isthing=ISTHING, config=config)
    direct = pp.postprocess(*args, **kwargs)[0]
    monkeypatch.setattr(pp, "FULL_SIZE_BYTES", 0)  # every output counts as large
    monkeypatch.setattr(pp, "STRIP_BYTES", 10 * OUTPUT[1] * 4 * 7)  # about 7 rows a strip
    strips = pp.postprocess(*args, **kwargs)[0]
    return direct, strips


def test_upsample_rows_is_bilinear_interpolation():
    low = torch.randn(3, 37, 50) * 5
    for size in [(300, 401), (37, 50), (20, 31)]:
        reference = F.interpolate(low[None], size=size, mode="bilinear", align_corners=False)[0]
        rows = torch.cat(
            [upsample_rows(low, size, r, min(r + 13, size[0])) for r in range(0, size[0], 13)], 1
        )
        torch.testing.assert_close(rows, reference, rtol=1e-5, atol=1e-4)
    # at the same size it is the input itself
    assert torch.equal(upsample_rows(low, (37, 50), 0, 37), low)


def test_semantic_in_strips(monkeypatch):
    direct, strips = _both("semantic", monkeypatch)
    direct, strips = direct.labels, strips.labels
    assert strips.shape == direct.shape == OUTPUT
    assert (strips == direct).mean() > 0.999


def test_panoptic_in_strips(monkeypatch):
    direct, strips = _both("panoptic", monkeypatch)
    direct_ids, direct_segments = direct.segment_ids, direct.segments
    strip_ids, strip_segments = strips.segment_ids, strips.segments
    assert len(direct_segments) >= 3
    key = [(s["id"], s["label"], s["isthing"]) for s in direct_segments]
    assert key == [(s["id"], s["label"], s["isthing"]) for s in strip_segments]
    for a, b in zip(direct_segments, strip_segments):
        assert a["score"] == b["score"] and abs(a["area"] - b["area"]) <= 0.002 * a["area"] + 2
    assert (strip_ids == direct_ids).mean() > 0.999


def test_instance_in_strips_shares_one_mask_per_query(monkeypatch):
    direct, strips = _both("instance", monkeypatch, topk=20)
    assert isinstance(strips.masks, QueryMasks) and isinstance(direct.masks, np.ndarray)
    assert strips.masks.query_masks.shape[1:] == OUTPUT
    assert len(strips.masks.query_masks) == len(np.unique(strips.queries))
    assert np.array_equal(strips.labels, direct.labels)
    assert np.array_equal(strips.queries, direct.queries)
    np.testing.assert_allclose(strips.scores, direct.scores, rtol=1e-3, atol=1e-5)
    assert (np.asarray(strips.masks) == direct.masks).mean() > 0.999


def test_query_masks_stand_for_the_full_array(monkeypatch):
    from oneseg.metrics.instance import masks_to_rle

    _, strips = _both("instance", monkeypatch, topk=20)
    masks = strips.masks
    full = np.asarray(masks)
    assert full.shape == masks.shape and len(masks) == len(full)
    assert np.array_equal(masks[3], full[3])
    assert masks_to_rle(masks) == masks_to_rle(full)


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_normal_outputs_take_the_direct_path(task, monkeypatch):
    called = []
    monkeypatch.setattr(pp, "_postprocess_in_strips", lambda *a, **k: called.append(1))
    pp.postprocess(_outputs(), task, PADDED, [IMAGE], [OUTPUT], isthing=ISTHING)
    assert not called


def test_inference_action_on_a_large_image_writes_every_file(
    tmp_path, synth_data, tiny_checkpoint, monkeypatch
):
    """Through the action: strip results make the same PNGs, RLE JSON and overlays."""
    import json

    from pycocotools.coco import COCO

    from oneseg.engine.inference import run_inference
    from oneseg.experiment import ActionRun
    from oneseg.spec import spec_from_dict

    image = sorted(synth_data["val"]["images"].iterdir())[0]

    def run(folder):
        spec = spec_from_dict(
            {
                "results_dir": str(folder),
                "model": {"object_mask_threshold": 0.0, "overlap_threshold": 0.0},
                "dataset": {"augmentation": {"eval_min_size": 32}},  # the output 2x the input
                "inference": {
                    "checkpoint": str(tiny_checkpoint),
                    "images": str(image),
                    "tasks": ["semantic", "instance", "panoptic"],
                },
            }
        )
        with ActionRun(spec, "inference") as action:
            run_inference(spec, action)
        return folder / "inference"

    direct = run(tmp_path / "direct")
    monkeypatch.setattr(pp, "FULL_SIZE_BYTES", 0)
    strips = run(tmp_path / "strips")
    for name in ("semantic", "panoptic"):
        a = np.asarray(Image.open(direct / name / f"{image.stem}.png"))
        b = np.asarray(Image.open(strips / name / f"{image.stem}.png"))
        assert a.shape == b.shape and (a == b).mean() > 0.99
    assert len(list((strips / "overlays").rglob("*.png"))) == 3
    coco = COCO(str(strips / "images.json"))
    results = coco.loadRes(str(strips / "instance.json"))
    expected = json.loads((direct / "instance.json").read_text())
    assert len(results.anns) == len(expected) > 0
