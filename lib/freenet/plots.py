"""Small line charts drawn with OpenCV (training curves of the demo report; no plotting library)."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import cv2
import numpy as np

from freenet.fileio import write_atomic

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]  # RGB
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _label(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
               ylabel: str, size: tuple[int, int] = (720, 420)) -> np.ndarray:
    """An RGB uint8 image of one chart: ``series`` maps a legend name to (xs, ys)."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 55
    img = np.full((height, width, 3), 255, np.uint8)
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    if not points:
        cv2.putText(img, f"{title}: no data", (left, height // 2), FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        return img
    xs_all, ys_all = zip(*points)
    x_lo, x_hi = min(xs_all), max(xs_all)
    y_lo, y_hi = min(ys_all), max(ys_all)
    pad = 0.05 * (y_hi - y_lo or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def to_px(x, y):
        px = left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return int(round(px)), int(round(py))

    grey, black = (225, 225, 225), (0, 0, 0)
    for t in _nice_ticks(y_lo, y_hi):
        _, py = to_px(x_lo, t)
        cv2.line(img, (left, py), (width - right, py), grey, 1)
        cv2.putText(img, _label(t), (5, py + 4), FONT, 0.4, black, 1, cv2.LINE_AA)
    for t in _nice_ticks(x_lo, x_hi):
        px, _ = to_px(t, y_lo)
        cv2.line(img, (px, top), (px, height - bottom), grey, 1)
        cv2.putText(img, _label(t), (px - 10, height - bottom + 18), FONT, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (width - right, height - bottom), black, 1)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = np.array([to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(v) for v in p), 3, colour, -1, cv2.LINE_AA)
        ly = top + 18 + 18 * i
        cv2.line(img, (left + 10, ly - 4), (left + 30, ly - 4), colour, 3)
        cv2.putText(img, name, (left + 36, ly), FONT, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 25), FONT, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (width // 2 - 30, height - 12), FONT, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (5, 25), FONT, 0.45, black, 1, cv2.LINE_AA)
    return img


def save_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB picture, encoded by the extension of ``path`` (.png, .jpg, ...), atomically (a failed
    write leaves no half file). Raises ``cv2.error`` for an extension OpenCV has no writer for
    (``cv2.haveImageWriter`` checks that beforehand) and ``OSError`` when the file cannot be written."""
    extension = os.path.splitext(os.fspath(path))[1]
    ok, data = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the picture as {extension}")
    write_atomic(path, lambda f: f.write(data.tobytes()), mode="wb")
