import pytest
import torch

from freenet.pseudo_labels import body_part_mask, feedback_mask
from freenet.schedules import cosine_with_warmup, feedback_factor, topk_rate


def test_spec_section8_values():
    assert topk_rate(1000, 9000, 0.5) == pytest.approx(0.969846, abs=1e-6)
    assert topk_rate(3000, 9000, 0.5) == pytest.approx(0.75)
    assert topk_rate(4500, 9000, 0.6) == pytest.approx(0.6)
    assert cosine_with_warmup(450, 900, 45000) == pytest.approx(0.5)
    assert cosine_with_warmup(899, 900, 45000) == pytest.approx(0.998889, abs=1e-6)
    assert cosine_with_warmup(22950, 900, 45000) == pytest.approx(0.5)
    assert feedback_factor(4500, 4500, 6000, 2) == pytest.approx(0.001333, abs=1e-6)
    assert feedback_factor(5249, 4500, 6000, 2) == pytest.approx(1.0)
    assert feedback_factor(5999, 4500, 6000, 2) == pytest.approx(2.0)
    assert feedback_factor(9000, 4500, 6000, 2) == pytest.approx(2.0)


def test_schedule_edges():
    assert cosine_with_warmup(10, 900, 45000, wait_steps=20) == 0.0          # student waiting
    assert cosine_with_warmup(20, 900, 45000, wait_steps=20) == pytest.approx(20 / 920)
    assert cosine_with_warmup(0, 900, 45000) == 0.0
    assert cosine_with_warmup(45000, 900, 45000) == pytest.approx(0.0, abs=1e-12)
    assert topk_rate(-5, 9000, 0.5) == 1.0 and topk_rate(20000, 9000, 0.5) == 0.5


CONF = torch.tensor([[0.9, 0.5, 0.3, 0.99],
                     [0.7, 0.1, 0.25, 0.99]])
GROUPS = [[0, 1], [2]]             # joint 3 belongs to no group


def mask_at(conf, groups, ratios, step, rampdown_steps):
    """body_part_mask at a step of the keep-ratio ramp (§7.1, §8)."""
    return body_part_mask(conf, groups, ratios, topk_rate(step, rampdown_steps, 0.0))


def test_body_part_mask_at_start_keeps_all_above_floor():
    m = mask_at(CONF, GROUPS, [0.5, 0.4], 0, 100)
    # r = 1 -> rank n-1 = the lowest value; face threshold max(0.1, 0.2) = 0.2, back threshold 0.25
    assert m.tolist() == [[1, 1, 1, 0], [1, 0, 1, 0]]


def test_body_part_mask_after_rampdown_and_ties():
    m = mask_at(CONF, GROUPS, [0.5, 0.4], 100, 100)
    # face: sorted [0.9, 0.7, 0.5, 0.1], rank int(4 * 0.5) = 2 -> 0.5 (tie kept)
    # back: sorted [0.3, 0.25], rank int(2 * 0.4) = 0 -> 0.3
    assert m.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_body_part_mask_floor_always_applies():
    low = torch.full((2, 3), 0.15)
    assert mask_at(low, [[0, 1, 2]], [0.5], 0, 10).sum() == 0
    high = torch.full((2, 3), 0.2)
    assert mask_at(high, [[0, 1, 2]], [0.5], 0, 10).sum() == 6


def test_feedback_mask_band():
    t = torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    s = torch.tensor([[0.99, 0.95, 0.85, 0.5, 0.4, 0.3, 0.25, 0.22, 0.15, 0.05]])
    # N = 10: i_good = 2, i_bad = 8; good = max(0.8, 0.85) = 0.85, bad = min(0.2, 0.15) = 0.15
    assert feedback_mask(t, s).tolist() == [[0, 0, 1, 1, 1, 1, 1, 1, 1, 0]]
    # ties at both bounds are inside the band
    s2 = torch.tensor([[0.0] * 10])
    s2[0, :3] = torch.tensor([0.3, 0.3, 0.3])
    m = feedback_mask(t, s2)    # good = max(0.8, 0.3) = 0.8, bad = min(0.2, 0.0) = 0.0
    assert m.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]]


def test_selection_is_batched_over_the_whole_batch():
    """Thresholds pool every sample of the batch (not per sample)."""
    conf = torch.tensor([[0.9, 0.9], [0.3, 0.3]])
    m = mask_at(conf, [[0, 1]], [0.25], 10, 10)
    assert m.tolist() == [[1, 1], [0, 0]]      # rank int(4 * 0.25) = 1 of [0.9, 0.9, 0.3, 0.3]


def test_body_part_mask_groups_of_different_sizes_and_ungrouped_joints():
    """Per-group ranks (n = B·|g| differs per group), joints in no group never kept, no group at all."""
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.95],
                         [0.5, 0.4, 0.3, 0.25, 0.99]])
    # group A = joints 0-2 (n = 6, rate 0.5 -> rank 3 of [.9 .8 .7 .5 .4 .3] = 0.5);
    # group B = joint 3 (n = 2, rate 0.5 -> rank 1 of [.6 .25] = 0.25); joint 4 in no group
    m = mask_at(conf, [[0, 1, 2], [3]], [0.5, 0.5], 10, 10)
    assert m.tolist() == [[1, 1, 1, 1, 0], [1, 0, 0, 1, 0]]
    assert mask_at(conf, [], [], 0, 10).sum() == 0
