"""TAO's quantize override set with s3:// URLs: the ONNX model (`quantize.model_path`), the
calibration images (an images.tar.gz) and dataset.val, all read from an S3 server on 127.0.0.1."""

from __future__ import annotations

import json

from s3_server import tao_data_sources

from oneseg.cli import main

pytest_plugins = ("s3_server",)  # the fixtures s3, s3_env, tao_bucket


def test_tao_quantize_override_set_with_s3_urls(tmp_path, s3_env, tao_bucket, tiny_checkpoint):
    onnx = tmp_path / "model.onnx"
    export = [
        "export",
        f"results_dir={tmp_path / 'export'}",
        f"export.checkpoint={tiny_checkpoint}",
        f"export.onnx_file={onnx}",
        "export.task=panoptic",
        "export.batch_size=1",
        "export.input_height=64",
        "export.input_width=64",
    ]
    assert main(export) == 0
    tao_bucket.upload_file(str(onnx), "data", "models/model.onnx")
    quantize = [
        "quantize",
        f"results_dir={tmp_path / 'results'}",
        "quantize.model_path=s3://data/models/model.onnx",
        *tao_data_sources(),
        "dataset.quant_calibration_dataset.images_dir=s3://data/val/images.tar.gz",
        "quantize.num_calib_images=2",
        "quantize.report_images=2",
        "quantize.latency_runs=1",
        "dataset.augmentation.eval_min_size=64",
        "dataset.workers=0",
    ]
    assert main(quantize) == 0
    folder = tmp_path / "results" / "quantize"
    assert (folder / "model_int8.onnx").is_file()
    report = json.loads((folder / "quantize_report.json").read_text())
    assert report["int8"]["val_images"] == 2 and 0 <= report["int8"]["pq"] <= 100
    status = json.loads((folder / "status.json").read_text().splitlines()[-1])
    # the model, the label map, val's three files; calibration shares val's images archive URL
    assert status["status"] == "SUCCESS" and status["kpi"]["downloaded_files"] == 5
