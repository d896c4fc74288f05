"""CLIP token ids: ours (open_clip's vocabulary) equal transformers' CLIPTokenizer built offline
from the same vocabulary and merges files."""

import json

import pytest

from oneseg.tokenizer import FILLER_TEXT, task_text, text_list, tokenize

NAMES = ["person", "traffic light", "potted-plant", "wall-other-merged", "tv", "hair drier"]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    ours = SimpleTokenizer()
    folder = tmp_path_factory.mktemp("clip_vocab")
    # open_clip names the special tokens <start_of_text>/<end_of_text>; CLIP's own files
    # (and CLIPTokenizer) call them <|startoftext|>/<|endoftext|>, at the same ids
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): index for token, index in ours.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(ours.bpe_ranks, key=ours.bpe_ranks.get)
    lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def test_ids_equal_clip_tokenizer(clip_tokenizer):
    texts = [task_text(t) for t in ("semantic", "instance", "panoptic")]
    texts += text_list(NAMES, "panoptic", len(NAMES)) + list(FILLER_TEXT.values())
    ids = tokenize(texts, context_length=77)
    for text, row in zip(texts, ids):
        reference = clip_tokenizer(text)["input_ids"]
        assert row[: len(reference)].tolist() == reference, text
        assert (row[len(reference) :] == 0).all(), text  # zero padding, as the original


def test_long_text_is_cut_and_still_ends_with_end_of_text():
    ids = tokenize("word " * 100, context_length=16)
    assert ids.shape == (1, 16)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407


def test_text_list_pads_with_the_task_filler():
    assert text_list(["cat"], "instance", 3) == [
        "a photo with a cat",
        "an instance photo",
        "an instance photo",
    ]
    assert text_list(["cat", "dog"], "semantic", 1) == ["a photo with a cat"]
