"""Photometric ops and the RandAugment policy (SPEC §4 "Photometric")."""
import cv2
import numpy as np
import pytest

from freenet.data import photometric as P

OPS = dict(P.OPS)


def random_image(h=64, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_image(h=64, w=64, seed=0):
    """A photo-like test image: colour gradients plus mild noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([200 * x + 30, 150 * y + 50, 100 * (x + y) + 20], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 8, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def constant(value, h=8, w=8):
    return np.full((h, w, 3), value, dtype=np.uint8)


class ScriptedRng:
    """Stands in for np.random.Generator where a test needs chosen draws."""

    def __init__(self, integers=None, uniforms=(), random=None, base=None):
        self._integers, self._uniforms, self._random = integers, list(uniforms), random
        self._base = base or np.random.default_rng(0)
        self.uniform_calls = []

    def integers(self, low, high=None, size=None):
        if self._integers is None:
            return self._base.integers(low, high, size=size)
        return self._integers

    def uniform(self, low=0.0, high=1.0, size=None):
        self.uniform_calls.append((low, high, size))
        if self._uniforms:
            return np.asarray(self._uniforms.pop(0), dtype=np.float64)
        return self._base.uniform(low, high, size=size)

    def random(self, size=None):
        if self._random is None:
            return self._base.random(size)
        return np.full(size, self._random)


# ------------------------------------------------------------------------------------------------
# every op


def test_pool_is_the_spec_pool():
    assert [name for name, _ in P.OPS] == ["AutoContrast", "Brightness", "Color", "Contrast", "Equalize",
                                           "Identity", "Posterize", "Sharpness", "Solarize", "CutoutMore", "Blur"]


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("make_view", [lambda a: a, lambda a: a[:, ::-1]], ids=["contiguous", "flipped_view"])
def test_op_keeps_dtype_shape_and_input(name, make_view):
    img = make_view(random_image(64, 48))
    before = img.copy()
    out = OPS[name](img, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (64, 48, 3)
    np.testing.assert_array_equal(img, before)
    assert not np.shares_memory(out, img)


# ------------------------------------------------------------------------------------------------
# single ops, hand-computed


def test_solarize_inverts_every_pixel():
    img = np.arange(192, dtype=np.uint8).reshape(8, 8, 3)
    np.testing.assert_array_equal(OPS["Solarize"](img, None), 255 - img)
    # the generic op inverts only levels >= threshold
    np.testing.assert_array_equal(P.solarize(np.array([[[10, 127, 128]]], np.uint8), threshold=128),
                                  [[[10, 127, 127]]])


def test_posterize_keeps_all_bits_at_m10():
    img = random_image()
    np.testing.assert_array_equal(OPS["Posterize"](img, None), img)
    assert P.posterize(np.array([[[0xAB, 0x0F, 0xFF]]], np.uint8), bits=4).tolist() == [[[0xA0, 0x00, 0xF0]]]


def test_identity_is_a_copy():
    img = random_image()
    np.testing.assert_array_equal(OPS["Identity"](img, None), img)


def test_brightness_blends_towards_black():
    # 0.95 * v: 100 -> 95, 200 -> 190, 255 -> 242.25, 7 -> 6.65
    img = np.array([[[100, 200, 255], [7, 0, 100]]], np.uint8)
    assert OPS["Brightness"](img, None).tolist() == [[[95, 190, 242], [7, 0, 95]]]
    np.testing.assert_array_equal(OPS["Brightness"](constant(100), None), constant(95))


def test_color_blends_towards_grayscale():
    gray = np.array([[[0, 0, 0], [77, 77, 77], [255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(OPS["Color"](gray, None), gray)
    # pure red: L = 0.299 * 255 = 76.2 -> 76; out = 76 + 0.95 (c - 76) = (246.05, 3.8, 3.8)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert OPS["Color"](red, None).tolist() == [[[246, 4, 4]]]


def test_contrast_blends_towards_mean_gray():
    # half red (L 76), half black (L 0): degenerate = int(38 + 0.5) = 38
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :, 0] = 255
    out = OPS["Contrast"](img, None)
    # red: 38 + 0.95 * (255 - 38) = 244.15 and 38 - 0.95 * 38 = 1.9; black: 1.9 everywhere
    np.testing.assert_array_equal(out[:2], np.broadcast_to([244, 2, 2], (2, 4, 3)))
    np.testing.assert_array_equal(out[2:], np.broadcast_to([2, 2, 2], (2, 4, 3)))
    # gray two-level image 0 / 200, mean 100: 0 -> 5, 200 -> 195
    two = np.zeros((4, 4, 3), np.uint8)
    two[:, 2:] = 200
    out = OPS["Contrast"](two, None)
    assert set(np.unique(out[:, :2])) == {5} and set(np.unique(out[:, 2:])) == {195}


def test_contrast_rounds_the_mean_gray_half_up():
    """PIL rounds the mean grey with int(mean + 0.5): a mean of 100.5 blends toward 101."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[2:] = 201                 # grey pixels: L = 201 exactly, so the L mean is (0 + 201) / 2 = 100.5
    assert cv2.mean(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))[0] == 100.5
    # factor 0: every level maps to the degenerate image's single level
    np.testing.assert_array_equal(P.contrast(img, factor=0.0), constant(101, 4, 4))


def test_auto_contrast_stretches_each_channel():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = [[50, 75, 100], [60, 50, 100]]
    img[..., 1] = 30  # constant channel: unchanged
    img[..., 2] = [[0, 255, 7], [0, 0, 255]]  # already spans [0, 255]
    out = OPS["AutoContrast"](img, None)
    # (v - 50) * 255 / 50, truncated: 75 -> 127.5 -> 127, 60 -> 51
    assert out[..., 0].tolist() == [[0, 127, 255], [51, 0, 255]]  # PIL: 254 for 100 (float error)
    np.testing.assert_array_equal(out[..., 1], 30)
    np.testing.assert_array_equal(out[..., 2], img[..., 2])


def test_equalize_hand_computed():
    img = np.zeros((64, 64, 3), np.uint8)
    # channel 0: 1024 px at 10, 1024 at 20, 2048 at 30 -> step = (4096 - 2048) // 255 = 8,
    # lut[10] = 4 // 8 = 0, lut[20] = (4 + 1024) // 8 = 128, lut[30] = (4 + 2048) // 8 = 256 -> 255
    img[:16, :, 0], img[16:32, :, 0], img[32:, :, 0] = 10, 20, 30
    img[..., 1] = 77  # one level: unchanged
    # channel 2: 4095 px at 100, 1 at 200 -> step = 4095 // 255 = 16, lut[100] = 0, lut[200] = 255
    img[..., 2] = 100
    img[0, 0, 2] = 200
    out = OPS["Equalize"](img, None)
    assert (out[:16, :, 0] == 0).all() and (out[16:32, :, 0] == 128).all() and (out[32:, :, 0] == 255).all()
    assert (out[..., 1] == 77).all()
    assert out[0, 0, 2] == 255 and (out[..., 2].ravel()[1:] == 0).all()
    # few pixels: step 0, unchanged
    np.testing.assert_array_equal(OPS["Equalize"](img[:4, :4], None), img[:4, :4])


def test_sharpness_hand_computed():
    img = np.zeros((7, 7, 3), np.uint8)
    img[3, 3] = 195
    out = OPS["Sharpness"](img, None)
    # smoothed: centre 195 * 5 / 13 = 75, neighbours 195 / 13 = 15
    # out = 0.95 img + 0.05 smoothed: centre 185.25 + 3.75 = 189, neighbours 0.75 -> 1
    expected = np.zeros((7, 7), np.uint8)
    expected[2:5, 2:5] = 1
    expected[3, 3] = 189
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=-1))


def test_sharpness_keeps_border_and_flat_images():
    img = random_image(32, 40)
    out = OPS["Sharpness"](img, None)
    for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
        np.testing.assert_array_equal(out[edge], img[edge])
    assert (out[1:-1, 1:-1] != img[1:-1, 1:-1]).any()
    np.testing.assert_array_equal(OPS["Sharpness"](constant(123, 16, 16), None), constant(123, 16, 16))


def test_blur_kernel_and_constant_and_mean():
    kernel = P._box_kernel(3.0)
    # PIL's extended box for sigma 3, 3 passes: half-width 2 plus end weights a = 5/12,
    # each pass has variance 9 / 3 = 3
    np.testing.assert_allclose(kernel * (5 + 2 * 5 / 12), [5 / 12, 1, 1, 1, 1, 1, 5 / 12])
    np.testing.assert_allclose((kernel * np.arange(-3, 4) ** 2).sum(), 3.0)
    np.testing.assert_array_equal(P.blur(constant(77, 32, 32), None, 3.0), constant(77, 32, 32))
    img = random_image(64, 64)
    out = P.blur(img, None, 3.0)
    assert abs(out.mean() - img.mean()) < 0.5
    assert out.std() < img.std() / 4  # sigma 3 averages ~ 4 pi sigma^2 ~ 110 iid pixels: std / ~10


def test_blur_is_separable_and_symmetric():
    img = np.zeros((41, 41, 3), np.uint8)
    img[20, 20] = 255
    out = P.blur(img, None, 3.0)[..., 0].astype(int)
    # mirror-symmetric about both axes (not transpose-symmetric: each pass rounds, rows first, as in PIL)
    np.testing.assert_array_equal(out, out[::-1])
    np.testing.assert_array_equal(out, out[:, ::-1])
    assert out[20, 20] == out.max() and out[20, 29] <= 1 and out[20, 30] == 0  # support +-9


def test_pool_blur_scales_with_the_crop():
    # SPEC: pixel constants scale with the input size S — sigma 3 on a 256 crop, 0.75 on a 64 crop
    big, small = random_image(256, 256), random_image(64, 64)
    np.testing.assert_array_equal(OPS["Blur"](big, None), P.blur(big, None, 3.0))
    np.testing.assert_array_equal(OPS["Blur"](small, None), P.blur(small, None, 0.75))
    assert (P.blur(small, None, 0.75) != P.blur(small, None, 3.0)).mean() > 0.5


def test_cutout_more_scripted_squares():
    img = np.zeros((256, 256, 3), np.uint8)
    rng = ScriptedRng(integers=2, uniforms=[[100.7, 3.0], [50.2, 250.9]])
    out = OPS["CutoutMore"](img, rng)
    # side int(0.05 * 256) = 12, drawn end-inclusive: 13 px.
    # square 1: x0 = int(100.7 - 6) = 94, y0 = int(50.2 - 6) = 44 -> rows 44..56, cols 94..106
    # square 2: x0 = max(0, 3 - 6) = 0, y0 = int(244.9) = 244 -> rows 244..255 (clipped), cols 0..12
    expected = np.zeros((256, 256), bool)
    expected[44:57, 94:107] = True
    expected[244:256, 0:13] = True
    gray = (out == 128).all(axis=-1)
    np.testing.assert_array_equal(gray, expected)
    assert (out[~expected] == 0).all()
    assert gray.sum() == 13 * 13 + 12 * 13


def test_cutout_more_draws_one_to_five_squares():
    img = np.zeros((256, 256, 3), np.uint8)
    counts, exact_squares = set(), 0
    for seed in range(300):
        out = OPS["CutoutMore"](img, np.random.default_rng(seed))
        gray = (out == 128).all(axis=-1)
        assert ((out == 0) | gray[..., None]).all()  # only whole gray pixels are painted
        n, labels, stats, _ = cv2.connectedComponentsWithStats(gray.astype(np.uint8), connectivity=4)
        assert 1 <= n - 1 <= 5 and 1 <= gray.sum() <= 5 * 13 * 13
        for x, y, w, h, area in stats[1:]:
            if x + w < 256 and y + h < 256:  # not clipped: made of whole 13 x 13 squares
                assert w >= 13 and h >= 13 and area >= 13 * 13
                exact_squares += area == 13 * 13 and w == h == 13
        counts.add(n - 1)
    assert counts == {1, 2, 3, 4, 5}
    assert exact_squares > 500


def test_cutout_more_scales_with_image_size():
    rng = ScriptedRng(integers=1, uniforms=[[30.0], [30.0]])
    out = OPS["CutoutMore"](np.zeros((64, 64, 3), np.uint8), rng)
    # side int(0.05 * 64) = 3 -> 4 px square from int(30 - 1.5) = 28
    gray = (out == 128).all(axis=-1)
    assert gray.sum() == 16 and gray[28:32, 28:32].all()


# ------------------------------------------------------------------------------------------------
# PIL as reference (tests only)

# (op name, PIL call, max |difference|): blends round where PIL truncates, gray weights differ
PIL_REFERENCE = [
    ("AutoContrast", lambda im, m: m.ImageOps.autocontrast(im), 1),  # PIL's float error can give 254
    ("Brightness", lambda im, m: m.ImageEnhance.Brightness(im).enhance(0.95), 1),
    ("Color", lambda im, m: m.ImageEnhance.Color(im).enhance(0.95), 2),
    ("Contrast", lambda im, m: m.ImageEnhance.Contrast(im).enhance(0.95), 2),
    ("Equalize", lambda im, m: m.ImageOps.equalize(im), 0),  # Pillow's current //255 step
    ("Posterize", lambda im, m: m.ImageOps.posterize(im, 8), 0),
    ("Sharpness", lambda im, m: m.ImageEnhance.Sharpness(im).enhance(0.95), 2),
    ("Solarize", lambda im, m: m.ImageOps.solarize(im, -1), 0),
    ("Blur", lambda im, m: im.filter(m.ImageFilter.GaussianBlur(3 * min(im.size) / 256)), 1),  # 3 at 256 px
]


def _pil_modules():
    pytest.importorskip("PIL")
    import types

    from PIL import Image, ImageEnhance, ImageFilter, ImageOps
    return types.SimpleNamespace(Image=Image, ImageEnhance=ImageEnhance, ImageFilter=ImageFilter, ImageOps=ImageOps)


def _compare_with_pil(img, m):
    for name, reference, tol in PIL_REFERENCE:
        ours = OPS[name](img, None).astype(int)
        theirs = np.asarray(reference(m.Image.fromarray(img), m)).astype(int)
        assert np.abs(ours - theirs).max() <= tol, name


def test_ops_match_pil_synthetic():
    m = _pil_modules()
    _compare_with_pil(smooth_image(96, 80), m)
    _compare_with_pil(random_image(64, 64, seed=3), m)


def test_ops_match_pil_real_image(shared_data):
    m = _pil_modules()
    bgr = cv2.imread(str(shared_data / "freenet" / "images" / "test.jpg"))
    assert bgr is not None
    img = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (256, 256), interpolation=cv2.INTER_AREA)
    _compare_with_pil(img, m)


# ------------------------------------------------------------------------------------------------
# magnitudes and the policy


def test_magnitude_table():
    assert P.magnitudes(10) == {"enhance_factor": pytest.approx(0.95), "posterize_bits": 8,
                                "solarize_threshold": -1, "cutout_ratio": pytest.approx(0.05),
                                "blur_ratio": 3 / 256}
    low = P.magnitudes(0)
    assert low["enhance_factor"] == pytest.approx(0.05) and low["solarize_threshold"] == 255
    img = random_image()
    ops0 = dict(P.photometric_ops(0))
    np.testing.assert_array_equal(ops0["CutoutMore"](img, np.random.default_rng(0)), img)
    np.testing.assert_array_equal(ops0["Blur"](img, None), img)
    with pytest.raises(ValueError, match="magnitude"):
        P.magnitudes(11)


def recording_ops(log):
    def make(i):
        def op(img, rng):
            log.append(i)
            return img + np.uint8(1)
        return op
    return tuple((f"op{i}", make(i)) for i in range(11))


def test_policy_is_deterministic_under_a_seed():
    aug = P.RandAugment(2, 10)
    img = smooth_image()
    outs = [aug(img, np.random.default_rng(seed)) for seed in (5, 5, 6)]
    np.testing.assert_array_equal(outs[0], outs[1])
    samples = [aug.sample(np.random.default_rng(s)) for s in range(50)]
    assert samples == [aug.sample(np.random.default_rng(s)) for s in range(50)]
    assert len({tuple(s) for s in samples}) > 10


def test_policy_applies_sampled_ops_in_order():
    aug = P.RandAugment()
    log = []
    aug.ops = recording_ops(log)
    img = np.zeros((4, 4, 3), np.uint8)
    for seed in range(30):
        log.clear()
        plan = aug.sample(np.random.default_rng(seed))
        out = aug(img, np.random.default_rng(seed))
        assert log == plan
        assert (out == len(plan)).all()


def test_policy_applies_nothing_when_probability_draws_fail():
    aug = P.RandAugment()
    log = []
    aug.ops = recording_ops(log)
    img = random_image()
    rng = ScriptedRng(random=0.8)  # p < 0.8 always, so u = 0.8 never passes u < p
    out = aug(img, rng)
    assert log == [] and not np.shares_memory(out, img)
    np.testing.assert_array_equal(out, img)
    assert rng.uniform_calls == [(0.2, 0.8, 2)]  # one p ~ U(0.2, 0.8) per drawn op
    aug(img, ScriptedRng(random=0.2 - 1e-9))  # p >= 0.2 always: both drawn ops apply
    assert len(log) == 2


def test_policy_draws_uniformly_with_replacement():
    aug = P.RandAugment(2, 10)
    rng = ScriptedRng(random=0.0, base=np.random.default_rng(1))  # keep every drawn op
    pairs = np.array([aug.sample(rng) for _ in range(20000)])  # (20000, 2)
    counts = np.bincount(pairs.ravel(), minlength=11)
    expected = pairs.size / 11
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 29.6  # chi-square, 10 dof, p = 0.001
    repeat = (pairs[:, 0] == pairs[:, 1]).mean()
    assert abs(repeat - 1 / 11) < 0.01  # with replacement: same op twice with probability 1/11


def test_policy_apply_rate():
    # p ~ U(0.2, 0.8) per op and n = 2: P(0 ops) = E[1 - p]^2 = 0.25, P(2 ops) = 0.25, mean 1.0
    aug = P.RandAugment(2, 10)
    rng = np.random.default_rng(2)
    n_applied = np.array([len(aug.sample(rng)) for _ in range(20000)])
    assert abs(n_applied.mean() - 1.0) < 0.03
    assert abs((n_applied == 0).mean() - 0.25) < 0.015 and abs((n_applied == 2).mean() - 0.25) < 0.015


def test_policy_output_and_input():
    aug = P.RandAugment()
    img = smooth_image(64, 64)
    before = img.copy()
    changed = 0
    for seed in range(40):
        out = aug(img, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == img.shape and not np.shares_memory(out, img)
        changed += not np.array_equal(out, img)
    np.testing.assert_array_equal(img, before)
    assert 20 < changed < 40  # about 3/4 of calls apply an op; Identity/Posterize change nothing


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                 np.zeros((8, 8, 4), np.uint8), [[0, 0, 0]]])
def test_policy_rejects_bad_images(bad):
    with pytest.raises(P.PhotometricInputError, match="'img'"):
        P.RandAugment()(bad, np.random.default_rng(0))
