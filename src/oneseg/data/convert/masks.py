"""One PNG mask per object as `ImageLabels`.

    SRC/images/NAME.jpg                  the images (any depth below images/)
    SRC/masks/NAME/K_CLASS.png           one mask per object: non-zero pixels are the object,
                                         K orders the objects, CLASS is the class name (or id)

A mask whose size differs from its image's, or that covers no pixel, is reported as skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from oneseg.constants import IMAGE_SUFFIXES
from oneseg.data.convert.labels import Classes, ConvertReport, ImageLabels, LabelledObject


def source_images(src: Path, report: ConvertReport) -> list[Path]:
    """The images below SRC/images, sorted."""
    folder = src / "images"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no images folder (the format wants SRC/images/)")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    with Image.open(path) as image:
        return image.height, image.width


def _order(path: Path) -> tuple:
    head = path.stem.split("_", 1)[0]
    return (int(head), path.name) if head.isdigit() else (1 << 30, path.name)


def read_masks(src: Path, classes: Classes, report: ConvertReport) -> Iterator[ImageLabels]:
    """Each image of SRC/images with the masks of SRC/masks/NAME/."""
    for image in source_images(src, report):
        rel = image.relative_to(src / "images")
        height, width = image_size(image)
        labels = ImageLabels(image, rel.as_posix(), height, width)
        folder = src / "masks" / rel.with_suffix("")
        for path in sorted(folder.glob("*.png"), key=_order):
            name = path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
            cid = classes.id_of(int(name) if name.isdigit() else name)
            if cid is None:
                report.skip(path, f"class {name!r} is not in the label map")
                continue
            mask = np.asarray(Image.open(path))
            mask = mask.any(axis=2) if mask.ndim == 3 else mask != 0
            if mask.shape != (height, width):
                report.skip(path, f"mask size {mask.shape} differs from the image's")
                continue
            if not mask.any():
                report.skip(path, "the mask covers no pixel")
                continue
            labels.objects.append(LabelledObject(cid, mask))
        yield labels
