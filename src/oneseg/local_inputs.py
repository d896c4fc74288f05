"""The files and folders a spec names, made local before an action reads them.

Every input of an action (dataset images, annotations, panoptic and label folders, label map,
checkpoints, pretrained weights, exported models, inference images and lists, calibration
images) may be a URL (`oneseg.remote`): it is copied into `results_dir/cache/remote/`. Then every
folder given as a `.tar`/`.tar.gz` archive, local or copied, is unpacked once into
`results_dir/cache/` (`oneseg.data.archive`). The action gets the spec with local paths; its
`experiment.yaml` keeps what the user wrote. Outputs stay local: a URL given for one is refused.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from oneseg.data.archive import is_archive, unpack_archive
from oneseg.io import write_atomic
from oneseg.remote import fetch, fetch_each, is_url, shown
from oneseg.spec import INPUT_FILES

SOURCE_KEYS = ("images", "annotations", "panoptic", "labels")
FOLDER_KEYS = ("images", "panoptic", "labels")
LIST_SUFFIXES = (".txt", ".lst", ".list")
# the dataset splits each action reads (train also reads the train splits' categories)
_SPLITS_OF = {
    "train": ("train", "val"),
    "automl": ("train", "val"),
    "evaluate": ("{split}",),
    "quantize": ("val",),
    "check": ("train", "val", "test"),
}
_FOLDERS_OF = {
    "inference": ("inference.images",),
    "gen_trt_engine": ("dataset.quant_calibration_dataset.images_dir",),
    "quantize": ("dataset.quant_calibration_dataset.images_dir",),
}
OUTPUT_KEYS = (
    "results_dir",
    "export.onnx_file",
    "gen_trt_engine.trt_engine",
    "gen_trt_engine.tensorrt.calibration_cache",
    "quantize.output_file",
)


def _replace(node, path: list[str], value):
    """`node` (a dataclass) with the field at `path` set to `value`; `name[i]` indexes a list."""
    name, rest = path[0], path[1:]
    index = None
    if name.endswith("]"):
        name, index = name[:-1].split("[")
        index = int(index)
    current = getattr(node, name)
    if index is not None:
        items = list(current)
        items[index] = _replace(items[index], rest, value) if rest else value
        return dataclasses.replace(node, **{name: items})
    new = _replace(current, rest, value) if rest else value
    return dataclasses.replace(node, **{name: new})


def _input_keys(spec, action: str) -> list[tuple[str, bool]]:
    """(dotted key, whether it names a folder) of every input `action` reads."""
    folders = _FOLDERS_OF.get(action, ())
    files = INPUT_FILES.get("train" if action == "automl" else action, ())
    keys = [(k, False) for k in files if k not in folders] + [(k, True) for k in folders]
    for split in _SPLITS_OF.get(action, ()):
        split = split.format(split=spec.evaluate.split)
        if split == "train":
            sources = [f"dataset.train[{i}]" for i in range(len(spec.dataset.train))]
        else:
            sources = [f"dataset.{split}"]
        keys += [(f"{s}.{k}", k in FOLDER_KEYS) for s in sources for k in SOURCE_KEYS]
    if action == "export" and not spec.export.check_image:
        keys.append(("dataset.val.images", True))  # its first image checks the export
    if action in ("evaluate", "inference", "quantize") and not spec.dataset.label_map:
        # without a label map the classes are read from the training annotations
        keys += [(f"dataset.train[{i}].annotations", False) for i in range(len(spec.dataset.train))]
    return keys


def refuse_remote_outputs(spec) -> None:
    """SpecError naming an output key given as a URL: results are written locally."""
    from oneseg.spec import SpecError

    for key in OUTPUT_KEYS:
        value = _get(spec, key)
        if value and is_url(value):
            raise SpecError(
                f"{key}: got {shown(value)!r}; outputs are written to local paths (copy them to "
                "the store afterwards)"
            )


def localize(spec, action: str, on_download=None):
    """`spec` with every input of `action` that is a URL replaced by its local copy, and every
    archive of a folder by its unpacked folder (both under results_dir/cache).

    on_download(url, count): told of each URL, with the count of files downloaded for it."""
    refuse_remote_outputs(spec)
    original = spec
    cache = Path(spec.results_dir) / "cache"
    for key, folder in _input_keys(spec, action):
        value = _get(spec, key)
        if not value:
            continue
        local = str(fetch(value, cache / "remote", on_download)) if is_url(value) else value
        if key == "inference.images" and local.lower().endswith(LIST_SUFFIXES):
            local = _local_list(value, local, cache, on_download)
        if folder and is_archive(local):
            local = str(unpack_archive(local, cache))
        if local != value:
            spec = _replace(spec, key.split("."), local)
    if spec is not original:  # what loading attached beside the fields (e.g. `tao`) stays
        names = {f.name for f in dataclasses.fields(original)}
        for name, value in vars(original).items():
            if name not in names:
                setattr(spec, name, value)
    return spec


def _get(spec, key: str):
    """The value at a dotted key; `name[i]` indexes a list."""
    value = spec
    for name in key.split("."):
        index = None
        if name.endswith("]"):
            name, index = name[:-1].split("[")
        value = getattr(value, name)
        if index is not None:
            value = value[int(index)]
    return value


def _local_list(value: str, local: str, cache: Path, on_download) -> str:
    """A list of images whose lines are URLs, or paths relative to a list that was a URL: the
    same list over local copies (written beside them); the list's other lines stay the files
    they named."""
    if not Path(local).is_file():
        return local
    try:
        text = Path(local).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return local  # not a list of paths: inference's list_images refuses it, naming it
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    base = value.rsplit("/", 1)[0] if is_url(value) else None
    urls = {
        i: line if is_url(line) else f"{base}/{line}"
        for i, line in enumerate(lines)
        if is_url(line) or (base is not None and not Path(line).is_absolute())
    }
    if not urls:
        return local
    for i, line in enumerate(lines):  # local lines of a local list: as they were read
        if i not in urls and base is None and not Path(line).is_absolute():
            lines[i] = str(Path(local).parent.absolute() / line)
    copies = fetch_each(list(urls.values()), f"{value}#images", cache / "remote", on_download)
    for i, copy in zip(urls, copies):
        lines[i] = str(copy)
    out = Path(copies[0]).parent if len(copies) == 1 else Path(_common(copies))
    listed = out / f".list-{Path(local).name}"
    write_atomic(listed, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in lines)))
    return str(listed)


def _common(paths) -> str:
    return os.path.commonpath([str(Path(p).parent) for p in paths])
