"""evaluate and inference on several processes (2 CPU processes over gloo, started by the
`oneseg` command as a user starts them): the same metrics and files as one process, every
image once whatever the count, and a run that loses a process fails in one line and is
completed by running it again. The one-process reference runs in this process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from oneseg.engine.evaluate import merge_shards, run_evaluate
from oneseg.engine.inference import run_inference
from oneseg.engine.processes import FAULT_ENV, FAULT_EXIT_CODE, strided_shard
from oneseg.errors import RunFailed
from oneseg.experiment import ActionRun
from oneseg.spec import spec_from_dict

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo processes on Linux")
NUM_IMAGES = 5  # odd: the two shards differ in size
TASKS = ["panoptic", "instance", "semantic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_cfg):
    """5 validation images of 64x64 and a tiny checkpoint with sharpened heads, so that its
    random weights give confident, overlapping segments."""
    from oneseg.checkpoint import make_checkpoint, save_atomic
    from oneseg.data.label_map import LabelMap
    from oneseg.data.synth import write_synthetic_dataset
    from oneseg.model.build import build_model

    root = tmp_path_factory.mktemp("processes")
    paths = write_synthetic_dataset(
        root / "synth", num_train=1, num_val=NUM_IMAGES, size=(64, 64), seed=5
    )
    label_map = LabelMap.from_json(paths["label_map"])
    torch.manual_seed(1)
    model = build_model(tiny_model_cfg, num_classes=len(label_map))
    with torch.no_grad():
        model.decoder.class_embed.weight.mul_(6.0)
        model.decoder.mask_embed.layers[-1].weight.mul_(4.0)
    checkpoint = root / "tiny.pth"
    save_atomic(make_checkpoint(tiny_model_cfg, label_map, model.state_dict()), checkpoint)
    return paths, checkpoint


def _spec_values(results: Path, data) -> dict:
    paths, checkpoint = data
    val = paths["val"]
    return {
        "results_dir": str(results),
        "cpu_threads": 1,
        "model": {"object_mask_threshold": 0.5},
        "dataset": {
            "val": {
                "images": str(val["images"]),
                "annotations": str(val["panoptic_json"]),
                "panoptic": str(val["panoptic"]),
            },
            "label_map": str(paths["label_map"]),
            "workers": 0,
            "augmentation": {"eval_min_size": 64},
        },
        "evaluate": {"checkpoint": str(checkpoint)},
        "inference": {"checkpoint": str(checkpoint), "images": str(val["images"]), "tasks": TASKS},
    }


def _in_process(action: str, results: Path, data):
    spec = spec_from_dict(_spec_values(results, data))
    with ActionRun(spec, action) as run:
        {"evaluate": run_evaluate, "inference": run_inference}[action](spec, run)
    return run.dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data) -> dict:
    """action -> the folder of its one-process run, made on first use."""
    root = tmp_path_factory.mktemp("one_process")
    done: dict = {}

    def folder(action: str) -> Path:
        if action not in done:
            done[action] = _in_process(action, root, data)
        return done[action]

    return folder


def _command(action: str, results: Path, data, fault: str = ""):
    """`oneseg ACTION` on 2 CPU processes, as a user runs it; returns the finished process."""
    spec_file = results.parent / f"{results.name}_{action}.yaml"
    spec_file.write_text(yaml.safe_dump(_spec_values(results, data)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    command = [sys.executable, "-m", "oneseg.cli", action, "-e", str(spec_file)]
    return subprocess.run(
        [*command, f"{action}.num_processes_cpu=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _status(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]


def _one_line(result) -> str:
    """The run's failure line: exactly one `oneseg:` line on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("oneseg:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("length", range(0, 12))
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_strided_shards_hold_every_index_once(length, world_size):
    shards = [strided_shard(length, rank, world_size) for rank in range(world_size)]
    indices = [i for shard in shards for i in shard]
    assert sorted(indices) == list(range(length))  # none twice, none lost, no padding
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_merge_refuses_a_missing_or_repeated_image():
    assert list(merge_shards([{2: "c", 0: "a"}, {1: "b"}], 3)) == [0, 1, 2]
    with pytest.raises(RunFailed, match="scored 2 images"):
        merge_shards([{0: "a"}, {2: "c"}], 3)
    with pytest.raises(RunFailed, match="scored 4 images"):
        merge_shards([{0: "a", 1: "b"}, {1: "b", 2: "c"}], 3)


def _metrics(folder: Path) -> dict:
    saved = json.loads((folder / "metrics.json").read_text())
    saved["metrics"].pop("seconds_per_image")
    return saved


def _assert_equal_numbers(got, expected, path="") -> None:
    """Equal structure; numbers within 1e-9, NaN equal to NaN (and None, as metrics.json
    writes NaN, to None)."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), path
        for key in expected:
            _assert_equal_numbers(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float) and isinstance(got, float):
        same = math.isnan(got) and math.isnan(expected)
        assert same or math.isclose(got, expected, rel_tol=0, abs_tol=1e-9), (path, got, expected)
    else:
        assert got == expected, path


def test_two_processes_give_the_metrics_of_one(tmp_path, data, one_process):
    one = one_process("evaluate")
    result = _command("evaluate", tmp_path / "two", data)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two" / "evaluate"
    expected = _metrics(one)
    assert expected["metrics"]["num_images"] == NUM_IMAGES
    assert 0 < expected["metrics"]["miou"] < 100  # numbers that a lost image would change
    _assert_equal_numbers(_metrics(two), expected)
    for name in ("per_class.md", "per_class.csv"):
        assert (two / name).read_text() == (one / name).read_text()
    assert (two / "per_class.png").is_file()
    last = _status(two)[-1]
    assert last["status"] == "SUCCESS" and last["kpi"]["processes"] == 2
    assert result.stdout.count("evaluate: done") == 1  # rank 0 alone reports


def test_a_lost_process_fails_evaluate_in_one_line(tmp_path, data):
    result = _command("evaluate", tmp_path / "run", data, fault="1:1")
    assert result.returncode == 1
    line = _one_line(result)
    assert f"process 1 of 2 exited with code {FAULT_EXIT_CODE}" in line, line
    last = _status(tmp_path / "run" / "evaluate")[-1]
    assert last["status"] == "FAILURE" and "process 1 of 2" in last["message"]
    assert not (tmp_path / "run" / "evaluate" / "metrics.json").exists()


def _outputs(folder: Path) -> dict:
    """Every result file of an inference folder, the JSON files keyed by image name (ids are
    those of the first run that wrote an image)."""
    images = json.loads((folder / "images.json").read_text())
    name_of = {entry["id"]: entry["name"] for entry in images["images"]}
    panoptic = json.loads((folder / "panoptic.json").read_text())
    instances: dict = {}
    for found in json.loads((folder / "instance.json").read_text()):
        found = dict(found)
        instances.setdefault(name_of[found.pop("image_id")], []).append(found)
    files = {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*.png"))
    }
    return {
        "images": {e["name"]: {k: v for k, v in e.items() if k != "id"} for e in images["images"]},
        "categories": images["categories"],
        "panoptic": {
            name_of[a["image_id"]]: {k: v for k, v in a.items() if k != "image_id"}
            for a in panoptic["annotations"]
        },
        "instance": instances,
        "files": files,
        "leftovers": sorted(p.name for p in folder.iterdir() if p.name == "parts"),
    }


def test_two_processes_write_the_files_of_one(tmp_path, data, one_process):
    one = one_process("inference")
    result = _command("inference", tmp_path / "two", data)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two" / "inference"
    expected = _outputs(one)
    assert len(expected["images"]) == NUM_IMAGES and expected["instance"]
    assert _outputs(two) == expected
    for name in ("images.json", "panoptic.json", "instance.json"):  # ids included
        assert (two / name).read_text() == (one / name).read_text(), name
    kpi = _status(two)[-1]["kpi"]
    assert (kpi["segmented"], kpi["already_done"], kpi["processes"]) == (NUM_IMAGES, 0, 2)


def test_a_lost_process_fails_inference_and_the_rerun_does_what_is_missing(
    tmp_path, data, one_process
):
    run = tmp_path / "run"
    killed = _command("inference", run, data, fault="1:1")
    assert killed.returncode == 1
    line = _one_line(killed)
    assert "process 1 of 2 exited" in line and "images still missing" in line, line
    folder = run / "inference"
    assert _status(folder)[-1]["status"] == "FAILURE"
    assert not (folder / "parts").exists()  # what finished was merged by rank 0
    kept = json.loads((folder / "images.json").read_text())["images"]
    assert 0 < len(kept) < NUM_IMAGES

    rerun = _command("inference", run, data)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    kpi = _status(folder)[-1]["kpi"]
    assert kpi["already_done"] == len(kept)
    assert kpi["segmented"] == NUM_IMAGES - len(kept)
    for entry in kept:  # images done before keep their ids
        assert any(e == entry for e in json.loads((folder / "images.json").read_text())["images"])
    assert _outputs(folder) == _outputs(one_process("inference"))


def test_strided_shards_merged_score_as_one_evaluator(synth_data):
    """The merge of per-process states, with numbers that a lost, repeated or reordered image
    would change: thing labels moved to the next class (PQ things 0, PQ stuff 100, AP low)."""
    from oneseg.engine.evaluator import Evaluator
    from tests.engine.test_evaluator import TASKS as ALL
    from tests.engine.test_evaluator import _batches, _rotated_things_model, _val_set, add

    dataset, label_map = _val_set(synth_data)
    model = _rotated_things_model(dataset, label_map)
    batches = _batches(dataset, batch_size=1)
    whole = Evaluator(dataset, label_map, tasks=ALL)
    for batch in batches:
        add(whole, model, label_map, batch)
    shards = []
    for rank in range(3):  # 4 images on 3 processes: shares 2, 1, 1
        part = Evaluator(dataset, label_map, tasks=ALL)
        for index in strided_shard(len(batches), rank, 3):
            add(part, model, label_map, batches[index])
        shards.append(part.images)
    merged = Evaluator(dataset, label_map, tasks=ALL)
    merged.images = merge_shards(shards[::-1], len(dataset))
    expected, got = whole.compute(gather=False), merged.compute(gather=False)
    assert expected["pq_st"] > 0 and 0 < expected["ap"] < 100 and 0 < expected["miou"] < 100
    _assert_equal_numbers(got, expected)


def _write_part(folder: Path, names: list[str]) -> None:
    """A part folder as a process writes it: its own ids 1.., instance results only."""
    folder.mkdir(parents=True)
    images = [
        {"id": i, "name": n, "tasks": ["instance"], "file_name": f"{n}.jpg", "height": 4}
        for i, n in enumerate(names, 1)
    ]
    found = [{"image_id": i, "category_id": 1, "score": 0.5} for i in range(1, len(names) + 1)]
    (folder / "instance.json").write_text(json.dumps(found))
    (folder / "images.json").write_text(json.dumps({"images": images, "categories": []}))


def test_parts_merge_in_listing_order_and_merging_again_changes_nothing(tmp_path, synth_data):
    from oneseg.data.label_map import LabelMap
    from oneseg.engine.inference_outputs import InferenceOutputs, merge_parts

    label_map = LabelMap.from_json(synth_data["label_map"])
    _write_part(tmp_path / "parts" / "rank00000", ["a", "c"])
    _write_part(tmp_path / "parts" / "rank00001", ["b"])
    torn = tmp_path / "parts" / "rank00002"  # stopped mid-flush: no images.json, not done
    _write_part(torn, ["d"])
    (torn / "images.json").unlink()

    def merged() -> InferenceOutputs:
        outputs = InferenceOutputs(tmp_path, label_map, ["instance"], False, "category")
        merge_parts(outputs, {"a": 0, "b": 1, "c": 2, "d": 3})
        return outputs

    outputs = merged()
    assert {name: e["id"] for name, e in outputs.images.items()} == {"a": 1, "b": 2, "c": 3}
    assert [r["image_id"] for r in json.loads((tmp_path / "instance.json").read_text())] == [
        1,
        2,
        3,
    ]
    assert not (tmp_path / "parts").exists()
    assert outputs.is_done("b") and not outputs.is_done("d")
    before = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    _write_part(tmp_path / "parts" / "rank00000", ["c"])  # a merge repeated after a crash
    merged()
    assert {p.name: p.read_text() for p in tmp_path.glob("*.json")} == before
