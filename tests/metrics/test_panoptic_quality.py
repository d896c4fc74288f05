import json

import numpy as np
import pytest
import torch
from PIL import Image

from oneseg.io import read_id_png, rgb_to_id
from oneseg.metrics import PanopticQuality, evaluate_coco_panoptic

THINGS = (1, 2, 3, 5, 8)
STUFF = (10, 11, 12)
CATEGORIES = {**{c: True for c in THINGS}, **{c: False for c in STUFF}}


def seg(id, category_id, iscrowd=0):
    return {"id": id, "category_id": category_id, "iscrowd": iscrowd}


def pq_of(gt_ids, gt_segments, pred_ids, pred_segments, categories=CATEGORIES):
    metric = PanopticQuality(categories)
    metric.update(np.array(gt_ids), gt_segments, np.array(pred_ids), pred_segments)
    return metric.compute()


# --- a per-segment reference written straight from the definition --------------------------


def reference_stats(categories, images):
    """Per-class [tp, fp, fn, iou sum] with one boolean mask per segment and a loop over pairs."""
    stats = {c: [0, 0, 0, 0.0] for c in categories}
    ignored_predictions = 0
    for gt_ids, gt_segments, pred_ids, pred_segments in images:
        void = gt_ids == 0
        gt_masks = {g["id"]: gt_ids == g["id"] for g in gt_segments}
        pred_masks = {p["id"]: pred_ids == p["id"] for p in pred_segments}
        matched_gt, matched_pred = set(), set()
        for g in gt_segments:
            if g["iscrowd"]:
                continue
            for p in pred_segments:
                if p["category_id"] != g["category_id"]:
                    continue
                gm, pm = gt_masks[g["id"]], pred_masks[p["id"]]
                inter = np.count_nonzero(gm & pm)
                union = np.count_nonzero(gm | pm) - np.count_nonzero(pm & void)
                if inter > 0 and inter / union > 0.5:
                    stats[g["category_id"]][0] += 1
                    stats[g["category_id"]][3] += inter / union
                    matched_gt.add(g["id"])
                    matched_pred.add(p["id"])
        for g in gt_segments:
            if not g["iscrowd"] and g["id"] not in matched_gt:
                stats[g["category_id"]][2] += 1
        for p in pred_segments:
            if p["id"] in matched_pred:
                continue
            pm = pred_masks[p["id"]]
            ignore = void.copy()
            for g in gt_segments:
                if g["iscrowd"] and g["category_id"] == p["category_id"]:
                    ignore |= gt_masks[g["id"]]
            if np.count_nonzero(pm & ignore) / np.count_nonzero(pm) > 0.5:
                ignored_predictions += 1
                continue
            stats[p["category_id"]][1] += 1
    return stats, ignored_predictions


def reference_pq(categories, stats):
    """{"All"/"Things"/"Stuff": pq, sq, rq, n} averaged over classes with tp + fp + fn > 0."""
    out = {}
    for name, keep in (("All", None), ("Things", True), ("Stuff", False)):
        values = []
        for c, isthing in categories.items():
            tp, fp, fn, iou = stats[c]
            if (keep is not None and isthing != keep) or tp + fp + fn == 0:
                continue
            values.append(
                (iou / (tp + fp / 2 + fn / 2), iou / tp if tp else 0.0, tp / (tp + fp / 2 + fn / 2))
            )
        mean = np.mean(values, axis=0) if values else (0.0, 0.0, 0.0)
        out[name] = {"pq": mean[0], "sq": mean[1], "rq": mean[2], "n": len(values)}
    return out


# --- synthetic images with crowd, void, unlisted ids and perturbed predictions ---------------


def random_shape(rng, h, w):
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    ry, rx = rng.integers(2, h // 3), rng.integers(2, w // 3)
    if rng.random() < 0.5:
        return (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def to_ids(rng, index, segment_info):
    """Index map (0 = void, i = segment i) -> random non-zero ids and the segments present."""
    ids = rng.choice(2**24 - 1, size=len(segment_info) + 1, replace=False) + 1
    ids[0] = 0
    present = set(np.unique(index).tolist()) - {0}
    segments = [
        seg(int(ids[i]), c, crowd) for i, (c, crowd) in enumerate(segment_info, 1) if i in present
    ]
    return ids[index], segments


def random_image(rng, h=64, w=80):
    index = np.ones((h, w), np.int64)
    info = [(int(rng.choice(STUFF)), 0)]
    cut = rng.integers(w // 4, 3 * w // 4)
    index[:, cut:] = 2
    info.append((int(rng.choice(STUFF)), 0))
    for _ in range(rng.integers(3, 9)):
        index[random_shape(rng, h, w)] = len(info) + 1
        info.append((int(rng.choice(THINGS)), int(rng.random() < 0.25)))
    index[random_shape(rng, h, w) & (rng.random((h, w)) < 0.7)] = 0  # void
    index[rng.random((h, w)) < 0.02] = 0
    gt_ids, gt_segments = to_ids(rng, index, info)
    if rng.random() < 0.3:  # ids in the map that the segment list does not name
        gt_ids[random_shape(rng, h, w) & (rng.random((h, w)) < 0.5)] = 2**24 + 7

    roll = rng.random()
    if roll < 0.1:  # ground truth as its own prediction
        return gt_ids, gt_segments, *to_ids(rng, index, info)
    if roll < 0.15:  # no prediction at all
        return gt_ids, gt_segments, np.zeros_like(gt_ids), []
    pred = index.copy()
    pred_info = [(c if rng.random() < 0.8 else int(rng.choice(THINGS + STUFF)), 0) for c, _ in info]
    for _ in range(rng.integers(1, 6)):
        mask = random_shape(rng, h, w)
        choice = rng.random()
        if choice < 0.4:
            pred[mask] = rng.integers(1, len(pred_info) + 1)
        elif choice < 0.8:
            pred[mask] = len(pred_info) + 1
            pred_info.append((int(rng.choice(THINGS + STUFF)), 0))
        else:
            pred[mask] = 0
    shifted = np.roll(pred, rng.integers(-3, 4, size=2), axis=(0, 1))
    pred = np.where(rng.random((h, w)) < 0.5, shifted, pred)
    return gt_ids, gt_segments, *to_ids(rng, pred, pred_info)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [random_image(rng) for _ in range(20)]


# --- hand-computed cases ----------------------------------------------------------------------


def test_void_pixels_are_taken_out_of_the_union():
    gt = [[1, 1, 1, 1, 1, 1, 0, 0, 0, 0]]
    pred = [[0, 0, 9, 9, 9, 9, 9, 9, 9, 0]]
    # inter 4, pred area 7, gt area 6, pred on void 3 -> IoU 4 / (7 + 6 - 4 - 3) = 2/3
    result = pq_of(gt, [seg(1, 1)], pred, [seg(9, 1)])
    assert result["per_class"][1] == pytest.approx(
        {"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    )
    assert result["All"] == pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0, "n": 1})
    assert result["Stuff"]["n"] == 0
    # the same with ids of 31 bits: the pair key needs 64 bits
    big = 2**30
    gt_big, pred_big = np.array(gt) * big, np.where(np.array(pred) > 0, big + 9, 0)
    assert pq_of(gt_big, [seg(big, 1)], pred_big, [seg(big + 9, 1)]) == result
    metric = PanopticQuality(CATEGORIES)
    metric.update(torch.tensor(gt), [seg(1, 1)], torch.tensor(pred), [seg(9, 1)])
    assert metric.compute() == result


def test_prediction_mostly_on_void_is_not_a_false_positive():
    gt = [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]
    pred = [[2, 2, 2, 2, 3, 3, 3, 3, 3, 4]]
    # 3 lies all on void, 4 too; neither is a false positive; 2 matches perfectly
    result = pq_of(gt, [seg(1, 10)], pred, [seg(2, 10), seg(3, 1), seg(4, 11)])
    assert result["per_class"][10]["tp"] == 1
    assert result["per_class"][1]["fp"] == 0 and result["per_class"][11]["fp"] == 0
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}


def test_crowd_is_neither_matched_nor_missed():
    gt = [[5, 5, 5, 5, 5, 5, 6, 6, 6, 6]]
    crowd = [seg(5, 1, iscrowd=1), seg(6, 2)]
    # 20 (class 1): 4 of its 5 pixels on same-class crowd -> ignored; 21 matches 6 (IoU 3/4)
    pred = [[20, 20, 20, 20, 0, 0, 20, 21, 21, 21]]
    result = pq_of(gt, crowd, pred, [seg(20, 1), seg(21, 2)])
    assert result["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert result["per_class"][2]["pq"] == pytest.approx(0.75)
    assert result["All"]["n"] == 1
    # a perfect same-class prediction of the crowd region is still not a match
    pred = [[20, 20, 20, 20, 20, 20, 21, 21, 21, 21]]
    result = pq_of(gt, crowd, pred, [seg(20, 1), seg(21, 2)])
    assert result["per_class"][1]["tp"] == 0 and result["per_class"][1]["fp"] == 0
    # on a crowd region of another class the prediction is a false positive
    result = pq_of(gt, crowd, pred, [seg(20, 3), seg(21, 2)])
    assert result["per_class"][3]["fp"] == 1
    assert result["All"] == pytest.approx({"pq": 0.5, "sq": 0.5, "rq": 0.5, "n": 2})


def test_class_mismatch_is_a_miss_and_a_false_positive():
    gt = [[1, 1, 1, 2, 2, 2]]
    pred = [[7, 7, 7, 8, 8, 8]]
    result = pq_of(gt, [seg(1, 1), seg(2, 10)], pred, [seg(7, 2), seg(8, 10)])
    assert (result["per_class"][1]["fn"], result["per_class"][2]["fp"]) == (1, 1)
    assert result["per_class"][10]["pq"] == 1.0
    assert result["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert result["Stuff"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    assert result["All"]["pq"] == pytest.approx(1 / 3)


def test_iou_of_exactly_one_half_is_not_a_match():
    result = pq_of([[1, 1, 1, 1]], [seg(1, 1)], [[9, 9, 0, 0]], [seg(9, 1)])
    assert result["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1}
    result = pq_of([[1, 1, 1, 1, 1]], [seg(1, 1)], [[9, 9, 9, 0, 0]], [seg(9, 1)])
    assert result["per_class"][1]["tp"] == 1 and result["All"]["pq"] == pytest.approx(0.6)


def test_empty_prediction():
    gt = [[1, 1, 2, 2, 3, 0]]
    result = pq_of(gt, [seg(1, 1), seg(2, 10), seg(3, 2, iscrowd=1)], np.zeros((1, 6), int), [])
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert result["per_class"][1]["fn"] == 1 and result["per_class"][10]["fn"] == 1
    assert result["per_class"][2]["fn"] == 0


def test_empty_ground_truth():
    pred = [[4, 4, 5, 5]]
    # everything is void: predictions are ignored, nothing is counted
    result = pq_of(np.zeros((1, 4), int), [], pred, [seg(4, 1), seg(5, 10)])
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    # labelled but with no segments listed: not void, so predictions are false positives
    result = pq_of(np.full((1, 4), 3), [], pred, [seg(4, 1), seg(5, 10)])
    assert result["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}
    assert PanopticQuality(CATEGORIES).compute()["All"]["n"] == 0


def test_inconsistent_inputs_are_refused():
    metric = PanopticQuality(CATEGORIES)
    with pytest.raises(ValueError, match="not listed"):
        metric.update(np.ones((2, 2)), [seg(1, 1)], np.full((2, 2), 3), [seg(4, 1)])
    with pytest.raises(ValueError, match="no pixels"):
        metric.update(np.ones((2, 2)), [seg(1, 1)], np.full((2, 2), 3), [seg(3, 1), seg(4, 1)])
    with pytest.raises(ValueError, match="unknown category_id 99"):
        metric.update(np.ones((2, 2)), [seg(1, 99)], np.ones((2, 2)), [seg(1, 1)])
    with pytest.raises(ValueError, match="non-negative"):
        metric.update(np.ones((2, 2)), [seg(1, 1)], -np.ones((2, 2)), [seg(-1, 1)])
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.ones((2, 2)), [seg(1, 1)], np.ones((2, 3)), [seg(1, 1)])
    assert metric.tp.sum() == metric.fp.sum() == metric.fn.sum() == 0


# --- invariants on the synthetic set -----------------------------------------------------------


def fill(images, categories=CATEGORIES):
    metric = PanopticQuality(categories)
    for image in images:
        metric.update(*image)
    return metric


def test_equals_per_segment_reference(images):
    stats, ignored = reference_stats(CATEGORIES, images)
    metric = fill(images)
    for k, c in enumerate(metric.category_ids):
        assert [metric.tp[k], metric.fp[k], metric.fn[k]] == stats[c][:3]
        assert metric.iou[k] == pytest.approx(stats[c][3], abs=1e-9)
    # the set exercises every rule
    assert metric.tp.sum() > 20 and metric.fp.sum() > 20 and metric.fn.sum() > 20 and ignored > 5
    result, expected = metric.compute(), reference_pq(CATEGORIES, stats)
    for name in ("All", "Things", "Stuff"):
        assert result[name]["n"] == expected[name]["n"] > 0
        for key in ("pq", "sq", "rq"):
            assert abs(result[name][key] - expected[name][key]) < 1e-9


def test_ground_truth_as_prediction_is_perfect(images):
    metric = PanopticQuality(CATEGORIES)
    for gt_ids, gt_segments, _, _ in images:
        listed = np.isin(gt_ids, [s["id"] for s in gt_segments])
        metric.update(gt_ids, gt_segments, np.where(listed, gt_ids, 0), gt_segments)
    result = metric.compute()
    assert metric.fp.sum() == metric.fn.sum() == 0
    for name in ("All", "Things", "Stuff"):
        assert (result[name]["pq"], result[name]["sq"], result[name]["rq"]) == (1.0, 1.0, 1.0)


def test_merge_equals_one_accumulator(images):
    whole = fill(images)
    merged = fill(images[:7]).merge(fill(images[7:]))
    np.testing.assert_array_equal(merged.tp, whole.tp)
    np.testing.assert_array_equal(merged.fp, whole.fp)
    np.testing.assert_array_equal(merged.fn, whole.fn)
    np.testing.assert_allclose(merged.iou, whole.iou, rtol=1e-12)
    with pytest.raises(ValueError, match="different categories"):
        whole.merge(PanopticQuality({1: True}))


def write_coco_panoptic(folder, name, images, which):
    """Write the gt (which=0) or prediction (which=2) half of ``images`` as COCO panoptic."""
    (folder / name).mkdir()
    annotations = []
    for image_id, image in enumerate(images):
        ids = image[which].astype(np.uint32)
        rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(rgb.astype(np.uint8)).save(folder / name / file_name)
        annotations.append(
            {"image_id": image_id, "file_name": file_name, "segments_info": image[which + 1]}
        )
    categories = [{"id": c, "name": str(c), "isthing": int(t)} for c, t in CATEGORIES.items()]
    with open(folder / f"{name}.json", "w") as f:
        json.dump({"annotations": annotations, "categories": categories}, f)
    return folder / f"{name}.json"


def test_folder_evaluation_with_two_workers_equals_one(images, tmp_path):
    # ids above 2**24 cannot be stored in a PNG: those pixels become unlisted id 7
    images = [(g % 2**24, gs, p, ps) for g, gs, p, ps in images]
    gt_json = write_coco_panoptic(tmp_path, "gt", images, 0)
    pred_json = write_coco_panoptic(tmp_path, "pred", images, 2)
    assert np.array_equal(read_id_png(tmp_path / "gt" / "000003.png"), images[3][0])
    one = evaluate_coco_panoptic(gt_json, pred_json, workers=1, chunk_size=3)
    two = evaluate_coco_panoptic(gt_json, pred_json, workers=2, chunk_size=3)
    assert one.compute() == two.compute()
    in_memory = fill(images)
    np.testing.assert_array_equal(one.tp, in_memory.tp)
    np.testing.assert_array_equal(one.fp, in_memory.fp)
    np.testing.assert_allclose(one.iou, in_memory.iou, rtol=1e-12)
    with open(pred_json) as f:
        pred = json.load(f)
    pred["annotations"].pop()
    with pytest.raises(ValueError, match="no prediction for image 19"):
        evaluate_coco_panoptic(gt_json, pred, pred_folder=tmp_path / "pred")


def test_rgb_to_id(tmp_path):
    rgb = np.array([[[1, 2, 3], [255, 255, 255], [0, 0, 0]]], np.uint8)
    expected = [[1 + 2 * 256 + 3 * 65536, 2**24 - 1, 0]]
    assert rgb_to_id(rgb).tolist() == expected
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    assert read_id_png(tmp_path / "rgb.png").tolist() == expected
    assert read_id_png(tmp_path / "rgba.png").tolist() == expected
