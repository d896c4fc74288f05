"""Data, checkpoints and images named by s3:// URLs, read from an S3 server on 127.0.0.1.

The synthetic set is uploaded as TAO's OneFormer page lays a dataset out (images.tar.gz,
annotations.json, images_panoptic.tar.gz, label_map.json), and TAO's override set, written with
those URLs, trains (one step), evaluates and segments; a second run downloads nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from s3_server import tao_data_sources

from oneseg.cli import main
from oneseg.config import LossConfig
from oneseg.local_inputs import localize
from oneseg.remote import RemoteError, fetch
from oneseg.spec import spec_from_dict

pytest_plugins = ("s3_server",)  # the fixtures s3, s3_env, tao_bucket


def _tao_overrides(eval_split: str = "s3://data/val") -> list[str]:
    """The data sources of TAO's OneFormer override set, with s3:// URLs."""
    return [
        *tao_data_sources(eval_split),
        "dataset.contiguous_id=True",
        "train.precision=32",
        "train.num_gpus=1",
    ]


def _spec_file(tmp_path, tiny_model_cfg, classes: int):
    model = dataclasses.asdict(
        dataclasses.replace(tiny_model_cfg, loss=LossConfig(train_num_points=64))
    )
    del model["num_classes"]  # given in TAO's words by the override set
    spec = {
        "results_dir": str(tmp_path / "results"),
        "model": {**model, "sem_seg_head": {"num_classes": classes}},
        "dataset": {
            "batch_size": 2,
            "workers": 0,
            "augmentation": {"train_min_size": [64], "crop_size": [64, 64], "eval_min_size": 64},
        },
        "train": {"num_epochs": 1, "max_steps": 1, "monitor": "loss"},
        "evaluate": {"tasks": ["panoptic", "semantic"]},
        "inference": {"tasks": ["panoptic"], "overlay": False},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _last_status(folder) -> dict:
    return json.loads((folder / "status.json").read_text().splitlines()[-1])


def test_tao_override_set_with_s3_urls_trains_evaluates_and_infers(
    tmp_path, s3_env, tao_bucket, synth_data, tiny_model_cfg, capsys
):
    classes = len(json.loads(synth_data["label_map"].read_text()))
    spec = _spec_file(tmp_path, tiny_model_cfg, classes)
    tao = _tao_overrides()
    assert main(["train", "-e", str(spec), *tao]) == 0, capsys.readouterr().err
    results = tmp_path / "results"
    status = _last_status(results / "train")
    assert status["status"] == "SUCCESS" and status["kpi"]["steps"] == 1
    assert status["kpi"]["downloaded_files"] == 7  # 3 + 3 files, the label map
    saved = yaml.safe_load((results / "train" / "experiment.yaml").read_text())
    assert saved["dataset"]["train"][0]["images"] == "s3://data/train/images.tar.gz"

    checkpoint = (results / "train" / "model_latest.ckpt").resolve()
    tao_bucket.upload_file(str(checkpoint), "data", "models/model.ckpt")
    model_url = "s3://data/models/model.ckpt"
    got = main(["evaluate", "-e", str(spec), *tao, f"evaluate.checkpoint={model_url}"])
    assert got == 0, capsys.readouterr().err
    metrics = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert "pq" in json.dumps(metrics).lower()
    assert _last_status(results / "evaluate")["kpi"]["downloaded_files"] == 1  # the checkpoint

    infer = [
        f"inference.checkpoint={model_url}",
        "inference.images_dir=s3://data/val/images.tar.gz",
    ]
    assert main(["inference", "-e", str(spec), *tao, *infer]) == 0, capsys.readouterr().err
    names = sorted(p.name for p in synth_data["val"]["images"].iterdir())
    coco = json.loads((results / "inference" / "panoptic.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == names

    # a second run reads everything from the cache: not one object is downloaded
    before = len(s3_env.requests)
    assert main(["evaluate", "-e", str(spec), *tao, f"evaluate.checkpoint={model_url}"]) == 0
    # one metadata request per URL (label map, val's three files, the checkpoint), no download
    assert sorted(m for m, _ in s3_env.requests[before:]) == ["HEAD"] * 5
    assert _last_status(results / "evaluate")["kpi"]["downloaded_files"] == 0


LABELS = "s3://data/train/label_map.json"  # the first URL the spec's inputs read


@pytest.mark.parametrize(
    "url, env, named, expected",
    [
        ("s3://nobucket/train/annotations.json", {}, None, "no such bucket"),
        ("s3://data/train/nothing.json", {}, None, "no such key"),
        (None, {"AWS_SECRET_ACCESS_KEY": "wrong"}, LABELS, "access denied"),
        (None, {"AWS_ACCESS_KEY_ID": "AKIANOTKNOWN00000000"}, LABELS, "access denied"),
        (
            None,
            {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
            LABELS,
            "no network",
        ),
    ],
)
def test_a_url_that_cannot_be_read_is_one_line_naming_it(
    tmp_path,
    s3_env,
    tao_bucket,
    synth_data,
    tiny_model_cfg,
    capsys,
    monkeypatch,
    url,
    env,
    named,
    expected,
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    classes = len(json.loads(synth_data["label_map"].read_text()))
    spec = _spec_file(tmp_path, tiny_model_cfg, classes)
    bad = [f"dataset.train.annotations={url}"] if url else []
    code = main(["train", "-e", str(spec), *_tao_overrides(), *bad])
    # a TAO spec's overrides also print how the spec was read (one line of its own)
    err = [e for e in capsys.readouterr().err.strip().splitlines() if "TAO spec" not in e]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"oneseg: error: {named or url}: {expected}"), err[0]
    for secret in ("wrong", s3_env.secret_key):
        assert secret not in err[0]


def test_missing_package_of_a_scheme_is_named(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_gcsfs(name, *args, **kwargs):
        if name.startswith("gcsfs"):
            raise ImportError("No module named 'gcsfs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_gcsfs)
    with pytest.raises(RemoteError, match=r"gs://b/x\.json: reading gs:// needs the gcsfs package"):
        fetch("gs://b/x.json", tmp_path)


def test_folder_glob_and_list_urls_and_a_changed_object(tmp_path, s3_env, tao_bucket, synth_data):
    images = sorted(synth_data["val"]["images"].iterdir())
    for path in images:
        tao_bucket.upload_file(str(path), "data", f"loose/{path.name}")
    lines = "".join(f"{p.name}\n" for p in images[:2]) + f"s3://data/loose/{images[3].name}\n"
    tao_bucket.put_object(Bucket="data", Key="loose/list.txt", Body=lines.encode())
    cache = tmp_path / "cache"
    folder = fetch("s3://data/loose/", cache)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        [p.name for p in images] + ["list.txt"]
    )
    pattern = fetch(f"s3://data/loose/*{images[0].suffix}", cache)
    assert sorted(p.name for p in pattern.parent.glob(pattern.name)) == [p.name for p in images]

    spec = spec_from_dict({"results_dir": str(tmp_path / "r")})
    spec = dataclasses.replace(
        spec, inference=dataclasses.replace(spec.inference, images="s3://data/loose/list.txt")
    )
    listed = localize(spec, "inference").inference.images
    local = [l for l in open(listed).read().splitlines()]
    assert [p.split("/")[-1] for p in local] == [images[0].name, images[1].name, images[3].name]
    assert all(open(p, "rb").read() == q.read_bytes() for p, q in zip(local, images[:2]))

    # a changed object is downloaded again, an unchanged one is not
    counts = []
    tao_bucket.put_object(Bucket="data", Key=f"loose/{images[0].name}", Body=b"changed")
    fetch("s3://data/loose/", cache, lambda url, n: counts.append(n))
    assert counts == [1] and (folder / images[0].name).read_bytes() == b"changed"
    tao_bucket.delete_object(Bucket="data", Key=f"loose/{images[1].name}")
    fetch("s3://data/loose/", cache, lambda url, n: counts.append(n))
    assert counts == [1, 0] and not (folder / images[1].name).exists()


def test_calibration_and_inference_archives_are_unpacked(tmp_path, s3_env, tao_bucket, synth_data):
    spec = spec_from_dict(
        {
            "results_dir": str(tmp_path / "r"),
            "quantize": {"onnx_file": "model.onnx"},
            "dataset": {"quant_calibration_dataset": {"images_dir": "s3://data/val/images.tar.gz"}},
        }
    )
    folder = localize(spec, "quantize").dataset.quant_calibration_dataset.images_dir
    names = sorted(p.name for p in synth_data["val"]["images"].iterdir())
    assert sorted(p.name for p in (tmp_path / "r" / "cache").glob("images-*/images/*")) == names
    assert (
        folder.endswith("/images")
        and sorted(p.name for p in __import__("pathlib").Path(folder).iterdir()) == names
    )


def test_an_output_given_as_url_is_refused(tmp_path, capsys):
    code = main(["export", f"results_dir={tmp_path}", "export.onnx_file=s3://data/model.onnx"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(
        "oneseg: spec error: export.onnx_file: got 's3://data/model.onnx'"
    )


def test_https_style_urls_through_a_local_web_server(tmp_path, synth_data):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(synth_data["root"]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://user:secret@127.0.0.1:{server.server_port}"
    try:
        counts = []
        url = f"{base}/label_map.json?signature=SECRET"
        first = fetch(url, tmp_path, lambda u, n: counts.append((u, n)))
        assert first.read_bytes() == synth_data["label_map"].read_bytes()
        assert fetch(url, tmp_path, lambda u, n: counts.append((u, n))) == first
        shown = f"http://127.0.0.1:{server.server_port}/label_map.json"
        assert counts == [(shown, 1), (shown, 0)]  # the second time from the cache
        with pytest.raises(RemoteError) as err:
            fetch(f"{base}/nothing.json?signature=SECRET", tmp_path)
        assert str(err.value) == (
            f"http://127.0.0.1:{server.server_port}/nothing.json: no such file on the server"
        )
    finally:
        server.shutdown()


def test_data_check_reads_the_urls(tmp_path, s3_env, tao_bucket, capsys):
    tao = [o for o in _tao_overrides() if o.startswith("dataset.") and "contiguous" not in o]
    assert main(["data", "check", "--json", f"results_dir={tmp_path}", *tao]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == {"train": 2, "val": 4} and report["errors"] == 0
