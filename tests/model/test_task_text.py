"""model.task_text: the task prompt whose token ids the task MLP reads, kept in checkpoints."""

import dataclasses

import pytest
import torch

from oneseg.checkpoint import load_model, make_checkpoint, read_checkpoint, save_atomic
from oneseg.data.build import build_dataset
from oneseg.data.label_map import LabelMap
from oneseg.model.build import build_model
from oneseg.spec import SpecError, spec_from_dict
from oneseg.tokenizer import TASK_TEMPLATE, task_text, tokenize

NV_ONEFORMER = "This task is {task}."


def test_default_is_the_original_prompt_and_nv_oneformer_differs():
    assert task_text("semantic") == "The task is semantic"
    assert task_text("panoptic", NV_ONEFORMER) == "This task is panoptic."
    # CLIP's tokenizer lowercases: the same ids as transformers' "the task is {task}"
    assert torch.equal(tokenize("The task is instance"), tokenize("the task is instance"))
    original, nv = tokenize(task_text("instance")), tokenize(task_text("instance", NV_ONEFORMER))
    assert not torch.equal(original, nv)
    assert (original != 0).sum() == 6 and (nv != 0).sum() == 7  # sot 4 words eot / + "."


def test_dataset_task_token_rows_follow_the_template(synth_data):
    spec = spec_from_dict(
        {
            "dataset": {
                "train": {
                    "images": str(synth_data["train"]["images"]),
                    "annotations": str(synth_data["train"]["panoptic_json"]),
                    "panoptic": str(synth_data["train"]["panoptic"]),
                },
                "label_map": str(synth_data["label_map"]),
            }
        }
    )
    label_map = LabelMap.from_json(synth_data["label_map"])

    def rows(template):
        dataset = build_dataset(
            spec.dataset,
            "train",
            label_map,
            4,
            32,
            train=False,
            task="semantic",
            task_text=template,
        )
        return dataset[0]["task_tokens"]

    assert torch.equal(rows(TASK_TEMPLATE), tokenize("The task is semantic")[0])
    assert torch.equal(rows(NV_ONEFORMER), tokenize("This task is semantic.")[0])


def test_the_template_changes_the_task_token_and_the_outputs(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, num_classes=3).eval()
    nv_cfg = dataclasses.replace(tiny_model_cfg, task_text=NV_ONEFORMER)
    nv_model = build_model(nv_cfg, num_classes=3).eval()
    nv_model.load_state_dict(model.state_dict())  # same weights, other prompt
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    original = model.predict(images).outputs["panoptic"]["pred_logits"]
    nv = nv_model.predict(images).outputs["panoptic"]["pred_logits"]
    assert not torch.allclose(original, nv)
    assert torch.equal(nv_model.task_token_ids[2], tokenize("This task is panoptic.")[0])


def test_checkpoints_carry_the_template_and_old_ones_get_the_default(tmp_path, tiny_model_cfg):
    label_map = LabelMap.from_categories(
        [{"id": i + 1, "name": f"c{i}", "isthing": 1} for i in range(3)]
    )
    cfg = dataclasses.replace(tiny_model_cfg, task_text=NV_ONEFORMER)
    model = build_model(cfg, num_classes=3)
    path = tmp_path / "nv.pth"
    save_atomic(make_checkpoint(cfg, label_map, model.state_dict()), path)
    assert read_checkpoint(path)[0].task_text == NV_ONEFORMER
    assert load_model(path)[0].task_text == NV_ONEFORMER

    old = make_checkpoint(cfg, label_map, model.state_dict())
    del old["model_cfg"]["task_text"]  # written before the key existed
    save_atomic(old, tmp_path / "old.pth")
    assert read_checkpoint(tmp_path / "old.pth")[0].task_text == "The task is {task}"
    assert load_model(tmp_path / "old.pth")[0].task_text == "The task is {task}"


def test_a_template_without_the_task_is_refused():
    with pytest.raises(
        SpecError,
        match=r"model.task_text: got 'The task', expected a string "
        r"containing \{task\}",
    ):
        spec_from_dict({"model": {"task_text": "The task"}})


def test_exports_bake_the_model_template_and_record_it(tiny_model_cfg):
    from oneseg.export.onnx_export import ExportSettings, build_graph, describe

    label_map = LabelMap.from_categories(
        [{"id": i + 1, "name": f"c{i}", "isthing": 1} for i in range(3)]
    )
    cfg = dataclasses.replace(tiny_model_cfg, task_text=NV_ONEFORMER)
    model = build_model(cfg, num_classes=3).eval()
    settings = ExportSettings(task="semantic", height=64, width=64)
    graph = build_graph(model, label_map, settings, cfg.task_seq_len)
    expected = tokenize("This task is semantic.", cfg.task_seq_len).float()
    torch.testing.assert_close(graph.task_tokens, expected)
    assert describe(graph, label_map, settings, model)["task_text"] == NV_ONEFORMER
