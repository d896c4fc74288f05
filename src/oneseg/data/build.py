"""The one place where the dataset spec becomes readers, transforms, datasets and loaders."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from oneseg.config import AugmentationConfig, DatasetConfig, DataSource
from oneseg.constants import TASKS
from oneseg.data.ade_jsonl import AdeJsonlReader
from oneseg.data.coco_instance import CocoInstanceReader
from oneseg.data.coco_panoptic import CocoPanopticReader
from oneseg.data.dataset import SegmentationDataset
from oneseg.data.intensity import Intensity
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError, Reader, load_json
from oneseg.data.semantic import SemanticReader
from oneseg.data.single_class import SingleClassReader, single_class_label_map
from oneseg.data.transforms import EvalTransform, TrainTransform
from oneseg.tokenizer import TASK_TEMPLATE

SPLITS = ("train", "val", "test")


def split_sources(dataset_cfg: DatasetConfig, split: str) -> list[DataSource]:
    """The sources of a split: a list for train (concatenated), one for val and test."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if split == "train":
        return list(dataset_cfg.train)
    return [getattr(dataset_cfg, split)]


def load_label_map(dataset_cfg: DatasetConfig) -> LabelMap:
    """`dataset.label_map` if set, else the categories of the first annotation file found
    (train sources first, then val, then test)."""
    if dataset_cfg.label_map:
        return LabelMap.from_json(dataset_cfg.label_map)
    for split in SPLITS:
        for source in split_sources(dataset_cfg, split):
            if source.annotations and dataset_cfg.type not in ("semantic", "ade"):
                categories = load_json(source.annotations).get("categories") or []
                if not categories:
                    raise DataError(f"{source.annotations}: no `categories` to take classes from")
                return LabelMap.from_categories(categories)
    raise DataError(
        "no label map: set dataset.label_map (required for semantic folders) or give an "
        "annotation file whose categories name the classes"
    )


def model_label_map(dataset_cfg: DatasetConfig) -> LabelMap:
    """The classes a model trained on this data predicts: those of `load_label_map`, or the one
    class named by `dataset.single_class`."""
    if dataset_cfg.single_class:
        return single_class_label_map(dataset_cfg.single_class)
    return load_label_map(dataset_cfg)


def build_reader(
    dataset_cfg: DatasetConfig, source: DataSource, label_map: LabelMap, where: str
) -> Reader:
    """The reader of one source for `dataset.type`; `where` names the source in errors."""
    kind = dataset_cfg.type
    needed = {
        "coco_panoptic": ("images", "annotations"),
        "coco": ("images", "annotations"),
        "semantic": ("images", "labels"),
        "ade": ("annotations",),
    }[kind]
    for key in needed:
        if not getattr(source, key):
            raise DataError(f"{where}.{key} is empty; a {kind} source needs {' and '.join(needed)}")
    if kind == "coco_panoptic":
        return CocoPanopticReader(
            source.images, source.annotations, source.panoptic, label_map, dataset_cfg.contiguous_id
        )
    if kind == "coco":
        return CocoInstanceReader(
            source.images, source.annotations, label_map, dataset_cfg.contiguous_id
        )
    if kind == "ade":
        return AdeJsonlReader(
            source.annotations, source.images, label_map, dataset_cfg.contiguous_id
        )
    return SemanticReader(
        source.images, source.labels, label_map, dataset_cfg.ignore_value, dataset_cfg.contiguous_id
    )


def build_transform(aug: AugmentationConfig, train: bool) -> TrainTransform | EvalTransform:
    if not train:
        return EvalTransform(aug.eval_min_size, aug.eval_max_size, aug.eval_resize or None)
    if aug.crop_size and len(aug.crop_size) != 2:
        raise ValueError(
            f"dataset.augmentation.crop_size must be [height, width] or [], got {aug.crop_size}"
        )
    return TrainTransform(
        min_sizes=aug.train_min_size,
        max_size=aug.train_max_size,
        crop_size=tuple(aug.crop_size) if aug.crop_size else None,
        lsj=aug.lsj,
        lsj_scale=tuple(aug.lsj_scale),
        hflip=aug.hflip,
        color_jitter=aug.color_jitter,
        short_edge_scale=tuple(aug.short_edge_scale) if aug.short_edge_scale else None,
    )


def build_dataset(
    dataset_cfg: DatasetConfig,
    split: str,
    label_map: LabelMap,
    text_list_len: int,
    size_divisibility: int,
    train: bool,
    task: str | None = None,
    intensity: Intensity | None = None,
    tokens: bool = True,
    task_text: str = TASK_TEMPLATE,
) -> SegmentationDataset:
    """The dataset of a split. Training samples draw their task from `dataset.task_prob`;
    otherwise every sample has `task` (default panoptic, whose masks cover all three).
    `dataset.on_error: skip` applies to training only: an evaluation set that swapped a bad
    image for another would count that other image twice. `intensity` defaults to the spec's
    `dataset.intensity` (a `per: dataset` rule resolved by the caller, see `dataset_window`).

    label_map: the model's classes. With `dataset.single_class` it is that one class, and the
    sources are read with their own classes (`load_label_map`), then merged into it.
    tokens: samples carry OneFormer's task and text tokens (not for Mask2Former).
    task_text: the model's task prompt template (`model.task_text`)."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    source_map = label_map
    if dataset_cfg.single_class:
        if len(label_map) != 1:
            raise ValueError(
                f"dataset.single_class is {dataset_cfg.single_class!r} but the model has "
                f"{len(label_map)} classes"
            )
        source_map = load_label_map(dataset_cfg)
    readers = [
        build_reader(
            dataset_cfg,
            source,
            source_map,
            f"dataset.{split}[{i}]" if split == "train" else f"dataset.{split}",
        )
        for i, source in enumerate(split_sources(dataset_cfg, split))
    ]
    if dataset_cfg.single_class:
        readers = [SingleClassReader(reader) for reader in readers]
    if task is not None:
        task_prob = {task: 1.0}
    else:
        task_prob = dict(dataset_cfg.task_prob) if train else {"panoptic": 1.0}
    return SegmentationDataset(
        readers,
        label_map,
        build_transform(dataset_cfg.augmentation, train),
        task_prob=task_prob,
        text_list_len=text_list_len,
        size_divisibility=size_divisibility,
        on_error=dataset_cfg.on_error if train else "raise",
        intensity=intensity or Intensity.from_config(dataset_cfg.intensity),
        tokens=tokens,
        task_text=task_text,
    )


def build_dataloader(
    dataset_cfg: DatasetConfig,
    split: str,
    label_map: LabelMap,
    text_list_len: int,
    size_divisibility: int,
    train: bool,
    *,
    task: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    sampler: Sampler | None = None,
    intensity: Intensity | None = None,
    tokens: bool = True,
) -> DataLoader:
    """A loader of collated batches (see `oneseg.data.collate`). Training shuffles and drops
    the last incomplete batch (the contrastive loss needs more than one image); pass a
    `sampler` (e.g. DistributedSampler) to replace the shuffle."""
    dataset = build_dataset(
        dataset_cfg,
        split,
        label_map,
        text_list_len,
        size_divisibility,
        train,
        task=task,
        intensity=intensity,
        tokens=tokens,
    )
    batch_size = batch_size or dataset_cfg.batch_size
    workers = dataset_cfg.workers if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate_fn,
        pin_memory=dataset_cfg.pin_memory and torch.cuda.is_available(),
        drop_last=train and len(dataset) > batch_size,
        persistent_workers=workers > 0,
    )
