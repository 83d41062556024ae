import math

import numpy as np
import pytest
import torch

from freenet.heatmaps import argmax_keypoints, encode_keypoints, peak_values, refine_quarter_offset, render_gaussians
from freenet.losses import weighted_heatmap_mse


def g(d2, sigma=2.0):
    return math.exp(-d2 / (2 * sigma ** 2))


# ---------------------------------------------------------------- encode_keypoints (SPEC §5.1)

def test_encode_hand_values():
    hm, valid = encode_keypoints(np.array([[10.0, 20.0]]), np.array([2.0]))
    assert hm.shape == (1, 64, 64) and hm.dtype == np.float32
    assert valid.tolist() == [1.0]
    # centre (int(10/4 + .5), int(20/4 + .5)) = (3, 5); heatmap indexed [y, x]
    assert hm[0, 5, 3] == pytest.approx(1.0)
    assert hm[0, 5, 4] == pytest.approx(g(1))
    assert hm[0, 7, 5] == pytest.approx(g(8))
    assert hm[0, 5, 9] == pytest.approx(g(36))   # dx = 6: inside the 13x13 window
    assert hm[0, 5, 10] == 0.0                   # dx = 7: outside the window (truncated)
    assert hm[0, 12, 3] == 0.0
    assert np.count_nonzero(hm[0]) == 10 * 12     # window clipped to columns 0..9 and rows 0..11


def test_encode_border_and_invisible():
    kps = np.array([[-28.0, 5.0],   # centre x = int(-7 + .5) = -6 (toward zero): br = 0, touches column 0
                    [-30.0, 5.0],   # centre x = -7: window -13..-1, br = -1 < 0 -> not valid
                    [5.0, -30.0],   # the same in y
                    [276.0, 5.0],   # centre x = 69: ul = 63 -> touches the last column
                    [278.0, 5.0],   # centre x = 70: ul = 64 > 63 -> not valid
                    [40.0, 40.0]])  # invisible
    vis = np.array([1, 1, 1, 1, 1, 0], dtype=np.float32)
    hm, valid = encode_keypoints(kps, vis)
    assert valid.tolist() == [1, 0, 0, 1, 0, 0]
    assert hm[0, 1, 0] == pytest.approx(g(36)) and hm[0, 1, 1] == 0.0
    assert hm[3, 1, 63] == pytest.approx(g(36))
    assert hm[1].sum() == hm[2].sum() == hm[4].sum() == hm[5].sum() == 0.0
    # a valid joint always has its window's border row or column on the map
    assert all(hm[j].max() > 0 for j in np.flatnonzero(valid))


def test_encode_half_visibility_threshold():
    _, valid = encode_keypoints(np.array([[8.0, 8.0], [8.0, 8.0]]), np.array([0.5, 0.49]))
    assert valid.tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- render_gaussians (SPEC §5.2)

def test_render_untruncated_and_normalised():
    coords = torch.tensor([[[10.0, 20.0], [10.5, 20.0]]])
    out = render_gaussians(coords, torch.ones(1, 2))
    assert out.shape == (1, 2, 64, 64)
    assert out[0, 0, 20, 10] == pytest.approx(1.0)
    assert out[0, 0, 20, 11] == pytest.approx(g(1))
    assert out[0, 0, 20, 17] == pytest.approx(g(49), rel=1e-4)  # beyond 3 sigma: not truncated
    assert out[0, 0, 29, 10] > 0
    # fractional centre: the two nearest pixels share the maximum, which is divided out to 1.0
    assert out[0, 1, 20, 10] == pytest.approx(1.0) and out[0, 1, 20, 11] == pytest.approx(1.0)
    assert out[0, 1, 20, 12] == pytest.approx(g(1.5 ** 2) / g(0.25), rel=1e-5)


def test_render_window_rule_and_mask():
    coords = torch.tensor([[[-0.5, 3.0], [-6.5, 3.0], [-7.0, 3.0], [69.5, 3.0], [70.0, 3.0], [30.0, 30.0]]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    out = render_gaussians(coords, mask)
    assert out[0, 0, 3, 0] == pytest.approx(1.0)      # centre just outside: border pixel is the max
    assert out[0, 1, 3, 0] == pytest.approx(1.0)      # br.x = int(-0.5) = 0 (toward zero): still drawn
    assert out[0, 2].abs().sum() == 0                 # br.x = -1: skipped
    assert out[0, 3, 3, 63] == pytest.approx(1.0)     # ul.x = int(63.5) = 63
    assert out[0, 4].abs().sum() == 0                 # ul.x = 64 > 63
    assert out[0, 5].abs().sum() == 0                 # masked out
    assert torch.isfinite(out).all()


def test_render_matches_encode_at_integer_centres():
    """At integer centres inside the map the pseudo label equals the GT target inside the window."""
    xy = torch.tensor([[[12.0, 30.0], [40.0, 7.0]]])
    pl = render_gaussians(xy, torch.ones(1, 2))[0].numpy()
    gt, _ = encode_keypoints(xy[0].numpy() * 4, np.ones(2))
    window = gt > 0
    np.testing.assert_allclose(pl[window], gt[window], rtol=1e-5)


# ---------------------------------------------------------------- argmax / decode (SPEC §5.3, §11.4)

def test_argmax_and_non_positive_peaks():
    hm = torch.zeros(1, 3, 8, 10)
    hm[0, 0, 2, 5] = 0.7
    hm[0, 1] = -1.0
    hm[0, 1, 4, 4] = -0.5        # max is negative -> (0, 0)
    coords, maxvals = argmax_keypoints(hm)
    assert coords[0, 0].tolist() == [5.0, 2.0] and maxvals[0, 0] == pytest.approx(0.7)
    assert coords[0, 1].tolist() == [0.0, 0.0] and maxvals[0, 1] == pytest.approx(-0.5)
    assert coords[0, 2].tolist() == [0.0, 0.0] and maxvals[0, 2] == 0.0


def test_half_precision_maps_decode_as_their_float32_copies():
    """The peak is found in the maps' own dtype: fp16 maps (AMP) give the float32 result, ties
    resolved to the first position as in float32."""
    g = torch.Generator().manual_seed(3)
    hm = (torch.rand(4, 5, 8, 10, generator=g) * 8).round() / 8 - 0.25    # few values: many ties
    coords16, max16 = argmax_keypoints(hm.half())
    coords32, max32 = argmax_keypoints(hm)
    assert max16.dtype == coords16.dtype == torch.float32
    assert torch.equal(coords16, coords32) and torch.equal(max16, max32)
    assert torch.equal(peak_values(hm.half()), max32)
    flat = hm.flatten(2)
    first = (flat == flat.amax(-1, keepdim=True)).float().argmax(-1)       # first maximum
    assert torch.equal(coords32[..., 0] + 10 * coords32[..., 1], (first * (max32 > 0)).float())


def test_encode_argmax_round_trip():
    rng = np.random.default_rng(0)
    kps = rng.uniform(0, 252, size=(24, 2))  # centres stay inside the 64x64 map
    hm, valid = encode_keypoints(kps, np.ones(24))
    coords, maxvals = argmax_keypoints(torch.from_numpy(hm)[None])
    expected = np.trunc(kps / 4 + 0.5)
    np.testing.assert_array_equal(coords[0].numpy(), expected)
    assert torch.all(maxvals == 1.0)


def test_quarter_offset():
    hm = torch.zeros(1, 3, 64, 64)
    hm[0, 0, 10, 20] = 1.0
    hm[0, 0, 10, 21] = 0.5        # right neighbour higher -> +0.25 in x
    hm[0, 0, 9, 20] = 0.3         # upper neighbour higher -> -0.25 in y
    hm[0, 1, 1, 1] = 1.0
    hm[0, 1, 1, 2] = 0.5          # x = 1 is not > 1: no refinement
    hm[0, 2, 30, 62] = 1.0
    hm[0, 2, 30, 63] = 0.5        # x = 62 = W - 2 is < 63: refined
    coords, _ = argmax_keypoints(hm)
    out = refine_quarter_offset(hm, coords)
    assert out[0, 0].tolist() == [20.25, 9.75]
    assert out[0, 1].tolist() == [1.0, 1.0]
    assert out[0, 2].tolist() == [62.25, 30.0]


def test_argmax_zero_peak_is_not_positive():
    """Coordinates are (0, 0) where the peak is <= 0, a peak of exactly 0 included."""
    hm = torch.full((1, 1, 8, 10), -1.0)
    hm[0, 0, 4, 6] = 0.0          # the maximum, away from (0, 0) so a kept argmax would show
    coords, maxvals = argmax_keypoints(hm)
    assert coords[0, 0].tolist() == [0.0, 0.0] and maxvals[0, 0] == 0.0


def test_quarter_offset_strict_bounds_at_the_far_edges():
    """Refined only where 1 < x < W-1 and 1 < y < H-1: on a 64 map 62 is refined, 63 is not."""
    hm = torch.zeros(1, 3, 64, 64)
    hm[0, 0, 30, 63] = 1.0
    hm[0, 0, 30, 62] = 0.5        # x = 63 = W - 1: left alone (a gather there would move it)
    hm[0, 1, 63, 30] = 1.0
    hm[0, 1, 62, 30] = 0.5        # y = 63 = H - 1: the same in y
    hm[0, 2, 62, 30] = 1.0
    hm[0, 2, 63, 30] = 0.5        # y = 62 = H - 2 < 63: refined toward the lower neighbour
    coords, _ = argmax_keypoints(hm)
    out = refine_quarter_offset(hm, coords)
    assert out[0, 0].tolist() == [63.0, 30.0]
    assert out[0, 1].tolist() == [30.0, 63.0]
    assert out[0, 2].tolist() == [30.0, 62.25]


# ---------------------------------------------------------------- weighted_heatmap_mse (SPEC §5.4)

def test_weighted_mse_hand_values():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    target[0, 0] = 1.0                 # e[0,0] = 1
    target[1, 2, 0, 0] = 4.0           # e[1,2] = 16 / 16 = 1
    target[1, 1] = 2.0                 # e[1,1] = 4, but masked
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    w = torch.tensor([1.0, 1.2, 1.5])
    loss = weighted_heatmap_mse(pred, target, mask, w)
    assert loss.item() == pytest.approx((1.0 * 1.0 + 1.5 * 1.0) / 2)


def test_weighted_mse_weight_is_per_joint_not_per_position():
    """DECISION §14.2: the same error costs the same whatever the batch position."""
    w = torch.tensor([1.0, 2.0])
    target = torch.zeros(4, 2, 2, 2)
    for b in range(4):
        t = target.clone()
        t[b, 1] = 1.0
        loss = weighted_heatmap_mse(torch.zeros_like(t), t, torch.ones(4, 2), w)
        assert loss.item() == pytest.approx(2.0 / 4)


def test_weighted_mse_half_precision_input_is_accumulated_in_float32():
    pred = torch.full((1, 1, 8, 8), 0.1, dtype=torch.float16)
    loss = weighted_heatmap_mse(pred, torch.zeros(1, 1, 8, 8), torch.ones(1, 1), torch.ones(1))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(float(torch.tensor(0.1, dtype=torch.float16)) ** 2, rel=1e-6)
