import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from oneseg.metrics import InstanceAP, evaluate_segm, load_coco, masks_to_rle

H, W = 120, 160


def rectangle(x0, y0, x1, y1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_gt(seed=0):
    """Three images with small and medium boxes as polygons or RLE, and one crowd region."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "width": W, "height": H, "file_name": f"{image_id}.jpg"})
        for i in range(6):
            x0, y0 = 25 * i + int(rng.integers(0, 5)), int(rng.integers(0, 60))
            x1, y1 = x0 + int(rng.integers(6, 24)), y0 + int(rng.integers(6, 60))
            if i % 3:
                segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
            else:
                segmentation = masks_to_rle(rectangle(x0, y0, x1, y1)[None])[0]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 2, 3])),
                    "segmentation": segmentation,
                    "area": float((x1 - x0) * (y1 - y0)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    crowd = masks_to_rle(rectangle(0, 90, 160, 120)[None])[0]
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 2,
            "category_id": 1,
            "segmentation": crowd,
            "area": 160.0 * 30,
            "bbox": [0, 90, 160, 30],
            "iscrowd": 1,
        }
    )
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3, 4)]
    return {"images": images, "annotations": annotations, "categories": categories}


def gt_masks(coco, image_id):
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
    return masks, np.array([a["category_id"] for a in anns])


def perturbed_predictions(coco, seed=1):
    rng = np.random.default_rng(seed)
    metric = InstanceAP(coco)
    for image_id in coco.getImgIds():
        masks, category_ids = gt_masks(coco, image_id)
        masks = np.stack([np.roll(m, rng.integers(-2, 3, size=2), axis=(0, 1)) for m in masks])
        category_ids = np.where(rng.random(len(masks)) < 0.2, 2, category_ids)
        spurious = np.stack([rectangle(10 * k, 70, 10 * k + 20, 100) for k in range(3)])
        masks = np.concatenate([masks, spurious, rectangle(0, 95, 40, 120)[None]])
        category_ids = np.concatenate([category_ids, [3, 2, 1, 1]])
        metric.update(image_id, masks, rng.random(len(masks)), category_ids)
    return metric


def direct_cocoeval(coco, results, image_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="segm")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def test_masks_to_rle_round_trip():
    masks = np.stack([rectangle(3, 4, 50, 20), np.zeros((H, W), bool), rectangle(0, 0, W, H)])
    rles = masks_to_rle(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [H, W] for r in rles)
    json.dumps(rles)
    decoded = mask_util.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), masks)
    assert masks_to_rle(torch.from_numpy(masks)) == rles
    assert masks_to_rle(np.zeros((0, H, W), bool)) == []


def test_equals_direct_cocoeval(capsys):
    coco = load_coco(make_gt())
    metric = perturbed_predictions(coco)
    results = copy.deepcopy(metric.results)
    ours = metric.compute()
    assert metric.results == results  # pycocotools did not write into our results
    evaluator = direct_cocoeval(coco, results)
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    assert [ours[n] for n in names] == pytest.approx(list(evaluator.stats[:6]), abs=0)
    assert 0.1 < ours["AP"] < 0.9 and ours["APm"] > -1 and ours["APs"] > -1
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    for k, category_id in enumerate((1, 2, 3)):
        assert ours["per_class"][category_id] == pytest.approx(precision[:, :, k].mean())
    assert np.isnan(ours["per_class"][4])  # no ground truth
    assert capsys.readouterr().out == ""


def test_ground_truth_as_prediction_scores_one():
    coco = load_coco(make_gt())
    metric = InstanceAP(coco)
    for image_id in coco.getImgIds():
        masks, category_ids = gt_masks(coco, image_id)
        metric.update(image_id, masks, np.ones(len(masks)), category_ids)
    result = metric.compute()
    assert result["AP"] == result["AP50"] == result["AP75"] == 1.0
    assert all(result["per_class"][c] == 1.0 for c in (1, 2, 3))


def test_no_predictions_scores_zero(tmp_path):
    gt = make_gt()
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    metric = InstanceAP(path)
    metric.update(1, np.zeros((0, H, W), bool), [], [])
    result = metric.compute()
    assert result["AP"] == result["AP50"] == result["APs"] == 0.0
    assert [result["per_class"][c] for c in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert evaluate_segm(gt, [])["AP"] == 0.0


def test_merge_and_image_subset():
    coco = load_coco(make_gt())
    whole = perturbed_predictions(coco)
    first, second = InstanceAP(coco), InstanceAP(coco)
    first.add_results(r for r in whole.results if r["image_id"] == 1)
    second.add_results(r for r in whole.results if r["image_id"] != 1)
    merged, expected = first.merge(second).compute(), whole.compute()
    assert merged.pop("per_class") == pytest.approx(expected.pop("per_class"), nan_ok=True)
    assert merged == expected
    assert whole.compute(image_ids=[1])["AP"] == direct_cocoeval(coco, whole.results, [1]).stats[0]
