"""The two contenders of the speed benchmarks, at identical weights.

transformers' `OneFormerForUniversalSegmentation` at the published Swin-T layout (150 queries,
6-layer deformable encoder, 9 decoder layers, 150 classes) is built with random weights, saved
as a transformers folder, and converted to oneseg by the project's own converter, so both
networks hold the same numbers. Also: one random batch of training targets both can read, and
timing of the parts of a forward by module hooks.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

NUM_LABELS = 150
SEED = 0


def hf_config(is_training: bool):
    from transformers import OneFormerConfig

    id2label = {i: f"class{i}" for i in range(NUM_LABELS)}
    return OneFormerConfig(
        num_labels=NUM_LABELS, id2label=id2label, is_training=is_training, dropout=0.1
    )


def write_hf_folder(folder: Path) -> Path:
    """A random-weight transformers OneFormer (text branch included) saved in `folder`."""
    from transformers import OneFormerForUniversalSegmentation

    if not (folder / "config.json").is_file():
        torch.manual_seed(SEED)
        OneFormerForUniversalSegmentation(hf_config(is_training=True)).save_pretrained(folder)
    return folder


def load_hf(folder: Path, training: bool):
    from transformers import OneFormerForUniversalSegmentation

    model = OneFormerForUniversalSegmentation.from_pretrained(folder, is_training=training)
    return model.train(training)


def load_ours(folder: Path, training: bool):
    from oneseg.checkpoint import read_checkpoint
    from oneseg.model.build import build_model

    model_cfg, label_map, state = read_checkpoint(folder)
    model = build_model(model_cfg, num_classes=len(label_map))
    model.load_state_dict(state)
    return model.train(training), model_cfg


def task_inputs(batch: int, task: str = "panoptic") -> torch.Tensor:
    from oneseg.tokenizer import task_text, tokenize

    return tokenize([task_text(task)] * batch)


def training_targets(batch: int, size: int, seed: int = 1) -> dict:
    """Random rectangles of random classes, their text lists and task tokens: one batch."""
    from oneseg.tokenizer import text_list, tokenize

    gen = torch.Generator().manual_seed(seed)
    masks, labels, texts = [], [], []
    n_text = hf_config(False).num_queries - hf_config(False).text_encoder_n_ctx
    for _ in range(batch):
        count = 6
        image_masks = torch.zeros(count, size, size)
        for i in range(count):
            y0, x0 = torch.randint(0, size // 2, (2,), generator=gen).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=gen).tolist()
            image_masks[i, y0 : y0 + h, x0 : x0 + w] = 1
        classes = torch.randperm(NUM_LABELS, generator=gen)[:count]
        masks.append(image_masks)
        labels.append(classes)
        texts.append(
            tokenize(text_list([f"class{c}" for c in classes.tolist()], "panoptic", n_text))
        )
    return {
        "images": torch.randn(batch, 3, size, size, generator=gen),
        "masks": masks,
        "labels": labels,
        "texts": torch.stack(texts),
        "task_tokens": task_inputs(batch),
    }


class PartTimer:
    """Wall time of named submodules' forwards, by pre- and post-forward hooks."""

    def __init__(self, parts: dict[str, torch.nn.Module]):
        self.times: dict[str, list[float]] = {name: [] for name in parts}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in parts.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.times[name].append(time.perf_counter() - self._start.pop(name))

        return hook

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.times.items() if v}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def hf_parts(model) -> dict[str, torch.nn.Module]:
    inner = model.model
    return {
        "backbone": inner.pixel_level_module.encoder,
        "pixel decoder": inner.pixel_level_module.decoder,
        "decoder": inner.transformer_module,
    }


def our_parts(model) -> dict[str, torch.nn.Module]:
    return {
        "backbone": model.backbone,
        "pixel decoder": model.pixel_decoder,
        "decoder": model.decoder,
    }
