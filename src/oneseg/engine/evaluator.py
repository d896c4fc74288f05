"""PQ, mIoU and mask AP of one model on a dataset, from the same batches and the same GT.

A runner (`oneseg.runner`: a PyTorch model, an ONNX file or a TensorRT engine) gives the results
of each batch at each image's original size (`evaluate_loader`); `Evaluator.update` compares
them with the untransformed annotation of that image:

- panoptic -> PQ / SQ / RQ against the panoptic ground truth (crowd regions as in panopticapi);
- semantic -> confusion matrix against the class of every pixel (void ignored; crowd regions
  keep their class, as COCO's panoptic-to-semantic conversion has it);
- instance -> COCO mask AP against the non-crowd thing segments, crowd ones as `iscrowd=1`.

What each image adds is kept per image (sparse counts, RLE masks) under its dataset index, so
that images seen twice (a distributed sampler pads the last batch by repeating images) count
once when the processes' states are merged.
"""

from __future__ import annotations

import math

import numpy as np
import torch.distributed as dist

from oneseg.constants import IGNORE, TASKS
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.label_map import LabelMap
from oneseg.data.records import PanopticAnnotation
from oneseg.data.targets import semantic_label
from oneseg.metrics import ConfusionMatrix, PanopticQuality, evaluate_segm, masks_to_rle
from oneseg.results import PanopticResult, Result, coco_instances
from oneseg.runner import Runner, run_batch


def instance_ground_truth(
    annotation: PanopticAnnotation, image_id: int, category_ids: list[int]
) -> list[dict]:
    """COCO instance annotations (RLE, crowd flagged) of the thing segments of an image."""
    things = [s for s in annotation.segments if s.isthing]
    if not things:
        return []
    masks = np.stack([annotation.segment_map == s.id for s in things])  # [N, H, W]
    out = []
    for segment, mask, rle in zip(things, masks, masks_to_rle(masks)):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            continue
        out.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[segment.class_index]),
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [
                    int(cols[0]),
                    int(rows[0]),
                    int(cols[-1] - cols[0] + 1),
                    int(rows[-1] - rows[0] + 1),
                ],
                "iscrowd": int(segment.iscrowd),
            }
        )
    return out


class Evaluator:
    """Accumulates PQ, mIoU and mask AP over batches of `dataset`; mergeable across processes.

    Arguments:
        dataset: the evaluation dataset; its untransformed annotations are the ground truth.
        label_map: the model's classes (category ids, names, things).
        tasks: the tasks to score: "panoptic" (PQ), "semantic" (mIoU), "instance" (AP).
    """

    def __init__(self, dataset: SegmentationDataset, label_map: LabelMap, tasks: list[str]):
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty list of {list(TASKS)}, got {tasks}")
        self.dataset = dataset
        self.label_map = label_map
        self.tasks = list(dict.fromkeys(tasks))
        self.category_ids = list(label_map.category_ids)
        self._index_of = {}
        for index, record in enumerate(dataset.records):
            self._index_of.setdefault(record.image_id, index)
        self.reset()

    def _new_pq(self) -> PanopticQuality:
        return PanopticQuality(dict(zip(self.category_ids, self.label_map.isthing)))

    def _new_confusion(self) -> ConfusionMatrix:
        return ConfusionMatrix(len(self.label_map), ignore_index=IGNORE)

    def reset(self) -> None:
        self.images: dict[int, dict] = {}  # dataset index -> what that image adds

    # ------------------------------------------------------------------ accumulation
    def update(self, batch: dict, results: list[dict[str, Result]]) -> None:
        """Add the results of a loader batch: one dict task -> result per image, at the images'
        original sizes, as a runner returns them (`oneseg.runner.run_batch`)."""
        for image_id, per_task in zip(batch["image_ids"], results, strict=True):
            if image_id not in self._index_of:
                raise KeyError(f"image id {image_id!r} of the batch is not in the dataset")
            self._add_image(self._index_of[image_id], {t: per_task[t] for t in self.tasks})

    def _add_image(self, index: int, results: dict[str, Result]) -> None:
        annotation = self.dataset.annotation(index)
        height, width = annotation.segment_map.shape
        entry: dict = {"height": int(height), "width": int(width)}
        if "panoptic" in results:
            entry["panoptic"] = self._panoptic_counts(annotation, results["panoptic"])
        if "semantic" in results:
            entry["semantic"] = self._confusion_counts(annotation, results["semantic"].labels)
        if "instance" in results:
            image_id = index + 1  # COCO ids of the in-memory ground truth
            entry["instance_gt"] = instance_ground_truth(annotation, image_id, self.category_ids)
            entry["instance"] = [
                {k: r[k] for k in ("image_id", "category_id", "segmentation", "score")}
                for r in coco_instances(
                    image_id, results["instance"], self.category_ids, rounded=False
                )
            ]
        self.images[index] = entry

    def _panoptic_counts(self, annotation, result: PanopticResult) -> tuple[np.ndarray, ...]:
        gt_segments = [
            {"id": s.id, "category_id": self.category_ids[s.class_index], "iscrowd": s.iscrowd}
            for s in annotation.segments
        ]
        pred_segments = [
            {"id": int(s["id"]), "category_id": self.category_ids[int(s["label"])]}
            for s in result.segments
        ]
        return self._new_pq().image_counts(
            annotation.segment_map, gt_segments, result.segment_ids, pred_segments
        )

    def _confusion_counts(self, annotation, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        target = semantic_label(annotation.segment_map, annotation.segments, IGNORE)
        return self._new_confusion().image_counts(labels, target)

    # ------------------------------------------------------------------ results
    def merge(self, other: Evaluator) -> Evaluator:
        """Take in the images of `other` (an image both hold counts once); returns self."""
        self.images.update(other.images)
        return self

    def compute(self, gather: bool = True) -> dict:
        """Metrics in percent over every image added (on all processes with `gather`).

        Returns:
            dict: flat floats — panoptic `pq`, `sq`, `rq`, `pq_th`, `sq_th`, `rq_th`, `pq_st`,
            `sq_st`, `rq_st`; semantic `miou`, `fwiou`, `pixel_acc`, `mean_acc`; instance `ap`,
            `ap50`, `ap75`, `aps`, `apm`, `apl` (each only for the tasks evaluated; NaN where
            undefined) — `num_images`, and `per_class`: class name -> {category_id, isthing,
            and pq / sq / rq / iou / ap as evaluated, NaN for a class absent from both the
            ground truth and the predictions}.
        """
        images = self.images
        if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, images)
            images = {}
            for part in gathered:
                images.update(part)
        # dataset order: the float sums come out the same whichever process scored an image
        images = dict(sorted(images.items()))
        metrics: dict = {"num_images": float(len(images))}
        per_class = {
            name: {"category_id": cid, "isthing": thing}
            for name, cid, thing in zip(
                self._class_keys(), self.category_ids, self.label_map.isthing
            )
        }
        if "panoptic" in self.tasks:
            self._compute_panoptic(images, metrics, per_class)
        if "semantic" in self.tasks:
            self._compute_semantic(images, metrics, per_class)
        if "instance" in self.tasks:
            self._compute_instance(images, metrics, per_class)
        metrics["per_class"] = per_class
        return metrics

    def _class_keys(self) -> list[str]:
        """Class names, with the category id added where two classes share a name."""
        names = self.label_map.names
        return [
            name if names.count(name) == 1 else f"{name} ({cid})"
            for name, cid in zip(names, self.category_ids)
        ]

    def _compute_panoptic(self, images: dict, metrics: dict, per_class: dict) -> None:
        pq = self._new_pq()
        for entry in images.values():
            pq.add(entry["panoptic"])
        result = pq.compute()
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for key in ("pq", "sq", "rq"):
                value = result[group][key] if result[group]["n"] else math.nan
                metrics[f"{key}{suffix}"] = 100 * value
        counted = (pq.tp + pq.fp + pq.fn) > 0  # in the order of pq.category_ids (sorted)
        by_category = dict(zip(pq.category_ids.tolist(), counted.tolist()))
        for values in per_class.values():
            row = result["per_class"][values["category_id"]]
            for key in ("pq", "sq", "rq"):
                values[key] = 100 * row[key] if by_category[values["category_id"]] else math.nan

    def _compute_semantic(self, images: dict, metrics: dict, per_class: dict) -> None:
        confusion = self._new_confusion()
        for entry in images.values():
            confusion.add(entry["semantic"])
        result = confusion.compute()
        metrics["miou"] = 100 * result["miou"]
        metrics["fwiou"] = 100 * result["fwiou"]
        metrics["pixel_acc"] = 100 * result["pixel_accuracy"]
        metrics["mean_acc"] = 100 * result["mean_accuracy"]
        for values, iou in zip(per_class.values(), result["per_class_iou"].tolist()):
            values["iou"] = 100 * iou

    def _compute_instance(self, images: dict, metrics: dict, per_class: dict) -> None:
        keys = ("ap", "ap50", "ap75", "aps", "apm", "apl")
        thing_ids = [c for c, t in zip(self.category_ids, self.label_map.isthing) if t]
        if not thing_ids or not images:
            metrics.update({key: math.nan for key in keys})
            return
        annotations = []
        for index in sorted(images):
            for ann in images[index]["instance_gt"]:
                annotations.append({**ann, "id": len(annotations) + 1})
        names = dict(zip(self.category_ids, self.label_map.names))
        coco_gt = {
            "images": [
                {"id": index + 1, "height": e["height"], "width": e["width"]}
                for index, e in sorted(images.items())
            ],
            "categories": [{"id": c, "name": names[c]} for c in thing_ids],
            "annotations": annotations,
        }
        results = [r for index in sorted(images) for r in images[index]["instance"]]
        result = evaluate_segm(coco_gt, results)
        for key, name in zip(keys, ("AP", "AP50", "AP75", "APs", "APm", "APl")):
            metrics[key] = 100 * result[name] if result[name] >= 0 else math.nan
        for values in per_class.values():
            if values["isthing"]:
                values["ap"] = 100 * result["per_class"].get(values["category_id"], math.nan)


def evaluate_loader(runner: Runner, loader, evaluator: Evaluator, on_step=None) -> None:
    """Run `runner` on every batch of `loader` for the evaluator's tasks and add the results;
    `on_step(step, total)` after each batch."""
    for step, batch in enumerate(loader, 1):
        evaluator.update(batch, run_batch(runner, batch, evaluator.tasks))
        if on_step is not None:
            on_step(step, len(loader))
