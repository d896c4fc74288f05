"""TAO's ADE layout: a JSON-lines file, one `{"img": ..., "segm": ...}` object per image.

This is what TAO Mask2Former reads for `dataset.*.type: ade` (its default) and TAO OneFormer
for semantic data. `img` is the image and `segm` a one-channel label PNG of the same size whose
pixels hold category ids of the label map (ADE20K: 1..150); 0 is unlabelled and ignored. Both
paths are relative to the source's root folder (TAO's `root_dir`, oneseg's `images` of the
source), or absolute. Extra keys of a line (TAO's tools write `width`, `height`) are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError, Record
from oneseg.data.semantic import SemanticReader

UNLABELLED = 0  # ADE's label value of pixels no class claims


def read_jsonl(path: str | Path, root: str | Path = "") -> list[tuple[Path, Path]]:
    """(image path, label path) of each line of `path`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(item, dict) or not item.get("img") or not item.get("segm"):
                raise DataError(f"{path}: line {number} needs 'img' and 'segm' paths")
            pairs.append((Path(root) / item["img"], Path(root) / item["segm"]))
    if not pairs:
        raise DataError(f"{path}: no images listed")
    return pairs


class AdeJsonlReader(SemanticReader):
    """Records of a JSON-lines file (see the module docstring); labels read as `SemanticReader`
    reads label PNGs, with 0 as the ignored value.

    Arguments:
        annot_file: the .jsonl file.
        root: folder the listed paths are relative to ('' = as written).
        label_map: the classes; label values are its category ids.
        contiguous_id: values map to label-map positions (else they are class indices).
    """

    def __init__(
        self,
        annot_file: str | Path,
        root: str | Path,
        label_map: LabelMap,
        contiguous_id: bool = True,
    ):
        self.images_dir = Path(root or ".")
        self.labels_dir = self.images_dir
        self.label_map = label_map
        self.ignore_value = UNLABELLED
        self._lookup = self._value_lookup(label_map, contiguous_id)
        self.records: list[Record] = [
            Record(image_path=image, image_id=str(image), height=None, width=None, source=label)
            for image, label in read_jsonl(annot_file, root)
        ]
