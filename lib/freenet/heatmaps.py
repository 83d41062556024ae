"""Heatmap encoding, pseudo-label rendering and decoding (SPEC §5.1–§5.3, §11.4).

``encode_keypoints`` runs in the data loader (numpy, one instance). ``render_gaussians`` and
``argmax_keypoints`` run inside the training step on whatever device the heatmaps live on.
"""
from __future__ import annotations

import numpy as np
import torch


def encode_keypoints(keypoints: np.ndarray, visibility: np.ndarray, heatmap_size: tuple[int, int] = (64, 64),
                     stride: float = 4.0, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """GT heatmaps of one instance (SPEC §5.1).

    keypoints (J, 2) in input-crop pixels, visibility (J,). A joint with visibility >= 0.5 gets a
    (6σ+1)² window of exp(-d²/2σ²) (peak 1, unnormalised) centred on the integer cell
    ``int(x / stride + 0.5)``; the part of the window inside the map is pasted. A joint whose
    window lies entirely outside the map is marked not valid.
    Returns heatmaps (J, H, W) float32 and valid (J,) float32 of 0/1.
    """
    width, height = heatmap_size
    radius = int(3 * sigma)
    kp = np.asarray(keypoints, dtype=np.float64)
    # int() truncates toward zero, also for negative coordinates — keep that, it decides validity.
    cx = np.trunc(kp[:, 0] / stride + 0.5).astype(np.int64)  # (J,)
    cy = np.trunc(kp[:, 1] / stride + 0.5).astype(np.int64)
    outside = (cx - radius > width - 1) | (cy - radius > height - 1) | (cx + radius + 1 < 0) | (cy + radius + 1 < 0)
    valid = (np.asarray(visibility) >= 0.5) & ~outside  # (J,)

    dx = np.arange(width)[None, :] - cx[:, None]   # (J, W)
    dy = np.arange(height)[None, :] - cy[:, None]  # (J, H)
    gx = np.exp(-(dx ** 2) / (2 * sigma ** 2)) * (np.abs(dx) <= radius)
    gy = np.exp(-(dy ** 2) / (2 * sigma ** 2)) * (np.abs(dy) <= radius)
    heatmaps = gy[:, :, None] * gx[:, None, :] * valid[:, None, None]  # (J, H, W)
    return heatmaps.astype(np.float32), valid.astype(np.float32)


def render_gaussians(coords: torch.Tensor, mask: torch.Tensor, heatmap_size: tuple[int, int] = (64, 64),
                     sigma: float = 2.0) -> torch.Tensor:
    """Pseudo-label heatmaps (SPEC §5.2), vectorised on the device of ``coords``.

    coords (B, J, 2) heatmap (x, y), mask (B, J) (non-zero = render). Each map is a full,
    untruncated Gaussian at the raw centre divided by its own maximum over the map, so a
    centre just outside the map still puts 1.0 on the nearest border pixel. Maps are zero where
    the mask is 0 or the 3σ window (bounds truncated toward zero) misses the map.
    Returns (B, J, H, W) float32.
    """
    width, height = heatmap_size
    x = coords[..., 0].float()  # (B, J)
    y = coords[..., 1].float()
    r = 3 * sigma
    # The window [trunc(max(c−r, 0)), trunc(min(c+r, size−1))] meets the map unless its upper
    # bound truncates below 0 (c + r <= −1) or its lower bound above size−1 (c − r >= size).
    keep = (mask != 0) & (x > -1 - r) & (x < width + r) & (y > -1 - r) & (y < height + r)

    xs = torch.arange(width, device=coords.device, dtype=torch.float32)
    ys = torch.arange(height, device=coords.device, dtype=torch.float32)
    # The Gaussian is separable and positive, so its maximum over the map is max(gx)·max(gy), and
    # dividing by it is subtracting each factor's maximum in log space.
    ax = -(xs - x[..., None]) ** 2 / (2 * sigma ** 2)  # (B, J, W)
    ay = -(ys - y[..., None]) ** 2 / (2 * sigma ** 2)  # (B, J, H)
    gx = _normalised_exp(ax)
    gy = _normalised_exp(ay) * keep[..., None]
    return gy[..., :, None] * gx[..., None, :]  # (B, J, H, W)


# Factors below sqrt(float32 min) ~ 1e-19 of the peak become exact zeros: their products would be
# denormal numbers, which CPUs multiply about ten times slower, and they change no loss value.
_LOG_FLOOR = 0.5 * float(np.log(np.finfo(np.float32).tiny))


def _normalised_exp(log_values: torch.Tensor) -> torch.Tensor:
    """exp(v - max(v)) along the last axis, flushed to 0 below ``exp(_LOG_FLOOR)``."""
    d = (log_values - log_values.amax(dim=-1, keepdim=True)).clamp(min=_LOG_FLOOR)
    return torch.exp(d) * (d > _LOG_FLOOR)


def argmax_keypoints(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer argmax locations and peak values (SPEC §5.3).

    heatmaps (B, J, H, W) -> coords (B, J, 2) float (x = idx mod W, y = idx div W), maxvals (B, J).
    Coordinates are (0, 0) where the peak is <= 0.
    """
    b, j, h, w = heatmaps.shape
    maxvals, idx = heatmaps.reshape(b, j, h * w).max(dim=-1)
    coords = torch.stack((idx % w, torch.div(idx, w, rounding_mode="floor")), dim=-1).float()
    coords = coords * (maxvals > 0)[..., None]
    return coords, maxvals


def refine_quarter_offset(heatmaps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Quarter-pixel shift toward the higher neighbour (SPEC §11.4).

    x += 0.25·sign(h[y][x+1] − h[y][x−1]), likewise y, only where 1 < x < W−1 and 1 < y < H−1
    (the original's strict bounds). heatmaps (B, J, H, W), integer coords (B, J, 2) -> (B, J, 2).
    """
    b, j, h, w = heatmaps.shape
    px = coords[..., 0].long()
    py = coords[..., 1].long()
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    # Clamp the gather positions; the results outside `inside` are discarded anyway.
    xl, xr = (px - 1).clamp(0, w - 1), (px + 1).clamp(0, w - 1)
    yu, yd = (py - 1).clamp(0, h - 1), (py + 1).clamp(0, h - 1)
    flat = heatmaps.reshape(b, j, h * w)

    def at(yy, xx):
        return flat.gather(-1, (yy * w + xx)[..., None])[..., 0]

    dx = torch.sign(at(py.clamp(0, h - 1), xr) - at(py.clamp(0, h - 1), xl))
    dy = torch.sign(at(yd, px.clamp(0, w - 1)) - at(yu, px.clamp(0, w - 1)))
    offset = 0.25 * torch.stack((dx, dy), dim=-1) * inside[..., None]
    return coords + offset
