"""Checkpoints: what a model needs to be rebuilt anywhere, and loading from every source.

A oneseg checkpoint is a dict of plain types (loadable with `torch.load(weights_only=True)`):
`{"format": "oneseg", "version": 1, "model_cfg": {...}, "label_map": [categories],
"state_dict": {...}}`. Training checkpoints are Lightning's, with the same three entries added
under "oneseg"; `load_model` reads both, a transformers OneFormer or Mask2Former folder (local,
or `hf://ORG/NAME[@REVISION]` on the Hugging Face Hub, see `oneseg.hub`), and original
(detectron2) or TAO OneFormer/Mask2Former files (`oneseg.convert.detectron2`), told apart by their
content and always read weights-only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch

from oneseg.config import ModelConfig
from oneseg.convert.detectron2 import is_detectron2_layout, load_detectron2, strip_tao_prefix
from oneseg.convert.hf import check_model_type, load_hf_folder, oneseg_extras
from oneseg.convert.safe_load import read_weights_only, unwrap_state_dict
from oneseg.data.label_map import LabelMap
from oneseg.errors import CheckpointError
from oneseg.hub import download_file, download_model, split_source
from oneseg.io import write_atomic
from oneseg.model.build import build_model
from oneseg.spec import section_from_dict


def model_cfg_from_dict(values: dict) -> ModelConfig:
    return section_from_dict(ModelConfig, values, "model")


def make_checkpoint(
    model_cfg: ModelConfig, label_map: LabelMap, state_dict: dict, intensity: dict | None = None
) -> dict:
    """`intensity`: the rule that turned >8-bit training images into 0-255 (see
    `oneseg.data.intensity`), kept so evaluation, inference and export apply the same one."""
    ckpt = {
        "format": "oneseg",
        "version": 1,
        "model_cfg": dataclasses.asdict(model_cfg),
        "label_map": label_map.to_categories(),
        "state_dict": state_dict,
    }
    if intensity:
        ckpt["intensity"] = dict(intensity)
    return ckpt


def read_intensity(path: str | Path) -> dict | None:
    """The intensity rule a checkpoint recorded at training, or None (older checkpoints,
    transformers folders). Memory-maps the file: no tensor is read."""
    hub = split_source(path)
    if hub is not None and hub.filename:  # one file of a hub repository
        path = download_file(hub.repo_id, hub.filename, hub.revision)
    elif hub is not None or Path(path).is_dir():  # a transformers folder: in oneseg.json, if any
        folder = download_model(hub.repo_id, hub.revision) if hub is not None else Path(path)
        return oneseg_extras(folder).get("intensity")
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read_checkpoint reports an unreadable file
        return None
    if not isinstance(ckpt, dict):
        return None
    meta = ckpt.get("oneseg", ckpt)
    return meta.get("intensity") if isinstance(meta, dict) else None


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def convert_checkpoint(
    source: str | Path, out_file: str | Path, task_text: str | None = None
) -> Path:
    """Write a oneseg checkpoint (torch.save of plain types) of any source `read_checkpoint`
    reads: a transformers folder or hub name, a Lightning or a oneseg checkpoint, an original or
    TAO file. task_text: the OneFormer task prompt the weights were trained with, recorded in
    the checkpoint where the source does not say it (NV-OneFormer: 'This task is {task}.')."""
    contents = read_checkpoint_contents(source)
    model_cfg = contents.model_cfg
    if task_text is not None:
        if model_cfg.arch != "oneformer" or "{task}" not in task_text:
            raise CheckpointError(
                f"--task-text {task_text!r}: a OneFormer's prompt, with {{task}} where the task "
                f"goes (this model is a {model_cfg.arch})"
            )
        model_cfg = dataclasses.replace(model_cfg, task_text=task_text)
    ckpt = make_checkpoint(model_cfg, contents.label_map, contents.state_dict, contents.intensity)
    save_atomic(ckpt, out_file)
    return Path(out_file)


def convert_to_hf(source: str | Path, out: str | Path) -> Path:
    """Write any source `read_checkpoint` reads as a transformers folder (`oneseg convert
    --to-hf`), with its intensity rule in oneseg.json; see `oneseg.convert.to_hf`."""
    from oneseg.convert.to_hf import write_hf_folder  # imported on use: needs transformers

    contents = read_checkpoint_contents(source)
    return write_hf_folder(*contents[:3], out, intensity=contents.intensity)


# Keys renamed since checkpoints were first written: (old prefix, new prefix).
RENAMED_KEYS = (
    ("decoder.query_transformer.", "decoder.query_init.query_transformer."),
    ("decoder.query_input_proj.", "decoder.query_init.query_input_proj."),
    ("decoder.query_feat.", "decoder.query_init.query_feat."),
)


def upgrade_keys(state_dict: dict) -> dict:
    """The state dict with keys of older oneseg versions renamed to today's."""
    out = {}
    for key, value in state_dict.items():
        for old, new in RENAMED_KEYS:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _folder_contents(folder: Path, name: str | None) -> CheckpointContents:
    """A transformers folder (local or a hub snapshot); the intensity rule from oneseg.json."""
    values, state_dict, categories = load_hf_folder(folder, name=name)
    intensity = oneseg_extras(folder).get("intensity")
    return CheckpointContents(
        model_cfg_from_dict(values), LabelMap.from_categories(categories), state_dict, intensity
    )


class CheckpointContents(NamedTuple):
    model_cfg: ModelConfig
    label_map: LabelMap
    state_dict: dict
    intensity: dict | None  # the intensity rule recorded at training, if any


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, LabelMap, dict]:
    """(model config, label map, model state dict) of a oneseg, Lightning or transformers source,
    or of an original (detectron2) or TAO OneFormer/Mask2Former file, told apart by content."""
    return read_checkpoint_contents(path)[:3]


def read_checkpoint_contents(path: str | Path) -> CheckpointContents:
    """What `read_checkpoint` reads, and the recorded intensity rule, from one read of the
    file."""
    hub = split_source(path)
    if hub is not None and hub.filename:  # hf://ORG/NAME[@REVISION]/FILE: read as a local file
        path = download_file(hub.repo_id, hub.filename, hub.revision)
    elif hub is not None:  # hf://ORG/NAME[@REVISION]: the snapshot folder in the hub's cache
        check = lambda config: check_model_type(config, str(path))  # noqa: E731
        return _folder_contents(download_model(hub.repo_id, hub.revision, check), hub.repo_id)
    path = Path(path)
    if path.is_dir():
        return _folder_contents(path, None)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = read_weights_only(path)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {reason}); only plain "
            "tensors and types are loaded (weights_only)"
        ) from None
    if isinstance(ckpt, dict) and "oneseg" in ckpt:  # a Lightning training checkpoint
        meta = ckpt["oneseg"]
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        return CheckpointContents(
            model_cfg_from_dict(meta["model_cfg"]),
            LabelMap.from_categories(meta["label_map"]),
            upgrade_keys(state),
            meta.get("intensity"),
        )
    if isinstance(ckpt, dict) and ckpt.get("format") == "oneseg":
        return CheckpointContents(
            model_cfg_from_dict(ckpt["model_cfg"]),
            LabelMap.from_categories(ckpt["label_map"]),
            upgrade_keys(ckpt["state_dict"]),
            ckpt.get("intensity"),
        )
    original = _original_layout_state(ckpt)
    if original is not None:  # detectron2 OneFormer/Mask2Former, or TAO's Lightning file
        values, state_dict, categories = load_detectron2(original, str(path))
        return CheckpointContents(
            model_cfg_from_dict(values), LabelMap.from_categories(categories), state_dict, None
        )
    raise CheckpointError(
        f"{path}: not a oneseg checkpoint (no 'format: oneseg' or Lightning entry) nor an original "
        "OneFormer/Mask2Former or TAO one (no backbone.* and sem_seg_head.predictor.* tensors)"
    )


def _original_layout_state(ckpt) -> dict | None:
    try:
        state = strip_tao_prefix(unwrap_state_dict(ckpt, ""))
    except ValueError:
        return None
    return state if is_detectron2_layout(state) else None


class LoadedModel(NamedTuple):
    model: torch.nn.Module  # in eval mode, on the device asked for
    label_map: LabelMap
    model_cfg: ModelConfig  # as saved: its thresholds are those chosen for the model


class OpenedCheckpoint(NamedTuple):
    model: torch.nn.Module  # in eval mode, on the device asked for
    label_map: LabelMap
    model_cfg: ModelConfig
    intensity: dict | None  # the intensity rule recorded at training, if any


def open_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> OpenedCheckpoint:
    """The one way to load a model: the model rebuilt from any source `read_checkpoint` reads
    (oneseg, Lightning, transformers folder, original or TAO file), its label map, config and
    recorded intensity rule, from one read of the file."""
    model_cfg, label_map, state_dict, intensity = read_checkpoint_contents(path)
    model = build_model(model_cfg, num_classes=len(label_map))
    load_state_dict_strict(model, state_dict, str(path))
    return OpenedCheckpoint(model.to(device).eval(), label_map, model_cfg, intensity)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """(model, label map, model config) of `open_checkpoint`."""
    return LoadedModel(*open_checkpoint(path, device)[:3])


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load every tensor; otherwise one error listing the missing and unexpected keys, or the
    tensors whose shapes differ (weights of another class count or width)."""
    own = model.state_dict()
    differ = [
        k for k, v in state_dict.items() if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    if differ:
        first = differ[0]
        raise CheckpointError(
            f"{source}: weights of another model: {len(differ)} tensors differ in shape, e.g. "
            f"{first} {tuple(state_dict[first].shape)} here, {tuple(own[first].shape)} in the "
            "model the spec describes (class count, widths or layers differ); use matching "
            "model settings, or train.pretrained_model to load only the tensors that fit"
        )
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: weights do not fit the model: missing {sorted(result.missing_keys)[:20]}"
            f" ({len(result.missing_keys)}), unexpected {sorted(result.unexpected_keys)[:20]}"
            f" ({len(result.unexpected_keys)})"
        )
