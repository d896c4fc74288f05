"""The `inference` action: segment the images a spec names and write every result file.

Which images (`list_images`), what each one's files are called (`output_names`), reading ahead
of the model on two threads, and the loop that writes through
`oneseg.engine.inference_outputs.InferenceOutputs`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.progress import Progress

from oneseg.constants import IMAGE_SUFFIXES
from oneseg.cpu_threads import set_intra_op_threads
from oneseg.data.archive import is_archive, unpack_archive
from oneseg.data.image_io import read_image
from oneseg.data.intensity import Intensity, choose_intensity
from oneseg.data.records import DataError
from oneseg.engine.inference_outputs import InferenceOutputs, merge_parts, part_folder
from oneseg.engine.processes import Processes, launched, open_section_model, plan_processes
from oneseg.errors import one_line
from oneseg.model.compiled import compile_pixel_decoder
from oneseg.predictor import Predictor

LIST_SUFFIXES = (".txt", ".lst", ".list")
FLUSH_EVERY_IMAGES = 25
FLUSH_EVERY_SECONDS = 30.0


def list_images(images: str) -> tuple[list[Path], Path]:
    """The image files named by `inference.images` and the folder they are relative to.

    `images` is a folder (its image files, sorted), a text file listing one path per line
    (relative to the list's folder; '#' starts a comment), one image, or a glob pattern.
    Listed files that do not exist are kept: the run reports and skips them.
    """
    if not images:
        raise ValueError("inference.images is empty: give a folder, a glob, a list file or a file")
    source = Path(images)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        root = source
    elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        paths, root = _listed_images(source), None
    elif source.is_file():
        paths, root = [source], source.parent
    else:
        paths = sorted(Path(p) for p in glob.glob(images, recursive=True) if Path(p).is_file())
        root = None
    paths = list(dict.fromkeys(paths))  # a file listed twice is segmented once
    if not paths:
        raise FileNotFoundError(f"inference.images: {images!r} names no image file")
    if root is None:
        root = Path(os.path.commonpath([p.absolute().parent for p in paths]))
    return paths, root


def _listed_images(source: Path) -> list[Path]:
    """The image paths a list file names, refusing (without showing its lines) a file that is
    not UTF-8 text or has a line that is not an image path."""
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"inference.images: {source} is not a UTF-8 list of image paths") from None
    paths = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line or Path(line).suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"inference.images: {source} line {number} is not an image path (a list file "
                f"names one image ending in {', '.join(IMAGE_SUFFIXES)} per line)"
            )
        paths.append(source.parent / line)
    return paths


def relative_paths(paths: list[Path], root: Path) -> list[str]:
    """Each path below `root`, '/'-separated: the `file_name` of the COCO images list."""
    return [p.absolute().relative_to(root.absolute()).as_posix() for p in paths]


def output_names(rel: list[str]) -> list[str]:
    """A unique, stable file stem for each image of `rel` (paths below the images' root, as
    `relative_paths` gives them): the path without the suffix, folders joined by '__'; where
    two images share a stem, the suffix stays (as '_jpg'); where
    names still meet (`a.jpg`, `a.png`, `a_jpg.png`), or differ only in case, each of those
    gets a hash of its path ('a_jpg-1f3a9c0e'). No two images ever get one name."""
    stems = [r.rsplit(".", 1)[0] if "." in Path(r).name else r for r in rel]
    names = [s.replace("/", "__") for s in stems]
    shared = Counter(n.casefold() for n in names)
    names = [
        n if shared[n.casefold()] == 1 else r.replace("/", "__").replace(".", "_")
        for n, r in zip(names, rel)
    ]
    shared = Counter(n.casefold() for n in names)
    names = [
        n if shared[n.casefold()] == 1 else f"{n}-{hashlib.sha1(r.encode()).hexdigest()[:8]}"
        for n, r in zip(names, rel)
    ]
    if len({n.casefold() for n in names}) != len(names):  # a hash meeting another name
        names = [f"{n}-{hashlib.sha1(r.encode()).hexdigest()[:16]}" for n, r in zip(names, rel)]
    return names


def _read_ahead(
    paths: list[Path], depth: int, intensity: Intensity | None = None
) -> Iterator[tuple[Path, np.ndarray | Exception]]:
    """(path, image or its read error) in order, decoding up to `depth` images ahead."""

    def read(path: Path):
        try:
            return read_image(path, intensity)
        except DataError as err:
            return err

    with ThreadPoolExecutor(max_workers=2) as pool:
        queue: deque[tuple[Path, Future]] = deque()
        for path in paths:
            queue.append((path, pool.submit(read, path)))
            if len(queue) > depth:
                done_path, future = queue.popleft()
                yield done_path, future.result()
        while queue:
            done_path, future = queue.popleft()
            yield done_path, future.result()


def _good_batches(reads, batch_size: int, on_bad) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Batches of readable images; `on_bad(path, error)` for each image that is not."""
    batch = []
    for path, image in reads:
        if isinstance(image, Exception):
            on_bad(path, image)
            continue
        batch.append((path, image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_inference(spec, run) -> None:
    """The `inference` action: each task of `inference.tasks` on every image of
    `inference.images`, written into `run.dir` (see `InferenceOutputs`), on one process or
    several (`oneseg.engine.processes`: the images still to do split between them).

    Images whose outputs are all there are skipped unless `inference.overwrite`; an image that
    cannot be read is reported (status.json and stderr) and skipped.
    """
    plan = plan_processes(spec.inference, "inference")
    # images are read ahead by threads, not processes
    set_intra_op_threads(spec.cpu_threads, 0, plan.cpu_processes)
    with launched(plan) as processes:
        _run_inference(spec, run, processes)


def _run_inference(spec, run, processes: Processes) -> None:
    """Rank 0 takes in what the processes of a stopped run had written, decides what is to do
    and merges every process's JSON files at the end (also when the run fails); each process
    segments its share, writing its PNGs into the run's folder and its JSON files apart."""
    cfg = spec.inference
    predictor, tasks = _predictor(spec, run, processes)
    if cfg.compile and predictor.model is not None:
        compile_pixel_decoder(predictor.model)
    predictor.resize = tuple(cfg.resize) if cfg.resize else None
    images = cfg.images
    if is_archive(images):  # TAO's images.tar.gz, unpacked once (locked) as train does
        images = str(unpack_archive(images, Path(spec.results_dir) / "cache"))
    paths, root = list_images(images)
    rels = relative_paths(paths, root)
    names = output_names(rels)
    order = {name: position for position, name in enumerate(names)}
    settings = (predictor.label_map, tasks, cfg.overlay, cfg.semantic_ids)
    outputs, todo = None, None
    if processes.is_main:
        outputs = InferenceOutputs(run.dir, *settings)
        merge_parts(outputs, order)
        todo = [i for i, name in enumerate(names) if cfg.overwrite or not outputs.is_done(name)]
    todo = processes.broadcast(todo)
    several = processes.world_size > 1
    share = f", on {processes.world_size} processes" if several else ""
    run.log("RUNNING", f"{len(todo)} of {len(paths)} images to segment; the others are done{share}")
    if several:
        writer = InferenceOutputs(run.dir, *settings, part_folder(run.dir, processes.rank))
    else:
        writer = outputs
    mine = {paths[todo[k]]: (names[todo[k]], rels[todo[k]]) for k in processes.shard(len(todo))}
    try:
        done = _segment(cfg, predictor, tasks, mine, writer, run, processes)
        shares = processes.gather(done)
    except BaseException:
        if several and processes.is_main:
            processes.stop_children()
            try:  # keep what every process finished; the error raised is the one to report
                merge_parts(outputs, order)
            except Exception:  # noqa: BLE001
                pass
        raise
    if not processes.is_main:
        return
    if several:
        merge_parts(outputs, order)
    for rank, (_, bad) in enumerate(shares):
        for path, reason in bad if rank else []:
            run.log("RUNNING", f"skipped a bad image: {reason}", bad_image=path)
    counts = {
        "images": len(paths),
        "already_done": len(paths) - len(todo),
        "segmented": sum(segmented for segmented, _ in shares),
        "bad_images": sum(len(bad) for _, bad in shares),
    }
    run.kpis.update(counts, processes=processes.world_size)
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    print(f"inference: {summary}; results in {run.dir}")


def _segment(cfg, predictor, tasks, todo: dict, writer, run, processes) -> tuple[int, list]:
    """Segment the images of `todo` (path -> (name, file_name)) and write them with `writer`,
    flushing its JSON files now and then and at the end; returns (images segmented,
    [(path, reason)] of the images that could not be read)."""
    segmented, bad = 0, []
    last_flush, unflushed = time.time(), 0
    try:
        with Progress(transient=True, disable=not processes.is_main) as progress:
            bar = progress.add_task("inference", total=len(todo))

            def on_bad(path: Path, error: Exception) -> None:
                bad.append((str(path), _report_bad_image(run, path, error)))
                progress.advance(bar)

            reads = _read_ahead(list(todo), 2 * cfg.batch_size, predictor.intensity)
            for batch in _good_batches(reads, cfg.batch_size, on_bad):
                results = predictor.predict([image for _, image in batch], tasks)
                for (path, image), result in zip(batch, results):
                    name, rel = todo[path]
                    writer.add(name, path, rel, image, result)
                segmented += len(batch)
                unflushed += len(batch)
                progress.advance(bar, len(batch))
                processes.step(len(batch))
                if (
                    unflushed >= FLUSH_EVERY_IMAGES
                    or time.time() - last_flush > FLUSH_EVERY_SECONDS
                ):
                    writer.flush()
                    last_flush, unflushed = time.time(), 0
    finally:
        writer.flush()
    return segmented, bad


def _predictor(spec, run, processes: Processes) -> tuple[Predictor, list[str]]:
    """The predictor of the model `inference` runs (an exported file or engine, else a
    checkpoint), opened once, and the tasks of `inference.tasks` it runs; the others are
    reported and skipped."""
    cfg = spec.inference
    opened = open_section_model(spec, "inference", run, processes)
    aug = spec.dataset.augmentation
    predictor = Predictor.from_opened(
        opened,
        min_size=aug.eval_min_size,
        max_size=aug.eval_max_size,
        intensity=choose_intensity(spec.dataset.intensity, opened.intensity),
        tile=cfg.tile,
    )
    if cfg.tile.mode != "off":
        mode, size, overlap, _, _ = predictor.tile
        run.log("RUNNING", f"tiles ({mode}): windows of {size} px sharing {overlap} px")
    if opened.dropped:
        message = opened.dropped_message("skipping")
        run.log("RUNNING", message)
        if processes.is_main:
            print(f"oneseg inference: {message}", file=sys.stderr)
    return predictor, opened.tasks


def _report_bad_image(run, path: Path, error: Exception) -> str:
    """Report an image that cannot be read (status.json on rank 0, stderr); returns why. A
    name holding a newline is shown whole (escaped)."""
    shown = one_line(str(path))
    reason = one_line(str(error) if shown in one_line(str(error)) else f"{shown}: {error}")
    run.log("RUNNING", f"skipped a bad image: {reason}", bad_image=str(path))
    print(f"oneseg inference: skipped a bad image: {reason}", file=sys.stderr)
    return reason
