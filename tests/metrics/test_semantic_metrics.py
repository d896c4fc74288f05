import math

import numpy as np
import pytest
import torch

from oneseg.metrics import ConfusionMatrix

# 4 classes; class 2 only predicted, class 3 absent from both; two pixels ignored
TARGET = np.array([[0, 0, 0, 1], [1, 255, 255, 0]])
PRED = np.array([[0, 0, 1, 1], [2, 0, 1, 0]])


def check_hand_case(result):
    # class 0: TP 3, gt 4, pred 3; class 1: TP 1, gt 2, pred 2; class 2: TP 0, gt 0, pred 1
    np.testing.assert_allclose(result["per_class_iou"], [3 / 4, 1 / 3, 0.0, np.nan])
    np.testing.assert_allclose(result["per_class_accuracy"], [3 / 4, 1 / 2, np.nan, np.nan])
    assert result["miou"] == pytest.approx((3 / 4 + 1 / 3 + 0) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)
    assert result["mean_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert result["fwiou"] == pytest.approx(4 / 6 * 3 / 4 + 2 / 6 * 1 / 3)


def test_hand_computed_case():
    metric = ConfusionMatrix(num_classes=4)
    metric.update(PRED, TARGET)
    check_hand_case(metric.compute())
    assert metric.matrix.sum() == 6


def test_torch_tensors_give_the_same_matrix():
    metric = ConfusionMatrix(num_classes=4)
    metric.update(torch.from_numpy(PRED)[None], torch.from_numpy(TARGET)[None])  # [1, H, W]
    check_hand_case(metric.compute())


def test_prediction_outside_the_classes_is_wrong_but_no_false_positive():
    metric = ConfusionMatrix(num_classes=2, ignore_index=-1)
    metric.update(np.array([0, 0, 1, 0]), np.array([0, 0, 1, -1]))
    metric.update(np.array([7, -3]), np.array([0, 1]))
    result = metric.compute()
    np.testing.assert_allclose(result["per_class_iou"], [2 / 3, 1 / 2])
    assert result["pixel_accuracy"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="target values"):
        metric.update(np.array([0]), np.array([2]))


def test_merge_equals_one_matrix():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 5, (8, 9)), rng.choice([0, 1, 2, 3, 255], (8, 9))) for _ in range(6)]
    whole, first, second = (ConfusionMatrix(5) for _ in range(3))
    for i, (pred, target) in enumerate(pairs):
        whole.update(pred, target)
        (first if i % 2 else second).update(pred, target)
    np.testing.assert_array_equal(first.merge(second).matrix, whole.matrix)
    result = whole.compute()  # class 4 is predicted but never labelled
    assert result["per_class_iou"][4] == 0.0 and np.isnan(result["per_class_accuracy"][4])


def test_nothing_counted_gives_nan():
    result = ConfusionMatrix(3).compute()
    assert all(math.isnan(result[k]) for k in ("miou", "fwiou", "pixel_accuracy", "mean_accuracy"))
