"""Heatmap encoding, pseudo-label rendering and decoding (SPEC §5.1–§5.3, §11.4).

``encode_keypoints`` runs in the data loader (numpy, one instance). ``render_gaussians`` and
``argmax_keypoints`` run inside the training step on whatever device the heatmaps live on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from freenet.device import device_constants


def encode_keypoints(keypoints: np.ndarray, visibility: np.ndarray, heatmap_size: tuple[int, int] = (64, 64),
                     stride: float = 4.0, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """GT heatmaps of one instance (SPEC §5.1).

    keypoints (J, 2) in input-crop pixels, visibility (J,). A joint with visibility >= 0.5 gets a
    (6σ+1)² window of exp(-d²/2σ²) (peak 1, unnormalised) centred on the integer cell
    ``int(x / stride + 0.5)``; the part of the window inside the map is pasted. A joint whose
    window lies entirely outside the map is marked not valid, on all four sides (the far corner
    counts as inside the window, as in the original's FreeNet targets; its HRNet target code, with
    an exclusive corner, kept cell -7 valid: README "differences" 9).
    Returns heatmaps (J, H, W) float32 and valid (J,) float32 of 0/1.
    """
    width, height = heatmap_size
    radius = int(3 * sigma)
    kp = np.asarray(keypoints, dtype=np.float64)
    # int() truncates toward zero, also for negative coordinates — keep that, it decides validity.
    cells = np.trunc(kp / stride + 0.5).astype(np.int64)  # (J, 2)
    cx, cy = cells[:, 0], cells[:, 1]
    valid = (np.asarray(visibility) >= 0.5) & window_on_map(cells, radius, heatmap_size)  # (J,)

    dx = np.arange(width)[None, :] - cx[:, None]   # (J, W)
    dy = np.arange(height)[None, :] - cy[:, None]  # (J, H)
    gx = np.exp(-(dx ** 2) / (2 * sigma ** 2)) * (np.abs(dx) <= radius)
    gy = np.exp(-(dy ** 2) / (2 * sigma ** 2)) * (np.abs(dy) <= radius)
    heatmaps = gy[:, :, None] * gx[:, None, :] * valid[:, None, None]  # (J, H, W)
    return heatmaps.astype(np.float32), valid.astype(np.float32)


def window_on_map(cells: np.ndarray, radius: int, heatmap_size: tuple[int, int]) -> np.ndarray:
    """Whether the (2·radius+1)² window about each integer cell overlaps the map (SPEC §5.1).

    cells (..., 2) integer (x, y); the window spans cell − radius .. cell + radius, so it is off the
    map when ul > size − 1 or br = cell + radius < 0. Returns (...) bool.
    """
    size = np.asarray(heatmap_size)
    return ((cells - radius <= size - 1) & (cells + radius >= 0)).all(-1)


def render_gaussians(coords: torch.Tensor, mask: torch.Tensor, heatmap_size: tuple[int, int] = (64, 64),
                     sigma: float = 2.0) -> torch.Tensor:
    """Pseudo-label heatmaps (SPEC §5.2), vectorised on the device of ``coords``.

    coords (B, J, 2) heatmap (x, y), mask (B, J) (non-zero = render). Each map is a full,
    untruncated Gaussian at the raw centre divided by its own maximum over the map, so a
    centre just outside the map still puts 1.0 on the nearest border pixel. Maps are zero where
    the mask is 0 or the 3σ window (bounds truncated toward zero) misses the map.
    Returns (B, J, H, W) float32.

    About a dozen kernels whatever the batch (one step renders ~100k maps): the Gaussian is
    separable and positive, so its maximum over the map is max(gx)·max(gy), and dividing by it is
    subtracting each factor's maximum in log space — done for x and y together on a (2, L) grid.
    """
    width, height = heatmap_size
    grid = _render_grid(width, height, float(sigma), coords.device)
    c = coords.float()                                                  # (B, J, 2)
    d = c[..., None] - grid.positions                                   # (B, J, 2, L)
    # −d²/2σ², and −inf past the end of the shorter axis (so it is ignored by the max)
    log_g = torch.addcmul(grid.padding, d, d, value=-1 / (2 * sigma ** 2))
    log_g = log_g - log_g.amax(dim=-1, keepdim=True)
    # Factors below exp(_LOG_FLOOR) ~ 1e-19 become exact zeros: their products would be denormal
    # numbers, which CPUs multiply about ten times slower, and they change no loss value. (The
    # clamp first: exp of far-negative numbers takes a slow path on the CPU.)
    g = F.threshold(torch.exp(log_g.clamp(min=_LOG_FLOOR - 1)), _FLOOR, 0.0)
    # The window [trunc(max(c−r, 0)), trunc(min(c+r, size−1))] meets the map unless its upper
    # bound truncates below 0 (c + r <= −1) or its lower bound above size−1 (c − r >= size).
    keep = (mask != 0) & ((c > -1 - 3 * sigma) & (c < grid.upper)).all(dim=-1)  # (B, J)
    gx = g[..., 0, :width]
    gy = g[..., 1, :height] * keep[..., None]
    return gy[..., :, None] * gx[..., None, :]                          # (B, J, H, W)


_LOG_FLOOR = 0.5 * float(np.log(np.finfo(np.float32).tiny))   # sqrt(float32 min) in log space
_FLOOR = float(np.exp(_LOG_FLOOR))       # the clamped values' exp(_LOG_FLOOR − 1) is below it: zeroed


@dataclass(frozen=True)
class _RenderGrid:
    positions: torch.Tensor    # (2, L) 0..L-1 for x and for y, L = max(W, H)
    padding: torch.Tensor      # (2, L) 0, or −inf at positions >= W (row x) or >= H (row y)
    upper: torch.Tensor        # (2,) W + 3σ, H + 3σ: the window misses the map from there on


@device_constants(maxsize=16)
def _render_grid(width: int, height: int, sigma: float, device: torch.device) -> _RenderGrid:
    length = max(width, height)
    positions = torch.arange(length, dtype=torch.float32).expand(2, length)
    sizes = torch.tensor([width, height], dtype=torch.float32)
    padding = torch.zeros(2, length).masked_fill(positions >= sizes[:, None], float("-inf"))
    return _RenderGrid(positions.contiguous().to(device), padding.to(device), (sizes + 3 * sigma).to(device))


def argmax_keypoints(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer argmax locations and peak values (SPEC §5.3).

    heatmaps (B, J, H, W), any float dtype -> coords (B, J, 2) float32 (x = idx mod W,
    y = idx div W), maxvals (B, J) float32. Coordinates are (0, 0) where the peak is <= 0.
    The maximum is taken in the maps' own dtype (exact; a half-precision map is not copied to float32).
    """
    b, j, h, w = heatmaps.shape
    maxvals, idx = heatmaps.reshape(b, j, h * w).max(dim=-1)
    maxvals = maxvals.float()
    coords = torch.stack((idx % w, torch.div(idx, w, rounding_mode="floor")), dim=-1).float()
    coords = coords * (maxvals > 0)[..., None]
    return coords, maxvals


def peak_values(heatmaps: torch.Tensor) -> torch.Tensor:
    """The maxvals of ``argmax_keypoints`` alone: (B, J, H, W) -> (B, J) float32."""
    return heatmaps.flatten(2).amax(dim=-1).float()


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
