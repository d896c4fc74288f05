"""CLIP BPE tokenization of task and text prompts.

The ids are CLIP's (open_clip ships the BPE vocabulary, so nothing is downloaded). Sequences are
`<start_of_text> ... <end_of_text>` padded with 0 to the context length, as the original OneFormer
tokenizer pads them: the task MLP reads the raw ids as numbers, so the pad value is part of what
the published weights were trained with.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# The original OneFormer's prompt (CLIP's tokenizer lowercases, so "The" and "the" give the same
# ids); NV-OneFormer was trained with "This task is {task}.". `model.task_text` chooses.
TASK_TEMPLATE = "The task is {task}"
TEXT_TEMPLATE = "a photo with a {name}"
FILLER_TEXT = {
    "semantic": "a semantic photo",
    "instance": "an instance photo",
    "panoptic": "a panoptic photo",
}


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts: str | list[str], context_length: int = 77) -> torch.Tensor:
    """Token ids of each text, [len(texts), context_length] int64 (a str gives one row).

    A text longer than the context is cut and still ends with `<end_of_text>`.
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = _tokenizer()
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    ids = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [sot, *tok.encode(text), eot][:context_length]
        tokens[-1] = eot
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids


def task_text(task: str, template: str = TASK_TEMPLATE) -> str:
    """The task prompt: `template` with {task} replaced."""
    if "{task}" not in template:
        raise ValueError(f"task text template {template!r} has no {{task}}")
    return template.replace("{task}", task)


def text_list(class_names: list[str], task: str, length: int) -> list[str]:
    """The contrastive text list of one sample: one entry per target mask, padded with the
    task's filler text to `length` entries (cut if there are more masks than entries)."""
    texts = [TEXT_TEMPLATE.format(name=name) for name in class_names][:length]
    return texts + [FILLER_TEXT[task]] * (length - len(texts))
