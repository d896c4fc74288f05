"""`oneseg push`: publish a model on the Hugging Face Hub.

Writes `results_dir/push/hub/`: the transformers folder of `oneseg convert --to-hf`
(config.json, model.safetensors, preprocessor_config.json, oneseg.json), the label map
(label_map.json), the metrics of `oneseg evaluate` (metrics.json, if given or found), a model
card (README.md, `oneseg.model_card`) and, if named, exported ONNX files with their .json
sidecars under onnx/. Then, unless `push.dry_run`, creates the repository if it is missing
(`push.private`) and uploads the folder as one commit with `huggingface_hub` (token: HF_TOKEN or
a stored login; endpoint: HF_ENDPOINT). What is pushed loads back through `hf://ORG/NAME`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from oneseg.hub import REPO_ID, endpoint, hub_errors
from oneseg.io import read_json, write_json_atomic
from oneseg.spec import SpecError


def _metrics(spec) -> tuple[dict | None, Path | None]:
    given = spec.push.metrics_file
    path = Path(given) if given else Path(spec.results_dir) / "evaluate" / "metrics.json"
    if not path.is_file():
        return None, None
    return read_json(path), path


def _onnx_files(files: list[str]) -> list[tuple[Path, Path | None]]:
    """(ONNX file, its sidecar or None) for each name; a missing file is a spec error."""
    out = []
    for i, name in enumerate(files):
        path = Path(name)
        if not path.is_file():
            raise SpecError(f"push.onnx_files[{i}]: got {name!r}, no such file")
        sidecar = path.with_suffix(".json")
        out.append((path, sidecar if sidecar.is_file() else None))
    return out


def write_push_folder(spec, folder: Path) -> dict:
    """Write the folder to publish; returns what was written (for status.json)."""
    from oneseg.checkpoint import read_checkpoint, read_checkpoint_contents
    from oneseg.convert.to_hf import write_hf_folder
    from oneseg.model_card import model_card

    cfg = spec.push
    source = cfg.checkpoint or spec.model.pretrained
    onnx = _onnx_files(cfg.onnx_files)
    metrics, metrics_path = _metrics(spec)
    shutil.rmtree(folder, ignore_errors=True)  # ours: rewritten by each push
    contents = read_checkpoint_contents(source)
    intensity = contents.intensity
    write_hf_folder(*contents[:3], folder, intensity=intensity)
    model_cfg, label_map, _ = read_checkpoint(folder)  # as it will load back
    write_json_atomic(folder / "label_map.json", label_map.to_categories())
    if metrics is not None:
        shutil.copyfile(metrics_path, folder / "metrics.json")
    if onnx:
        (folder / "onnx").mkdir()
        for path, sidecar in onnx:
            shutil.copyfile(path, folder / "onnx" / path.name)
            if sidecar is not None:
                shutil.copyfile(sidecar, folder / "onnx" / sidecar.name)
    names = [path.name for path, _ in onnx]
    card = model_card(cfg.repo_id, model_cfg, label_map, spec, metrics, intensity, names)
    (folder / "README.md").write_text(card)
    return {
        "folder": str(folder),
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
        "metrics": str(metrics_path) if metrics_path else "",
        "arch": model_cfg.arch,
        "backbone": model_cfg.backbone,
    }


def upload(spec, folder: Path, written: dict) -> str:
    """Create the repository if missing and upload `folder` as one commit; the commit URL."""
    from huggingface_hub import HfApi

    cfg = spec.push
    message = cfg.commit_message or f"oneseg push: {written['arch']} {written['backbone']}"
    with hub_errors(cfg.repo_id, None, write=True):
        api = HfApi(endpoint=endpoint(), library_name="oneseg")
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        info = api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=str(folder),
            revision=cfg.revision,
            commit_message=message,
        )
    return str(getattr(info, "commit_url", info))


def run_push(spec, run) -> None:
    cfg = spec.push
    if not REPO_ID.fullmatch(cfg.repo_id):
        raise SpecError(f"push.repo_id: got {cfg.repo_id!r}; expected ORG/NAME")
    if not (cfg.checkpoint or spec.model.pretrained):
        raise SpecError("push.checkpoint is empty (and model.pretrained too): name the model")
    folder = run.dir / "hub"
    written = write_push_folder(spec, folder)
    run.log("RUNNING", f"wrote {folder}", files=written["files"])
    run.kpis["files"] = len(written["files"])
    if cfg.dry_run:
        print(f"push: dry run; the folder to publish is {folder}")
        print(json.dumps(written["files"]))
        return
    url = upload(spec, folder, written)
    run.kpis["commit"] = url
    print(f"push: {cfg.repo_id} on {endpoint()}: {url}")
