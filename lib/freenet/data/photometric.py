"""Photometric augmentation: the "aug view" is the "ori view" crop after these ops (SPEC §4).

A RandAugment policy (n=2, m=10): draw ``n`` ops uniformly *with replacement* from an 11-op pool,
then apply each drawn op with its own probability p ~ U(0.2, 0.8). The ops follow PIL's ``ImageOps``,
``ImageEnhance`` and ``GaussianBlur`` semantics, written with OpenCV/NumPy so that one op on a
256x256 crop costs well under a millisecond (PIL round trips would dominate the data pipeline).

Images are ``uint8`` arrays ``(H, W, 3)`` in RGB order. Every op is a pure function
``op(img, rng) -> new array``: the input is never written to and the output never aliases it.
Only CutoutMore uses ``rng``; the others accept it so that the pool is uniform.

Magnitude m -> op parameter (``t = m / 10``; the pool of the FreeNet release)::

    op                     parameter         formula                         m = 10
    Brightness/Color/      enhance factor    0.9 t + 0.05                    0.95
      Contrast/Sharpness
    Posterize              bits kept         8 - round(4 t) + 4, capped at 8  8  (no-op for every m)
    Solarize               threshold         255 - int(256 t)                -1  (invert every pixel)
    CutoutMore             side / min(H, W)  0.05 t                          0.05 (256 crop: side 12, 13 px drawn)
    Blur                   sigma / min(H, W) 3/256 if m > 0 else 0         3/256 (256 crop: sigma 3; 64: 0.75)
    AutoContrast, Equalize, Identity take no magnitude.

Known differences from PIL (SPEC §4 asks for the same ops, not identical pixels):
- enhance blends round to nearest where PIL truncates, and the grayscale uses OpenCV's fixed-point
  BT.601 weights instead of PIL's: results differ from PIL by at most 1-2 grey levels;
- AutoContrast maps max exactly to 255 where PIL's float error sometimes gives 254;
- Equalize follows current Pillow (step = ... // 255): identical to it;
- Blur repeats PIL's three extended-box passes with OpenCV filters: within 1 grey level of PIL.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Callable, Optional

import cv2
import numpy as np

MAX_MAGNITUDE = 10
FILL_GRAY = 128  # CutoutMore colour, (128, 128, 128)

Op = Callable[[np.ndarray, Optional[np.random.Generator]], np.ndarray]

_VALUES = np.arange(256, dtype=np.float64)  # the 256 grey levels a lookup table maps


class PhotometricInputError(ValueError):
    """The image handed to the photometric augmentation is not a uint8 (H, W, 3) array."""


def check_image(img: np.ndarray) -> None:
    """Raise :class:`PhotometricInputError` unless ``img`` is a uint8 (H, W, 3) RGB array."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{type(img).__name__} dtype={getattr(img, 'dtype', None)} shape={getattr(img, 'shape', None)}"
        raise PhotometricInputError(f"photometric augmentation: 'img' must be a uint8 (H, W, 3) RGB array, "
                                    f"got {desc}")


def magnitudes(m: float = MAX_MAGNITUDE) -> dict[str, float]:
    """Op parameters at magnitude ``m`` in [0, 10] (table in the module docstring, SPEC §4)."""
    if not 0 <= m <= MAX_MAGNITUDE:
        raise ValueError(f"photometric augmentation: magnitude 'm' must lie in [0, {MAX_MAGNITUDE}], got {m}")
    t = m / MAX_MAGNITUDE
    return {
        "enhance_factor": 0.9 * t + 0.05,
        # the release computes 8 - round(4t) + 4 >= 8 bits, i.e. Posterize never removes a bit
        "posterize_bits": 8,
        "solarize_threshold": 255 - int(256 * t),
        "cutout_ratio": 0.05 * t,
        # SPEC §4's radius 3 is a pixel constant of the 256 crop: it scales with the input size
        "blur_ratio": 3.0 / 256 if m > 0 else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# helpers


def _apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map grey levels through ``lut``: (256,) shared by all channels, or (3, 256) per channel."""
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    if lut.ndim == 2:
        lut = np.ascontiguousarray(lut.T).reshape(1, 256, 3)  # cv2.LUT wants one row of 3-channel entries
    return cv2.LUT(img, lut)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
    """PIL ``ImageEnhance``: degenerate + factor (img - degenerate), rounded and saturated to uint8."""
    return cv2.addWeighted(img, factor, degenerate, 1.0 - factor, 0.0)


def _gray(img: np.ndarray) -> np.ndarray:
    """PIL "L" conversion (0.299 R + 0.587 G + 0.114 B), (H, W) uint8."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _histograms(img: np.ndarray) -> np.ndarray:
    """Per-channel 256-bin histograms, (3, 256) int64."""
    hist = [cv2.calcHist([img], [c], None, [256], [0, 256]).reshape(256) for c in range(3)]
    return np.stack(hist).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# the ops (SPEC §4), each `op(img, rng) -> new uint8 (H, W, 3) array`


def identity(img: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    return img.copy()


def auto_contrast(img: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): stretch each channel's [min, max] onto [0, 255].

    lut[v] = int((v - min) * 255 / (max - min)); a constant channel is left as it is. PIL computes
    int(v * scale - min * scale), whose rounding error can land max on 254: we may differ by 1 there.
    """
    hist = _histograms(img)  # (3, 256)
    present = hist > 0
    lo = present.argmax(axis=1)[:, None].astype(np.float64)  # (3, 1)
    hi = (255 - present[:, ::-1].argmax(axis=1))[:, None].astype(np.float64)
    flat = hi <= lo
    lut = np.trunc((_VALUES - lo) * 255.0 / np.where(flat, 1.0, hi - lo))
    lut = np.where(flat, _VALUES, lut)  # (3, 256)
    return _apply_lut(img, lut)


def equalize(img: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """PIL ``ImageOps.equalize``, per channel.

    step = (N - count of the highest occupied level) // 255 and lut[i] = (step // 2 + #pixels below i)
    // step, capped at 255; a channel with step 0 (e.g. one occupied level) is left unchanged. (Pillow
    releases before ~2020 divided by 256, which only moves some levels by one.)
    """
    hist = _histograms(img)  # (3, 256)
    last = 255 - (hist[:, ::-1] > 0).argmax(axis=1)  # highest occupied level per channel
    step = (hist.sum(axis=1) - hist[np.arange(3), last]) // 255  # (3,)
    below = np.cumsum(hist, axis=1) - hist  # pixels strictly below each level, (3, 256)
    safe = np.maximum(step, 1)[:, None]
    lut = (safe // 2 + below) // safe
    lut = np.where(step[:, None] > 0, lut, np.arange(256))
    return _apply_lut(img, lut)


def brightness(img: np.ndarray, rng: Optional[np.random.Generator] = None, factor: float = 0.95) -> np.ndarray:
    """PIL ``ImageEnhance.Brightness``: blend with a black image."""
    return _apply_lut(img, np.rint(factor * _VALUES))


def color(img: np.ndarray, rng: Optional[np.random.Generator] = None, factor: float = 0.95) -> np.ndarray:
    """PIL ``ImageEnhance.Color``: blend with the grayscale image broadcast to 3 channels."""
    gray = cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)
    return _blend(gray, img, factor)


def contrast(img: np.ndarray, rng: Optional[np.random.Generator] = None, factor: float = 0.95) -> np.ndarray:
    """PIL ``ImageEnhance.Contrast``: blend with a constant image of the rounded mean grey level."""
    mean = int(cv2.mean(_gray(img))[0] + 0.5)
    return _apply_lut(img, np.rint(mean + factor * (_VALUES - mean)))


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0  # PIL ImageFilter.SMOOTH


def sharpness(img: np.ndarray, rng: Optional[np.random.Generator] = None, factor: float = 0.95) -> np.ndarray:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image.

    PIL's 3x3 filter leaves the one-pixel frame unfiltered, so the frame comes through unchanged.
    """
    smooth = cv2.filter2D(img, -1, _SMOOTH)
    smooth[[0, -1]] = img[[0, -1]]
    smooth[:, [0, -1]] = img[:, [0, -1]]
    return _blend(smooth, img, factor)


def posterize(img: np.ndarray, rng: Optional[np.random.Generator] = None, bits: int = 8) -> np.ndarray:
    """PIL ``ImageOps.posterize``: keep the ``bits`` high bits (8 bits: a copy)."""
    mask = (0xFF << (8 - bits)) & 0xFF
    return _apply_lut(img, np.arange(256) & mask)


def solarize(img: np.ndarray, rng: Optional[np.random.Generator] = None, threshold: int = -1) -> np.ndarray:
    """PIL ``ImageOps.solarize``: invert every level >= ``threshold`` (threshold <= 0: all of them)."""
    return _apply_lut(img, np.where(_VALUES < threshold, _VALUES, 255 - _VALUES))


def cutout_more(img: np.ndarray, rng: np.random.Generator, ratio: float = 0.05) -> np.ndarray:
    """Paint 1-5 gray (128, 128, 128) squares at uniform random centres.

    side = int(ratio * min(H, W)) (12 on a 256 crop); as in the release, which draws with PIL's
    end-inclusive ``rectangle``, a square covers side + 1 pixels: the top-left corner is
    int(max(0, centre - side / 2)), so squares near the top/left edge are shifted inside the image
    while those near the bottom/right edge are clipped.
    """
    out = img.copy()
    if ratio <= 0:
        return out
    h, w = img.shape[:2]
    side = int(ratio * min(h, w))
    count = int(rng.integers(1, 6))
    x0 = np.maximum(rng.uniform(0, w, size=count) - side / 2, 0).astype(np.int64)  # (count,)
    y0 = np.maximum(rng.uniform(0, h, size=count) - side / 2, 0).astype(np.int64)
    for x, y in zip(x0, y0):
        out[y:y + side + 1, x:x + side + 1] = FILL_GRAY
    return out


@lru_cache(maxsize=8)
def _box_kernel(sigma: float, passes: int = 3) -> np.ndarray:
    """PIL's "extended box" whose ``passes``-fold repetition has variance sigma^2 (Gwosdek et al. 2011).

    Integer half-width l plus fractional end weights a: kernel [a, 1, ..., 1, a] / (2l + 1 + 2a).
    """
    var = sigma * sigma / passes
    l = np.floor((np.sqrt(12.0 * var + 1.0) - 1.0) / 2.0)
    a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - (l + 1) ** 2))
    kernel = np.ones(int(2 * l + 3))
    kernel[[0, -1]] = a
    return kernel / kernel.sum()


def blur(img: np.ndarray, rng: Optional[np.random.Generator] = None, sigma: float = 3.0) -> np.ndarray:
    """PIL ``ImageFilter.GaussianBlur(radius=sigma)``: three extended-box passes per axis.

    Each pass replicates the edge and rounds to uint8 as PIL does, which keeps the result within 1
    grey level of PIL, borders included (a single Gaussian kernel is off by up to ~20 near edges).
    """
    if sigma <= 0:
        return img.copy()
    kernel = _box_kernel(float(sigma))
    one = np.ones(1)
    out = img
    for _ in range(3):
        out = cv2.sepFilter2D(out, -1, kernel, one, borderType=cv2.BORDER_REPLICATE)
    for _ in range(3):
        out = cv2.sepFilter2D(out, -1, one, kernel, borderType=cv2.BORDER_REPLICATE)
    return out


def blur_relative(img: np.ndarray, rng: Optional[np.random.Generator] = None, ratio: float = 3.0 / 256) -> np.ndarray:
    """:func:`blur` with sigma = ``ratio`` · min(H, W): 3 on a 256 crop, 0.75 on a 64 crop."""
    return blur(img, rng, sigma=ratio * min(img.shape[:2]))


def photometric_ops(m: float = MAX_MAGNITUDE) -> tuple[tuple[str, Op], ...]:
    """The 11-op pool of SPEC §4 at magnitude ``m``, as (name, fn) pairs in the SPEC's order."""
    p = magnitudes(m)
    return (
        ("AutoContrast", auto_contrast),
        ("Brightness", partial(brightness, factor=p["enhance_factor"])),
        ("Color", partial(color, factor=p["enhance_factor"])),
        ("Contrast", partial(contrast, factor=p["enhance_factor"])),
        ("Equalize", equalize),
        ("Identity", identity),
        ("Posterize", partial(posterize, bits=p["posterize_bits"])),
        ("Sharpness", partial(sharpness, factor=p["enhance_factor"])),
        ("Solarize", partial(solarize, threshold=p["solarize_threshold"])),
        ("CutoutMore", partial(cutout_more, ratio=p["cutout_ratio"])),
        ("Blur", partial(blur_relative, ratio=p["blur_ratio"])),
    )


OPS = photometric_ops(MAX_MAGNITUDE)


class RandAugment:
    """The aug-view policy (SPEC §4): ``n`` ops drawn uniformly with replacement from the pool,
    each then applied with probability p ~ U(0.2, 0.8) drawn afresh per op.

    All randomness comes from the ``rng`` passed to each call, so a seeded generator reproduces it.
    """

    def __init__(self, n: int = 2, m: float = MAX_MAGNITUDE):
        if n < 0:
            raise ValueError(f"RandAugment: 'n' must be >= 0, got {n}")
        self.n = int(n)
        self.m = m
        self.ops = photometric_ops(m)

    def sample(self, rng: np.random.Generator) -> list[int]:
        """Indices into ``self.ops`` of the ops to apply, in order."""
        drawn = rng.integers(0, len(self.ops), size=self.n)  # with replacement
        p = rng.uniform(0.2, 0.8, size=self.n)
        return drawn[rng.random(self.n) < p].tolist()

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_image(img)
        out = img
        for i in self.sample(rng):
            out = self.ops[i][1](out, rng)
        return img.copy() if out is img else out

    def __repr__(self) -> str:
        return f"RandAugment(n={self.n}, m={self.m}, ops={[name for name, _ in self.ops]})"
