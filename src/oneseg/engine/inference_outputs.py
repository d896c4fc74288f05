"""Writing results in the formats other tools read.

- Panoptic: one PNG per image whose colour is the segment id (id = R + 256 G + 256^2 B) and one
  COCO panoptic JSON whose `segments_info` name the dataset's category ids, as panopticapi and
  our own `CocoPanopticReader` expect.
- Instance: a COCO results list (`image_id`, `category_id`, `segmentation` as compressed RLE,
  `score`, `bbox`), loadable by pycocotools' `COCO.loadRes`.
- Semantic: label PNGs, 8-bit when every id fits, else 16-bit.

Every file is written atomically (`oneseg.io`): a run that is stopped never leaves a
half-written file behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from oneseg.io import read_json, write_id_png, write_json_atomic, write_png_atomic
from oneseg.results import coco_instances
from oneseg.visualize import overlay_instances, overlay_panoptic, overlay_semantic

MIN_SIDE = 384  # overlays of smaller images are enlarged to this short side, to stay readable


def segment_areas_and_boxes(
    segment_ids: np.ndarray, ids: list[int]
) -> tuple[list[int], list[list[int]]]:
    """Pixel count and COCO box [x, y, w, h] of each listed id in an [H, W] map.

    An id with no pixels gets area 0 and box [0, 0, 0, 0].
    """
    ids_array = np.asarray(ids, dtype=np.int64)
    if ids_array.size == 0:
        return [], []
    order = np.argsort(ids_array)
    sorted_ids = ids_array[order]
    flat = segment_ids.astype(np.int64, copy=False)
    pos = np.minimum(np.searchsorted(sorted_ids, flat), len(sorted_ids) - 1)
    # [H, W] label 1..S by position in `ids`, 0 for pixels of no listed id
    labels = np.where(sorted_ids[pos] == flat, order[pos] + 1, 0)
    areas = np.bincount(labels.ravel(), minlength=len(ids) + 1)[1:]
    boxes = []
    for window in ndimage.find_objects(labels, max_label=len(ids)):
        if window is None:
            boxes.append([0, 0, 0, 0])
            continue
        rows, cols = window
        boxes.append([cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start])
    return [int(a) for a in areas], boxes


def panoptic_segments_info(
    segment_ids: np.ndarray, segments: list[dict], category_ids: list[int]
) -> list[dict]:
    """COCO `segments_info` of a panoptic result.

    Arguments:
        segment_ids: [H, W] ids, 0 = void.
        segments: dicts with `id` and `label` (contiguous class) and optionally `score`.
        category_ids: the dataset's category id of each contiguous class.
    """
    areas, boxes = segment_areas_and_boxes(segment_ids, [int(s["id"]) for s in segments])
    infos = []
    for segment, area, box in zip(segments, areas, boxes):
        info = {
            "id": int(segment["id"]),
            "category_id": int(category_ids[int(segment["label"])]),
            "iscrowd": 0,
            "area": area,
            "bbox": box,
        }
        if "score" in segment:
            info["score"] = round(float(segment["score"]), 6)
        infos.append(info)
    return infos


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """A label map [H, W] of non-negative ids: 8-bit PNG when all ids are below 256."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label ids must lie in 0..65535 to be stored in a PNG")
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16
    write_png_atomic(path, labels.astype(dtype))


class InferenceOutputs:
    """The files of an inference run in `folder`, and what earlier runs already wrote there.

        images.json           {"images": [{id, name, file_name, path, height, width, tasks}],
                               "categories": [...]}: every image's id, and the tasks done
        panoptic/NAME.png     segment ids as colours
        panoptic.json         COCO panoptic: images, annotations (segments_info), categories
        instance.json         COCO results list: image_id, category_id, RLE segmentation, score
        semantic/NAME.png     label PNGs (category ids, or contiguous ids with "contiguous")
        overlays/TASK/NAME.png  pictures to look at

    Image ids stay those given on the first run, so `COCO("images.json").loadRes(
    "instance.json")` works whatever runs wrote the files. `flush` rewrites the JSON files
    (atomically) with the earlier entries merged in: an image redone replaces its own entries
    and no other.
    """

    def __init__(
        self,
        folder,
        label_map,
        tasks: list[str],
        overlay: bool,
        semantic_ids: str,
        json_folder=None,
    ):
        self.folder = Path(folder)
        # one process of several keeps its JSON files apart (`PARTS`); rank 0 merges them
        self.json_folder = Path(json_folder) if json_folder is not None else self.folder
        self.label_map = label_map
        self.tasks = list(tasks)
        self.overlay = overlay
        self.semantic_ids = semantic_ids
        listed = read_json(self.json_folder / "images.json", {}).get("images", [])
        self.images: dict[str, dict] = {entry["name"]: entry for entry in listed}
        panoptic = read_json(self.json_folder / "panoptic.json", {}).get("annotations", [])
        self.panoptic: dict[int, dict] = {ann["image_id"]: ann for ann in panoptic}
        self.instances: dict[int, list[dict]] = {}
        for result in read_json(self.json_folder / "instance.json", []):
            self.instances.setdefault(result["image_id"], []).append(result)

    def _files(self, name: str, task: str) -> list[Path]:
        files = [self.folder / "overlays" / task / f"{name}.png"] if self.overlay else []
        if task in ("panoptic", "semantic"):
            files.append(self.folder / task / f"{name}.png")
        return files

    def is_done(self, name: str) -> bool:
        """Whether every task's outputs of image `name` are written and listed."""
        entry = self.images.get(name)
        if entry is None:
            return False
        return all(
            task in entry.get("tasks", []) and all(f.is_file() for f in self._files(name, task))
            for task in self.tasks
        )

    def add(self, name: str, path: Path, file_name: str, image: np.ndarray, results: dict):
        """Write the results (task -> result, see `oneseg.results`) of one image."""
        entry = self._entry(name)
        entry.update(
            file_name=file_name,
            path=str(Path(path).absolute()),
            height=int(image.shape[0]),
            width=int(image.shape[1]),
        )
        image_id = entry["id"]
        for task, result in results.items():
            if task == "panoptic":
                write_id_png(self.folder / "panoptic" / f"{name}.png", result.segment_ids)
                infos = panoptic_segments_info(
                    result.segment_ids, result.segments, self.label_map.category_ids
                )
                self.panoptic[image_id] = {
                    "image_id": image_id,
                    "file_name": f"{name}.png",
                    "segments_info": infos,
                }
                picture = self.overlay and overlay_panoptic(
                    image, result.segment_ids, result.segments, self.label_map, min_side=MIN_SIDE
                )
            elif task == "instance":
                self.instances[image_id] = coco_instances(image_id, result)
                picture = self.overlay and overlay_instances(
                    image,
                    result.masks,
                    result.labels,
                    result.scores,
                    self.label_map,
                    min_side=MIN_SIDE,
                )
            else:
                ids = result.category_map if self.semantic_ids == "category" else result.labels
                write_label_png(self.folder / "semantic" / f"{name}.png", ids)
                picture = self.overlay and overlay_semantic(
                    image, result.labels, self.label_map, min_side=MIN_SIDE
                )
            if self.overlay:
                write_png_atomic(self.folder / "overlays" / task / f"{name}.png", picture)
            if task not in entry["tasks"]:
                entry["tasks"].append(task)

    def _entry(self, name: str) -> dict:
        """The images list entry of `name`, made with the next free id if there is none."""
        entry = self.images.get(name)
        if entry is None:
            next_id = max((e["id"] for e in self.images.values()), default=0) + 1
            entry = self.images[name] = {"id": next_id, "name": name, "tasks": []}
        return entry

    def take(self, name: str, other: InferenceOutputs) -> None:
        """Take image `name` as `other` (another process's files) lists it: its entry and
        task results under this folder's id of the image (the next free id when new)."""
        source = other.images[name]
        entry = self._entry(name)
        entry.update({k: v for k, v in source.items() if k not in ("id", "name", "tasks")})
        image_id, other_id = entry["id"], source["id"]
        if "panoptic" in source["tasks"] and other_id in other.panoptic:
            self.panoptic[image_id] = {**other.panoptic[other_id], "image_id": image_id}
        if "instance" in source["tasks"]:
            found = other.instances.get(other_id, [])
            self.instances[image_id] = [{**r, "image_id": image_id} for r in found]
        entry["tasks"] += [t for t in source["tasks"] if t not in entry["tasks"]]

    def flush(self) -> None:
        """Rewrite the JSON files: task files first, the images list (which marks images as
        done) last, so an interrupted flush only makes the next run redo some images."""
        categories = self.label_map.to_categories()
        images = sorted(self.images.values(), key=lambda e: e["id"])
        coco_images = [
            {k: e[k] for k in ("id", "file_name", "height", "width") if k in e} for e in images
        ]
        if self.panoptic or (self.json_folder / "panoptic.json").exists():
            with_panoptic = [i for i in coco_images if i["id"] in self.panoptic]
            annotations = [self.panoptic[i["id"]] for i in with_panoptic]
            write_json_atomic(
                self.json_folder / "panoptic.json",
                {"images": with_panoptic, "annotations": annotations, "categories": categories},
            )
        if self.instances or (self.json_folder / "instance.json").exists():
            results = [r for image_id in sorted(self.instances) for r in self.instances[image_id]]
            write_json_atomic(self.json_folder / "instance.json", results)
        write_json_atomic(
            self.json_folder / "images.json", {"images": images, "categories": categories}
        )


PARTS = "parts"  # results_dir/inference/parts/rankNNNNN/: one process's JSON files of a run


def _part(outputs: InferenceOutputs, folder: Path) -> InferenceOutputs:
    return InferenceOutputs(
        outputs.folder,
        outputs.label_map,
        outputs.tasks,
        outputs.overlay,
        outputs.semantic_ids,
        json_folder=folder,
    )


def part_folder(folder, rank: int) -> Path:
    """Where process `rank` of several keeps its JSON files (the same three as the run's,
    with its own ids): `folder/parts/rankNNNNN/`, made if missing."""
    path = Path(folder) / PARTS / f"rank{rank:05d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def merge_parts(outputs: InferenceOutputs, order: dict[str, int]) -> int:
    """Take every image that the part folders list as done into `outputs`, flush it and remove
    the parts; returns the number of images taken.

    New images get ids in the order of `order` (image name -> position in the listing; others
    after, by name), as one process numbers them. Safe to repeat after a crash at any point:
    an image taken twice keeps its id, and a part's images.json (which lists what is done) is
    removed before the rest of it."""
    root = outputs.folder / PARTS
    folders = sorted(p for p in root.glob("rank*") if p.is_dir()) if root.is_dir() else []
    parts = [_part(outputs, folder) for folder in folders]
    taken = [(name, part) for part in parts for name in part.images]
    taken.sort(key=lambda item: (order.get(item[0], len(order)), item[0]))
    for name, part in taken:
        outputs.take(name, part)
    if taken:
        outputs.flush()
    for folder in folders:
        (folder / "images.json").unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    if folders:
        try:
            root.rmdir()
        except OSError:  # not empty: a process of this run already made its folder
            pass
    return len(taken)
