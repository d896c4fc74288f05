"""The training and evaluation dataset: records in, task-conditioned samples out.

A sample (one image) is a dict:
    image         uint8 [3, H, W], RGB 0-255 after the transform (LSJ padding included)
    masks         bool [N, H, W], the targets of `task`
    labels        int64 [N], their class indices
    ignore_mask   bool [H, W], True on void and crowd pixels (no target, no loss)
    task          "semantic" | "instance" | "panoptic"
    task_tokens   int64 [77], CLIP ids of the task prompt (model.task_text)  (with `tokens`)
    text_tokens   int64 [T, 77], ids of the text list ("a photo with a {class}" per mask in
                  class order, then the task's filler), T = text_list_len  (with `tokens`)
    image_id      the dataset's image id (int, or the file stem for semantic folders)
    file_name     str, path of the image
    orig_size     (h, w) of the decoded, upright image
    image_size    (h, w) of the real content after the transform (top-left of `image`)
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from oneseg.data.collate import Collator
from oneseg.data.image_io import ImageReadError, exif_orientation, read_image
from oneseg.data.intensity import Intensity
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError, PanopticAnnotation, Reader, Record, RecordStore
from oneseg.data.targets import (
    TextTokens,
    all_texts,
    derive_targets,
    normalize_task_prob,
    sample_task,
    target_texts,
)
from oneseg.data.transforms import EvalTransform, TrainTransform
from oneseg.tokenizer import TASK_TEMPLATE

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 20


class SegmentationDataset(Dataset):
    """Samples of one or more concatenated sources.

    Arguments:
        readers: readers of the sources; their records are concatenated in order, packed
            into a RecordStore, and the readers' own `records` lists emptied (so that worker
            processes do not each copy them).
        label_map: the classes (names for the text list).
        transform: a TrainTransform or an EvalTransform.
        task_prob: probability of each task, e.g. {"semantic": 1.0}; normalised here.
        text_list_len: entries of each text list (num_queries - n_ctx for OneFormer).
        size_divisibility: batch padding divisor, used by `collate_fn`.
        on_error: "raise" stops on a bad sample with a message naming file and image id;
            "skip" logs a warning, counts it in `skipped` and returns another sample.
        intensity: how images of more than 8 bits become 0-255 (`oneseg.data.intensity`).
        tokens: samples carry the task and text token ids OneFormer takes; Mask2Former, which
            takes neither, trains on samples without them.
        task_text: the task prompt template (`model.task_text`) of the task tokens.
    """

    def __init__(
        self,
        readers: list[Reader],
        label_map: LabelMap,
        transform: TrainTransform | EvalTransform,
        task_prob: dict[str, float],
        text_list_len: int,
        size_divisibility: int = 32,
        on_error: str = "raise",
        context_length: int = 77,
        intensity: Intensity | None = None,
        tokens: bool = True,
        task_text: str = TASK_TEMPLATE,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.readers = list(readers)
        self._items = RecordStore(
            (k, record) for k, reader in enumerate(self.readers) for record in reader.records
        )
        for reader in self.readers:
            reader.records = []
        self.label_map = label_map
        self.transform = transform
        self.task_prob = normalize_task_prob(task_prob)
        self.text_list_len = text_list_len
        self.on_error = on_error
        self.intensity = intensity or Intensity()
        self.tokens = None
        if tokens:
            self.tokens = TextTokens(context_length, task_text)
            self.tokens.prepare(all_texts(label_map.names, task_text))
        self.collate_fn = Collator(size_divisibility)
        # shared with worker processes, so the main process sees their skips too
        self._skipped = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far, across worker processes."""
        return int(self._skipped.item())

    @property
    def records(self) -> list[Record]:
        """Every record, unpacked (a list as long as the dataset: for small uses)."""
        return [record for _, record in self._items]

    def record(self, index: int) -> Record:
        return self._items[index][1]

    def _item(self, index: int) -> tuple[Reader, Record]:
        reader_index, record = self._items[index]
        return self.readers[reader_index], record

    def __getitem__(self, index: int) -> dict:
        # a seed from torch's generator: seeded per worker by the DataLoader, and by
        # torch.manual_seed in the main process
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        for _ in range(MAX_CONSECUTIVE_SKIPS):
            try:
                return self._sample(index, rng)
            except DataError as err:
                if self.on_error == "raise":
                    raise
                self._skipped += 1
                log.warning("skipping a bad sample (%d skipped so far): %s", self.skipped, err)
                if len(self) > 1:  # another item, never the same one again
                    index = (index + 1 + int(rng.integers(len(self) - 1))) % len(self)
        raise DataError(f"{MAX_CONSECUTIVE_SKIPS} bad samples in a row; the last is named above")

    def load(self, index: int) -> tuple[Record, np.ndarray, PanopticAnnotation]:
        """The record, upright RGB image [H, W, 3] and annotation of an item, untransformed.

        Raises DataError naming the file and the image id when either cannot be used.
        """
        reader, record = self._item(index)
        try:
            image = read_image(record.image_path, self.intensity)
            annotation = reader.load_annotation(record)
        except ImageReadError as err:
            raise DataError(f"image {record.image_id}: {err}") from None
        image_hw = image.shape[:2]
        stated = (record.height, record.width)
        if None not in stated and tuple(stated) != image_hw:
            raise DataError(self._size_message(record, "the annotation says", stated, image_hw))
        if annotation.segment_map.shape != image_hw:
            raise DataError(
                self._size_message(record, "its label is", annotation.segment_map.shape, image_hw)
            )
        return record, image, annotation

    def annotation(self, index: int) -> PanopticAnnotation:
        """The untransformed annotation of an item (for evaluation at the original size)."""
        reader, record = self._item(index)
        return reader.load_annotation(record)

    def _size_message(self, record: Record, what: str, size, image_hw) -> str:
        message = (
            f"{record.image_path}: image {record.image_id} is {image_hw[0]}x{image_hw[1]} (HxW) "
            f"but {what} {size[0]}x{size[1]}"
        )
        with Image.open(record.image_path) as image:
            orientation = exif_orientation(image)
            stored = image.size[::-1]
        if orientation != 1 and tuple(size) == tuple(stored):
            message += (
                f"; the annotation fits the image as stored, before its EXIF orientation "
                f"{orientation} is applied: it was made on the unrotated pixels"
            )
        return message

    def _sample(self, index: int, rng: np.random.Generator) -> dict:
        record, image, annotation = self.load(index)
        out = self.transform(image, annotation.segment_map, rng)
        task = sample_task(self.task_prob, rng)
        targets = derive_targets(out.segment_map, annotation.segments, task)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(out.image.transpose(2, 0, 1))),
            "masks": torch.from_numpy(targets.masks),
            "labels": torch.from_numpy(targets.labels),
            "ignore_mask": torch.from_numpy(targets.ignore_mask),
            "task": task,
            "image_id": record.image_id,
            "file_name": str(record.image_path),
            "orig_size": (int(image.shape[0]), int(image.shape[1])),
            "image_size": out.image_size,
        }
        if self.tokens is not None:
            texts = target_texts(targets.labels, self.label_map.names, task, self.text_list_len)
            sample["task_tokens"] = self.tokens.task(task)
            sample["text_tokens"] = self.tokens.texts(texts)
        return sample
