"""TAO Mask2Former's ADE JSON lines as `ImageLabels`.

    SRC/FILE.jsonl        one `{"img": IMAGE, "segm": LABEL_PNG}` object per line, both paths
                          relative to SRC (or absolute)

The label PNG holds one category id per pixel (0: unlabelled). It is a semantic map: it does
not tell two objects of one class apart, so each class present in an image becomes one object:
the objects of a thing class are merged into one (the report notes it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.data.convert.labels import Classes, ConvertReport, ImageLabels, LabelledObject

UNLABELLED = 0


def _lines(src: Path, report: ConvertReport) -> Iterator[tuple[str, dict]]:
    files = [src] if src.is_file() else sorted(src.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{src}: no .jsonl file")
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                report.skip(f"{path}:{number}", f"not JSON ({err.msg})")
                continue
            if not isinstance(item, dict) or not item.get("img") or not item.get("segm"):
                report.skip(f"{path}:{number}", "a line needs 'img' and 'segm' paths")
                continue
            yield f"{path}:{number}", item


def _output_name(listed: str, image: Path) -> str:
    """The image's name in the output: its listed path less a leading images/ folder (the
    output puts it under OUT/images/), or the file name of an absolute path."""
    parts = Path(listed).parts
    if Path(listed).is_absolute():
        return image.name
    return Path(*parts[1:]).as_posix() if len(parts) > 1 and parts[0] == "images" else listed


def read_ade_jsonl(src: Path, classes: Classes, report: ConvertReport) -> Iterator[ImageLabels]:
    """Each line's image with one object per class of its label PNG."""
    root = src.parent if src.is_file() else src
    for where, item in _lines(src, report):
        image, label = root / item["img"], root / item["segm"]
        if not image.is_file() or not label.is_file():
            report.skip(where, f"{image if not image.is_file() else label}: no such file")
            continue
        values = np.asarray(Image.open(label))
        if values.ndim != 2:
            report.skip(where, f"{label}: not a one-channel label PNG")
            continue
        with Image.open(image) as img:
            size = (img.height, img.width)
        if values.shape != size:
            report.skip(where, f"label size {values.shape} differs from the image's {size}")
            continue
        name = _output_name(item["img"], image)
        labels = ImageLabels(image, name, *size)
        report.note("ADE labels are semantic: each class of an image is one segment")
        for value in np.unique(values):
            if value == UNLABELLED:
                continue
            cid = classes.id_of(int(value))
            if cid is None:
                report.skip(where, f"category id {int(value)} is not in the label map")
                continue
            labels.objects.append(LabelledObject(cid, values == value))
        yield labels
