"""Point sampling and Hungarian matching: hand cases, invariants, and the transformers reference."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from oneseg.model.matcher import HungarianMatcher, pairwise_dice, pairwise_sigmoid_ce
from oneseg.model.point_sampling import point_sample, sample_uncertain_points


def _inputs(seed=0, batch=2, queries=7, classes=4, counts=(3, 2), size=(16, 16)):
    """Random predictions at stride 4 and boolean targets at the padded input size, made of
    4x4 blocks so that a stride-4 prediction can match them exactly."""
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=g),
        "pred_masks": torch.randn(batch, queries, size[0] // 4, size[1] // 4, generator=g),
    }
    targets = [
        {
            "labels": torch.randint(classes, (n,), generator=g),
            "masks": (torch.rand(n, size[0] // 4, size[1] // 4, generator=g) > 0.5)
            .repeat_interleave(4, 1)
            .repeat_interleave(4, 2),
        }
        for n in counts
    ]
    return outputs, targets


def test_point_sample_reads_pixel_centres_and_interpolates():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]  # [1, 1, 2, 2]
    # Pixel centres of a 2x2 map are at 0.25 and 0.75; (x, y) order.
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]])
    values = point_sample(image, coords)
    assert values.shape == (1, 1, 4)
    torch.testing.assert_close(values[0, 0], torch.tensor([1.0, 2.0, 3.0, 2.5]))


def test_uncertain_points_lie_where_the_logit_is_near_zero():
    torch.manual_seed(0)
    logits = torch.full((3, 1, 8, 8), 10.0)
    logits[..., :4] = 0.0  # uncertain left half
    coords = sample_uncertain_points(logits, 20, oversample_ratio=5.0, importance_sample_ratio=1.0)
    assert coords.shape == (3, 20, 2)
    assert (coords[..., 0] < 0.5).all()

    mixed = sample_uncertain_points(logits, 20, oversample_ratio=3.0, importance_sample_ratio=0.5)
    assert mixed.shape == (3, 20, 2) and ((mixed >= 0) & (mixed <= 1)).all()


def test_uncertain_points_with_no_masks():
    coords = sample_uncertain_points(torch.zeros(0, 1, 4, 4), 10, 3.0, 0.75)
    assert coords.shape == (0, 10, 2)


def test_pairwise_costs_equal_per_pair_losses():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 30), (torch.rand(3, 30) > 0.5).float()
    ce, dice = pairwise_sigmoid_ce(logits, targets), pairwise_dice(logits, targets)
    for q, n in itertools.product(range(5), range(3)):
        expected_ce = F.binary_cross_entropy_with_logits(logits[q], targets[n])
        p = logits[q].sigmoid()
        expected_dice = 1 - (2 * (p * targets[n]).sum() + 1) / (p.sum() + targets[n].sum() + 1)
        torch.testing.assert_close(ce[q, n], expected_ce)
        torch.testing.assert_close(dice[q, n], expected_dice)


def test_empty_targets_give_empty_indices():
    outputs, targets = _inputs(counts=(0, 2))
    indices = HungarianMatcher(num_points=64)(outputs, targets)
    assert indices[0][0].shape == (0,) and indices[0][0].dtype == torch.int64
    assert len(indices[1][0]) == 2 and indices[1][0].dtype == torch.int64


def test_planted_assignment_is_recovered():
    outputs, targets = _inputs(counts=(3, 2))
    planted = [torch.tensor([5, 0, 2]), torch.tensor([1, 6])]
    for b, (target, queries) in enumerate(zip(targets, planted)):
        small = F.interpolate(target["masks"][None].float(), scale_factor=0.25)[0]
        outputs["pred_masks"][b, queries] = 20 * small - 10
        outputs["pred_logits"][b, queries, target["labels"]] = 10.0
    indices = HungarianMatcher(2, 5, 5, num_points=256)(outputs, targets)
    for (pred_idx, tgt_idx), queries in zip(indices, planted):
        assert dict(zip(tgt_idx.tolist(), pred_idx.tolist())) == dict(enumerate(queries.tolist()))


def test_matching_is_invariant_to_target_order():
    outputs, targets = _inputs(seed=3, counts=(4, 3))
    matcher = HungarianMatcher(2, 5, 5, num_points=128)
    torch.manual_seed(0)
    indices = matcher(outputs, targets)
    perms = [torch.randperm(len(t["labels"])) for t in targets]
    permuted = [{k: t[k][p] for k in ("labels", "masks")} for t, p in zip(targets, perms)]
    torch.manual_seed(0)
    permuted_indices = matcher(outputs, permuted)
    for (pred_idx, tgt_idx), (p_pred_idx, p_tgt_idx), perm in zip(indices, permuted_indices, perms):
        assert torch.equal(pred_idx, p_pred_idx)
        # Permuted target k is original target perm[k].
        assert torch.equal(tgt_idx, perm[p_tgt_idx])


def test_batched_matching_equals_per_image_matching():
    outputs, targets = _inputs(seed=4, counts=(3, 5))
    matcher = HungarianMatcher(2, 5, 5, num_points=64)
    torch.manual_seed(0)
    batched = matcher(outputs, targets)
    torch.manual_seed(0)
    for b in range(2):
        # One point draw per image, in order: the per-image calls follow the same stream.
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, targets[b : b + 1])
        assert all(torch.equal(x, y) for x, y in zip(single[0], batched[b]))


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_matching_under_autocast_is_computed_in_float32(device):
    # the cost matrices, not only the assignments: an assignment can survive a bfloat16 cost
    # matrix (off by ~1e-2) while the costs cannot
    outputs, targets = _inputs(seed=5, size=(32, 32))
    low = {k: v.bfloat16().to(device) for k, v in outputs.items()}
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    matcher = HungarianMatcher(2, 5, 5, num_points=256)
    coords = torch.rand(1, 256, 2, generator=torch.Generator().manual_seed(0)).to(device)
    for b, target in enumerate(targets):
        args = (target["labels"], target["masks"], coords)
        logits, masks = low["pred_logits"][b], low["pred_masks"][b]
        with torch.autocast(device, dtype=torch.bfloat16):
            under_autocast = matcher._cost_matrix(logits, masks, *args)
        in_fp32 = matcher._cost_matrix(logits.float(), masks.float(), *args)
        assert under_autocast.dtype == torch.float32
        torch.testing.assert_close(under_autocast, in_fp32, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    with torch.autocast(device, dtype=torch.bfloat16):
        matched = matcher(low, targets)
    torch.manual_seed(0)
    expected = matcher({k: v.float() for k, v in low.items()}, targets)
    for x, y in zip(matched, expected):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_all_zero_costs_are_refused():
    with pytest.raises(ValueError):
        HungarianMatcher(0, 0, 0)


def test_same_matches_and_costs_as_transformers():
    modeling = pytest.importorskip("transformers.models.oneformer.modeling_oneformer")
    logits, targets = torch.randn(6, 40), (torch.rand(4, 40) > 0.5).float()
    torch.testing.assert_close(
        pairwise_sigmoid_ce(logits, targets),
        modeling.pair_wise_sigmoid_cross_entropy_loss(logits, targets),
    )
    torch.testing.assert_close(
        pairwise_dice(logits, targets), modeling.pair_wise_dice_loss(logits, targets)
    )
    reference = modeling.OneFormerHungarianMatcher(2.0, 5.0, 5.0, num_points=96)
    ours = HungarianMatcher(2.0, 5.0, 5.0, num_points=96)
    for seed in range(5):
        outputs, targets = _inputs(seed=seed, counts=(4, 6), queries=9)
        torch.manual_seed(seed)
        expected = reference(
            outputs["pred_masks"],
            outputs["pred_logits"],
            [t["masks"].float() for t in targets],
            [t["labels"] for t in targets],
        )
        torch.manual_seed(seed)
        for a, b in zip(ours(outputs, targets), expected):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
