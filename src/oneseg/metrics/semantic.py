"""Semantic segmentation metrics from a streaming confusion matrix.

Per class c, with TP, FP, FN counted over all images:
IoU_c = TP / (TP + FP + FN) and accuracy_c = TP / (TP + FN). mIoU averages IoU over the classes
present in the ground truth or the prediction; mean accuracy over the classes present in the
ground truth. Frequency-weighted IoU weights IoU_c by the share of ground-truth pixels of class c;
pixel accuracy is the fraction of labelled pixels predicted right. Pixels whose ground truth is
``ignore_index`` are not counted. All values are fractions in [0, 1]; absent classes are NaN.
"""

from __future__ import annotations

import numpy as np


def _is_tensor(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")


class ConfusionMatrix:
    """Streaming confusion matrix over ``num_classes`` classes; mergeable across processes.

    ``matrix`` is int64 [num_classes, num_classes + 1]: rows are the ground-truth class, columns
    the predicted class, and the last column counts predictions outside [0, num_classes) (wrong
    for the ground-truth class, a false positive for none).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes + 1), np.int64)

    def update(self, pred, target) -> None:
        """Add predictions and labels (see `image_counts`)."""
        self.add(self.image_counts(pred, target))

    def add(self, counts: tuple[np.ndarray, np.ndarray]) -> None:
        """Add counts as `image_counts` returns them."""
        present, values = counts
        flat = self.matrix.reshape(-1)  # a view: adding to it adds to the matrix
        np.add.at(flat, present, values)

    def image_counts(self, pred, target) -> tuple[np.ndarray, np.ndarray]:
        """The counts of predictions and labels of any equal shape, e.g. [B, H, W] or [H, W],
        not added: (cells [M] of the flattened matrix, counts [M]) over the cells that are not
        0. Small enough to keep per image; `add` adds them.

        Arguments:
            pred: integer class indices, a numpy array or a torch tensor.
            target: integer class indices in [0, num_classes) or ``ignore_index``. With torch
                tensors the counting stays on their device; only the matrix comes back.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {target.shape}")
        k = self.num_classes
        if _is_tensor(pred) or _is_tensor(target):
            import torch

            device = pred.device if _is_tensor(pred) else target.device
            pred = torch.as_tensor(pred, device=device).reshape(-1).long()
            target = torch.as_tensor(target, device=device).reshape(-1).long()
            valid = target != self.ignore_index
            pred, target = pred[valid], target[valid]
            if bool(((target < 0) | (target >= k)).any()):
                raise ValueError(f"target values must be in [0, {k}) or {self.ignore_index}")
            pred = torch.where((pred >= 0) & (pred < k), pred, k)
            counts = torch.bincount(target * (k + 1) + pred, minlength=k * (k + 1))
            counts = counts.cpu().numpy()
            present = np.flatnonzero(counts)
            return present, counts[present]
        pred, target = np.asarray(pred).reshape(-1), np.asarray(target).reshape(-1)
        valid = target != self.ignore_index
        pred, target = pred[valid].astype(np.int64), target[valid].astype(np.int64)
        if ((target < 0) | (target >= k)).any():
            raise ValueError(f"target values must be in [0, {k}) or {self.ignore_index}")
        pred = np.where((pred >= 0) & (pred < k), pred, k)
        counts = np.bincount(target * (k + 1) + pred, minlength=k * (k + 1))
        present = np.flatnonzero(counts)
        return present, counts[present].astype(np.int64)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` into this matrix; returns self."""
        if self.matrix.shape != other.matrix.shape or self.ignore_index != other.ignore_index:
            raise ValueError("cannot merge confusion matrices of different classes or ignore")
        self.matrix += other.matrix
        return self

    def compute(self) -> dict:
        """Returns:
        dict: ``miou``, ``fwiou``, ``pixel_accuracy``, ``mean_accuracy`` (float) and
        ``per_class_iou``, ``per_class_accuracy`` (float64 [num_classes], NaN where undefined).
        """
        k = self.num_classes
        tp = np.diagonal(self.matrix[:, :k]).astype(np.float64)
        gt_count = self.matrix.sum(1).astype(np.float64)  # TP + FN
        pred_count = self.matrix[:, :k].sum(0).astype(np.float64)  # TP + FP
        union = gt_count + pred_count - tp
        iou = np.full(k, np.nan)
        np.divide(tp, union, out=iou, where=union > 0)
        accuracy = np.full(k, np.nan)
        np.divide(tp, gt_count, out=accuracy, where=gt_count > 0)
        total = gt_count.sum()
        labelled = gt_count > 0
        return {
            "miou": _nanmean(iou),
            "fwiou": float((gt_count[labelled] / total * iou[labelled]).sum()) if total else np.nan,
            "pixel_accuracy": float(tp.sum() / total) if total else np.nan,
            "mean_accuracy": _nanmean(accuracy),
            "per_class_iou": iou,
            "per_class_accuracy": accuracy,
        }


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")
