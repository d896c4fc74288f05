"""Task-conditioned targets, as OneFormer trains them from panoptic labels alone.

One annotation gives three kinds of target, picked per sample by the task:
- panoptic: a mask per thing instance and a mask per stuff segment;
- instance: a mask per thing instance only (stuff pixels are "no object");
- semantic: a mask per class present, the instances of a thing class merged.
Crowd regions are never targets; with void they form the ignore mask. The contrastive text list
has one "a photo with a {class}" per target, in class-index order as the original dataset mapper
writes it, padded with the task's filler text. Targets come in that order too (segment order
within a class), so text entry i names mask i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from oneseg.config import TASKS
from oneseg.data.records import Segment
from oneseg.tokenizer import (
    FILLER_TEXT,
    TASK_TEMPLATE,
    TEXT_TEMPLATE,
    task_text,
    text_list,
    tokenize,
)


@dataclass
class Targets:
    masks: np.ndarray  # [N, H, W] bool
    labels: np.ndarray  # [N] int64 class indices
    ignore_mask: np.ndarray  # [H, W] bool, True on void and crowd pixels


def normalize_task_prob(task_prob: dict[str, float]) -> dict[str, float]:
    """Task probabilities checked against the three tasks and scaled to sum to 1."""
    unknown = sorted(set(task_prob) - set(TASKS))
    if unknown:
        raise ValueError(f"dataset.task_prob: unknown task(s) {unknown}; expected {list(TASKS)}")
    if any(p < 0 for p in task_prob.values()):
        raise ValueError(f"dataset.task_prob: probabilities must be >= 0, got {task_prob}")
    total = float(sum(task_prob.values()))
    if total <= 0:
        raise ValueError(f"dataset.task_prob: probabilities sum to 0: {task_prob}")
    return {task: task_prob[task] / total for task in TASKS if task_prob.get(task, 0) > 0}


def sample_task(task_prob: dict[str, float], rng: np.random.Generator) -> str:
    """A task drawn with the (normalised) probabilities."""
    tasks = list(task_prob)
    return tasks[int(rng.choice(len(tasks), p=list(task_prob.values())))]


def derive_targets(segment_map: np.ndarray, segments: list[Segment], task: str) -> Targets:
    """The target masks and labels of one task from a segment map [H, W], in class order.

    Segments whose pixels are all gone (cropped away, fully occluded) give no mask.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    height, width = segment_map.shape
    kept, masks = [], []
    for segment in segments:
        if not segment.iscrowd:
            mask = segment_map == segment.id
            if mask.any():
                kept.append(segment)
                masks.append(mask)
    claimed = np.logical_or.reduce(masks) if masks else np.zeros((height, width), dtype=bool)
    if task == "instance":
        masks = [m for m, s in zip(masks, kept) if s.isthing]
        labels = [s.class_index for s in kept if s.isthing]
    elif task == "semantic":
        by_class: dict[int, np.ndarray] = {}
        for mask, segment in zip(masks, kept):
            merged = by_class.get(segment.class_index)
            by_class[segment.class_index] = mask if merged is None else merged | mask
        labels = sorted(by_class)
        masks = [by_class[c] for c in labels]
    else:
        labels = [s.class_index for s in kept]
    # class order (stable): the i-th text entry then names the i-th mask
    order = sorted(range(len(labels)), key=labels.__getitem__)
    masks, labels = [masks[i] for i in order], [labels[i] for i in order]
    return Targets(
        masks=np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
        labels=np.asarray(labels, dtype=np.int64),
        ignore_mask=~claimed,
    )


def semantic_label(
    segment_map: np.ndarray, segments: list[Segment], ignore_value: int = 255
) -> np.ndarray:
    """[H, W] int64 class index per pixel, `ignore_value` on void: the ground truth of semantic
    evaluation. Crowd regions keep their class, as COCO's panoptic-to-semantic conversion has it.
    """
    label = np.full(segment_map.shape, ignore_value, dtype=np.int64)
    for segment in segments:
        label[segment_map == segment.id] = segment.class_index
    return label


def target_texts(labels: np.ndarray, class_names: list[str], task: str, length: int) -> list[str]:
    """The text list of a sample: one entry per target in class-index order, then fillers."""
    return text_list([class_names[int(c)] for c in sorted(labels.tolist())], task, length)


def all_texts(class_names: list[str], task_template: str = TASK_TEMPLATE) -> list[str]:
    """Every text a sample can hold: task texts, fillers and one entry per class."""
    return [
        *(task_text(task, task_template) for task in TASKS),
        *FILLER_TEXT.values(),
        *(TEXT_TEMPLATE.format(name=name) for name in class_names),
    ]


class TextTokens:
    """CLIP token ids of task and text entries, each distinct string tokenized once.

    A text list repeats a few dozen strings at most, so a per-string cache makes the
    [T, 77] tensor of a sample a gather rather than T BPE runs.
    """

    def __init__(self, context_length: int = 77, task_template: str = TASK_TEMPLATE):
        self.context_length = context_length
        self.task_template = task_template
        self._rows: dict[str, torch.Tensor] = {}

    def prepare(self, texts: list[str]) -> None:
        """Tokenize these texts now: worker processes then never load the BPE tokenizer."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if missing:
            self._rows.update(zip(missing, tokenize(missing, self.context_length)))

    def _row(self, text: str) -> torch.Tensor:
        row = self._rows.get(text)
        if row is None:
            row = self._rows[text] = tokenize(text, self.context_length)[0]
        return row

    def task(self, task: str) -> torch.Tensor:
        """[context_length] int64 ids of the task prompt (`task_template` of `task`)."""
        return self._row(task_text(task, self.task_template)).clone()

    def texts(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), context_length] int64 ids."""
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        return torch.stack([self._row(t) for t in texts])
