import torch

from oneseg.data.collate import Collator, padded_size


def _sample(h, w, content, n, task="panoptic"):
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    if n:
        masks[:, : content[0], : content[1]] = True
    return {
        "image": torch.full((3, h, w), 7, dtype=torch.uint8),
        "masks": masks,
        "labels": torch.arange(n),
        "ignore_mask": torch.zeros(h, w, dtype=torch.bool),
        "task": task,
        "task_tokens": torch.full((77,), 1),
        "text_tokens": torch.full((5, 77), 2),
        "image_id": f"{h}x{w}",
        "file_name": "x.jpg",
        "orig_size": (100, 120),
        "image_size": content,
    }


def test_padded_size_rounds_up():
    assert padded_size([(30, 50), (45, 20)], 32) == (64, 64)
    assert padded_size([(64, 33)], 32) == (64, 64)
    assert padded_size([(5, 7)], 1) == (5, 7)


def test_collate_pads_images_masks_and_marks_real_pixels():
    # the second sample has large-scale-jitter padding: 40x40 image, 30x25 content
    batch = Collator(32)([_sample(33, 50, (33, 50), 2), _sample(40, 40, (30, 25), 0, "semantic")])
    assert batch["images"].shape == (2, 3, 64, 64) and batch["images"].dtype == torch.uint8
    assert batch["images"][0, :, :33, :50].eq(7).all() and batch["images"][0, :, 33:].eq(0).all()
    mask = batch["pixel_mask"]
    assert mask.shape == (2, 64, 64) and mask.dtype == torch.bool
    assert mask[0, :33, :50].all() and mask[0].sum() == 33 * 50
    assert mask[1, :30, :25].all() and mask[1].sum() == 30 * 25
    first, second = batch["targets"]
    assert first["masks"].shape == (2, 64, 64) and first["masks"].sum() == 2 * 33 * 50
    assert second["masks"].shape == (0, 64, 64) and second["labels"].shape == (0,)
    assert not first["ignore_mask"][:33, :50].any() and first["ignore_mask"][33:].all()
    assert batch["task_tokens"].shape == (2, 77) and batch["text_tokens"].shape == (2, 5, 77)
    assert batch["tasks"] == ["panoptic", "semantic"]
    assert batch["image_ids"] == ["33x50", "40x40"]
    assert batch["image_sizes"] == [(33, 50), (30, 25)] and batch["orig_sizes"][0] == (100, 120)
