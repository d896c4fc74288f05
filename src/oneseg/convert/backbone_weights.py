"""ImageNet backbone weights as `train.pretrained_backbone`, whichever repository wrote them.

- the official Swin (microsoft/Swin-Transformer) and ConvNeXt (facebookresearch/ConvNeXt) `.pth`
  files, the ones TAO links: renamed to timm's names as timm's own `checkpoint_filter_fn` does
  (Swin merges patches at the end of stage i where timm does at the start of stage i+1; the
  relative position index and attention-mask buffers are rebuilt, not loaded);
- timm classifier checkpoints and our own backbone state dicts (`oneseg.model.backbone`);
- the original DiNAT classifiers (SHI-Labs), and OneFormer's converted DiNAT files with a
  `backbone.` prefix: our DiNAT keeps their names.

The classifier head and final norm are dropped; the per-stage output norms, which no ImageNet
file has, keep their initial values. Anything else missing or left over is one error listing it.
Files are read weights-only.
"""

from __future__ import annotations

import re
from pathlib import Path

from oneseg.convert.safe_load import read_weights_only, unwrap_state_dict
from oneseg.model.backbone import Backbone, load_backbone_state
from oneseg.model.dinat import DiNAT

_BUFFERS = ("relative_position_index", "attn_mask")


def official_to_timm(state: dict) -> dict:
    """Official Swin / ConvNeXt classifier names -> timm classifier names (others unchanged)."""
    if "layers.0.downsample.reduction.weight" in state:  # Swin: merge at the end of a stage
        return {
            re.sub(
                r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", k
            ): v
            for k, v in state.items()
            if not k.endswith(_BUFFERS)
        }
    if "downsample_layers.0.0.weight" in state:  # ConvNeXt
        renamed = {}
        for key, value in state.items():
            key = key.replace("downsample_layers.0.", "stem.")
            key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
            key = re.sub(r"^downsample_layers\.(\d+)\.(\d+)\.", r"stages.\1.downsample.\2.", key)
            key = key.replace("dwconv", "conv_dw").replace("pwconv", "mlp.fc")
            renamed[key] = value
        return renamed
    return state


def load_pretrained_backbone(backbone: Backbone | DiNAT, path: str | Path) -> int:
    """Load an ImageNet (or our own) backbone file into `backbone`; returns the tensors loaded."""
    if isinstance(path, str) and path.startswith("hf-hub:"):
        state = _timm_hub_weights(path)
    else:
        path = Path(path)
        state = unwrap_state_dict(read_weights_only(path), str(path))
    if isinstance(backbone, DiNAT):
        return _load_dinat(backbone, state, str(path))
    return load_backbone_state(backbone, official_to_timm(state), str(path))


def _load_dinat(backbone: DiNAT, state: dict, origin: str) -> int:
    if any(k.startswith("backbone.") for k in state):  # OneFormer's converted DiNAT files
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    out_norms = re.compile(r"norm\d\.(weight|bias)")
    missing = [k for k in own if k not in state and not out_norms.fullmatch(k)]
    unexpected = [
        k
        for k in state
        if k not in own and not k.startswith(("head.", "norm.")) and not k.endswith(_BUFFERS)
    ]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{origin}: weights do not fit backbone dinat: missing {missing[:10]} "
            f"({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)}), "
            f"wrong shapes {wrong[:10]} ({len(wrong)})"
        )
    loaded = {k: state[k] for k in own if k in state}
    backbone.load_state_dict(loaded, strict=False)
    return len(loaded)


def _timm_hub_weights(name: str) -> dict:
    """The state dict of timm's `hf-hub:ORG/NAME[@REVISION]` (a timm model repository: its
    model.safetensors, else pytorch_model.bin), fetched through `oneseg.hub`."""
    from timm.models._hub import hf_split  # timm's own reading of the name and revision

    from oneseg.hub import HubError, download_file

    repo_id, revision = hf_split(name[len("hf-hub:") :])
    try:
        from safetensors.torch import load_file

        return load_file(str(download_file(repo_id, "model.safetensors", revision)))
    except HubError as err:
        if "has no model.safetensors" not in str(err):
            raise
    return unwrap_state_dict(
        read_weights_only(download_file(repo_id, "pytorch_model.bin", revision)), name
    )
