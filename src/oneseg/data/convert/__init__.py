"""`oneseg data convert`: labels from annotation tools into COCO panoptic or COCO instance data.

Readers (one module per format) yield `ImageLabels`; `coco_writer` writes them. What each
format can hold, and so what a conversion from it loses, is in docs/data_sources.md.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from oneseg.data.convert.ade_jsonl import read_ade_jsonl
from oneseg.data.convert.coco_writer import write_coco_instances, write_coco_panoptic
from oneseg.data.convert.labelme import read_labelme
from oneseg.data.convert.labels import Classes, ConvertReport
from oneseg.data.convert.masks import read_masks
from oneseg.data.convert.yolo import read_yolo
from oneseg.data.label_map import LabelMap
from oneseg.data.records import DataError

SOURCES = ("labelme", "masks", "yolo", "ade_jsonl")
TARGETS = ("coco_panoptic", "coco")


def convert(
    source: str, src: str | Path, target: str, out: str | Path, label_map: str | Path | None = None
) -> ConvertReport:
    """Convert the `source`-format labels in SRC into a `target` dataset in OUT.

    label_map: a JSON list of {id, name, isthing, color} (or a COCO JSON's categories); the
    classes the labels name must be in it. Without it, classes are numbered as met, all things.
    Returns the report (also written to OUT/convert_report.json)."""
    if source not in SOURCES:
        raise DataError(f"--from: got {source!r}, expected one of {', '.join(SOURCES)}")
    if target not in TARGETS:
        raise DataError(f"--to: got {target!r}, expected one of {', '.join(TARGETS)}")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    classes = Classes(LabelMap.from_json(label_map) if label_map else None)
    report = ConvertReport()
    if not classes.given:
        report.note(
            "no --label-map: classes numbered 1.. as met, all as things (edit "
            "OUT/label_map.json to mark stuff)"
        )
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".convert-", dir=out))
    try:
        items = {
            "labelme": lambda: read_labelme(src, classes, report, scratch),
            "masks": lambda: read_masks(src, classes, report),
            "yolo": lambda: read_yolo(src, classes, report),
            "ade_jsonl": lambda: read_ade_jsonl(src, classes, report),
        }[source]()
        write = write_coco_panoptic if target == "coco_panoptic" else write_coco_instances
        write(items, classes.final, out, report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report
