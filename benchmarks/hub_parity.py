"""Parity figures and error lines of the hub features, against a loopback hub (no internet).

    PYTHONPATH=src:. python benchmarks/hub_parity.py

Prints the largest absolute difference of class and mask logits (all three tasks for OneFormer)
between oneseg and transformers at identical weights for: a OneFormer (Swin) and a Mask2Former
loaded by hub name, the `convert --to-hf` round trip (transformers -> oneseg -> transformers),
and `push` (oneseg -> hub -> hf:// -> oneseg, and the pushed folder in transformers); then the
one-line message of each failure case. Uses the tiny random models of tests/convert/tiny_hf.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path

import torch
from transformers import Mask2FormerForUniversalSegmentation, OneFormerForUniversalSegmentation

from oneseg import cli
from oneseg.checkpoint import convert_to_hf, load_model
from oneseg.tokenizer import task_text, tokenize
from tests.convert.tiny_hf import save_folder, tiny_mask2former, tiny_oneformer
from tests.loopback_hub import LoopbackHub

PIXELS = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
TASKS = ("semantic", "instance", "panoptic")


def logits(model, task=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits, mask logits) of oneseg's model or transformers' on PIXELS."""
    tokens = tokenize([task_text(task)] * len(PIXELS)) if task else None
    with torch.no_grad():
        if hasattr(model, "config"):  # transformers
            out = model(pixel_values=PIXELS, task_inputs=tokens) if task else model(PIXELS)
            return out.class_queries_logits, out.masks_queries_logits
        out = model(PIXELS, tokens) if task else model(PIXELS)
        return out["pred_logits"], out["pred_masks"]


def diff(a, b, task=None) -> float:
    return max((x - y).abs().max().item() for x, y in zip(logits(a, task), logits(b, task)))


def worst(ours, theirs, oneformer: bool) -> float:
    return max(diff(ours, theirs, t) for t in TASKS) if oneformer else diff(ours, theirs)


def one_line(argv) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return f"exit {code}: {err.getvalue().strip()}"


def main() -> None:
    root = Path(tempfile.mkdtemp())
    os.environ.update(HF_HUB_CACHE=str(root / "cache"), HF_HOME=str(root / "home"),
                      HF_HUB_DISABLE_PROGRESS_BARS="1")  # fmt: skip
    hub = LoopbackHub(write_token="hf_writer")
    os.environ["HF_ENDPOINT"] = hub.url
    of, m2f = tiny_oneformer("swin", seed=0), tiny_mask2former(seed=1, hidden_dim=48)
    hub.add_commit("shi-labs/oneformer_tiny", save_folder(of, root / "of"))
    hub.add_commit("facebook/mask2former-tiny-coco-panoptic", save_folder(m2f, root / "m2f"))
    rows = []
    ours = load_model("hf://shi-labs/oneformer_tiny").model
    rows.append(("hub OneFormer (Swin), 3 tasks", worst(ours, of, True)))
    ours = load_model("hf://facebook/mask2former-tiny-coco-panoptic").model
    rows.append(("hub Mask2Former (Swin)", worst(ours, m2f, False)))
    # transformers' DiNAT needs NATTEN: its neighbourhood attention is run by ours, as in tests
    import transformers.models.dinat.modeling_dinat as md

    from tests.convert.test_hf_dinat import attention_forward

    md.requires_backends = lambda *args, **kwargs: None
    md.NeighborhoodAttention.forward = attention_forward
    dinat = tiny_oneformer("dinat", seed=2)
    hub.add_commit("shi-labs/oneformer_tiny_dinat", save_folder(dinat, root / "dinat"))
    ours = load_model("hf://shi-labs/oneformer_tiny_dinat").model
    rows.append(("hub OneFormer (DiNAT), 3 tasks", worst(ours, dinat, True)))
    for name, hf, cls, oneformer in (
        ("of", of, OneFormerForUniversalSegmentation, True),
        ("m2f", m2f, Mask2FormerForUniversalSegmentation, False),
    ):
        back = cls.from_pretrained(convert_to_hf(root / name, root / f"{name}_back")).eval()
        ours = load_model(root / name).model
        rows.append((f"--to-hf {name}: transformers vs original", worst(back, hf, oneformer)))
        rows.append((f"--to-hf {name}: transformers vs oneseg", worst(ours, back, oneformer)))
    ckpt = root / "of.ckpt"
    cli.main(["convert", "--from-hf", str(root / "of"), "--out", str(ckpt)])
    (root / "spec.yaml").write_text(f"results_dir: {root / 'results'}\n")
    os.environ["HF_TOKEN"] = "hf_writer"
    one_line(["push", "-e", str(root / "spec.yaml"), f"push.checkpoint={ckpt}",
              "push.repo_id=acme/pushed"])  # fmt: skip
    del os.environ["HF_TOKEN"]
    pushed = load_model("hf://acme/pushed").model
    rows.append(("push: hf:// vs checkpoint (oneseg)", worst(pushed, load_model(ckpt).model, 1)))
    pushed_folder = root / "results" / "push" / "hub"
    back = OneFormerForUniversalSegmentation.from_pretrained(pushed_folder).eval()
    rows.append(("push: transformers vs oneseg", worst(load_model(ckpt).model, back, True)))
    print("| case | max abs diff (logits) |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.2e} |")

    print("\nerror lines:")
    out = ["--out", str(root / "x.ckpt")]
    hub.add_commit("acme/gated", root / "of")
    hub.repos["acme/gated"].gated_token = "hf_reader"
    detr = json.loads((root / "m2f" / "config.json").read_text())
    detr.update(model_type="detr", architectures=["DetrForObjectDetection"])
    (root / "detr").mkdir()
    (root / "detr" / "config.json").write_text(json.dumps(detr))
    hub.add_commit("facebook/detr-resnet-50", root / "detr")
    for label, argv in (
        ("not found", ["convert", "--from-hf", "acme/nope", *out]),
        ("gated, no token", ["convert", "--from-hf", "acme/gated", *out]),
        ("revision", ["convert", "--from-hf", "shi-labs/oneformer_tiny@v9", *out]),
        ("other model type", ["convert", "--from-hf", "facebook/detr-resnet-50", *out]),
        ("push, no token", ["push", "-e", str(root / "spec.yaml"), f"push.checkpoint={ckpt}",
                            "push.repo_id=acme/pushed"]),
    ):  # fmt: skip
        print(f"- {label}: {one_line(argv)}")
    hub.cut["model.safetensors"] = 100
    hub.add_commit("acme/broken", root / "of")
    import huggingface_hub.utils._http as hub_http

    hub_http.time.sleep = lambda seconds: None  # skip the backoff waits of the retries
    print(f"- broken transfer: {one_line(['convert', '--from-hf', 'acme/broken', *out])}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
    print(f"- no network, not cached: {one_line(['convert', '--from-hf', 'acme/other', *out])}")
    line = one_line(["convert", "--from-hf", "shi-labs/oneformer_tiny@v2", *out])
    print(f"- no network, cache holds main: {line}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    print(f"- offline, not cached: {one_line(['convert', '--from-hf', 'acme/other', *out])}")
    print(
        f"- offline, cached: {one_line(['convert', '--from-hf', 'shi-labs/oneformer_tiny', *out])}"
    )
    hub.close()


if __name__ == "__main__":
    main()
