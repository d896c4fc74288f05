"""Evaluation metrics: panoptic quality, semantic IoU, COCO mask AP."""

from oneseg.metrics.instance import InstanceAP, evaluate_segm, load_coco, masks_to_rle
from oneseg.metrics.panoptic_quality import (
    VOID,
    PanopticQuality,
    evaluate_coco_panoptic,
)
from oneseg.metrics.semantic import ConfusionMatrix

__all__ = [
    "VOID",
    "ConfusionMatrix",
    "InstanceAP",
    "PanopticQuality",
    "evaluate_coco_panoptic",
    "evaluate_segm",
    "load_coco",
    "masks_to_rle",
]
