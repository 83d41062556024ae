"""The two-view training transform (SPEC §4).

One decoded image -> half body -> affine crop -> flip -> heatmap targets = **ori view**;
photometric augmentation of the ori crop = **aug view**. Both views share geometry and target.
Crops leave the workers as uint8 (4x less to copy and pin than float32); normalisation with the
ImageNet mean/std happens on the training device (:func:`normalize_images`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from freenet.data.photometric import RandAugment
from freenet.device import device_constants
from freenet.heatmaps import encode_keypoints
from freenet.joints import JointSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Geometry and target settings; defaults are the paper's (SPEC §4)."""

    input_size: int = 256
    heatmap_size: int = 64
    sigma: float = 2.0
    half_body_prob: float = 0.3
    scale_range: tuple[float, float] = (0.65, 1.35)
    max_rotation: int = 45
    flip_prob: float = 0.5
    photometric: bool = True


def half_body_box(keypoints: np.ndarray, visible: np.ndarray, upper_body: tuple[int, ...],
                  rng: np.random.Generator) -> np.ndarray | None:
    """Box around the upper or the lower half of the visible joints, or None (SPEC §4).

    Upper = visible joints in the joint set's upper-body list, lower = every other visible joint;
    pick one half with p 0.5; it needs >= 3 joints and a bbox with w > 1 and h > 1. The box is
    that bbox enlarged 1.5x about its centre, as [x, y, w, h].
    """
    is_upper = np.zeros(len(visible), dtype=bool)
    is_upper[list(upper_body)] = True
    upper = visible & is_upper
    lower = visible & ~is_upper
    chosen = upper if rng.random() < 0.5 else lower
    if chosen.sum() < 3:
        return None
    pts = keypoints[chosen]
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    w, h = x1 - x0, y1 - y0
    if w <= 1 or h <= 1:
        return None
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = 1.5 * w, 1.5 * h
    return np.array([cx - w / 2, cy - h / 2, w, h], dtype=np.float64)


def crop_matrix(box: np.ndarray, scale: float, angle_deg: float, input_size: int) -> np.ndarray:
    """2x3 affine map from image pixels to the training crop (SPEC §4).

    The box is made square about its centre (side L = max(w, h), no padding); then
    ``x_crop = c_out + k·R·(p − c)`` with c_out = (S−1)/2, k = (S−1)/(L·scale) and
    R = [[cos a, sin a], [−sin a, cos a]].
    """
    x, y, w, h = box
    centre = np.array([x + w / 2, y + h / 2])
    side = max(w, h)
    k = (input_size - 1) / (side * scale)
    a = np.deg2rad(angle_deg)
    rot = k * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    c_out = (input_size - 1) / 2
    return np.hstack([rot, (c_out - rot @ centre)[:, None]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 2x3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


class TwoViewTransform:
    """Record + decoded RGB image -> {'ori', 'aug', 'target', 'target_weight'} (SPEC §4).

    All randomness comes from the ``rng`` passed per call, so a sample is a pure function of
    (record, seed): training is reproducible across worker counts and after ``--resume``.
    """

    def __init__(self, joint_set: JointSet, config: AugmentConfig = AugmentConfig(), with_target: bool = True,
                 with_aug: bool = True):
        self.joint_set = joint_set
        self.config = config
        self.with_target = with_target
        self.with_aug = with_aug  # False: the ori view only (supervised base-network training, SPEC §12)
        self.flip_index = joint_set.flip_index
        self.photometric = RandAugment(n=2, m=10) if config.photometric else None

    def __call__(self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray, visibility: np.ndarray,
                 rng: np.random.Generator) -> dict:
        cfg, size = self.config, self.config.input_size
        visible = visibility > 0
        box = np.asarray(box, dtype=np.float64)
        if rng.random() < cfg.half_body_prob:
            half = half_body_box(keypoints, visible, self.joint_set.upper_body, rng)
            if half is not None:
                box = half
        scale = rng.uniform(*cfg.scale_range)
        angle = int(rng.integers(-cfg.max_rotation, cfg.max_rotation + 1))
        matrix = crop_matrix(box, scale, angle, size)
        ori = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # DECISION (SPEC §14.3): float coordinates; unannotated joints stay masked by visibility.
        joints = apply_matrix(matrix, keypoints.astype(np.float64))
        vis = visibility.astype(np.float32)
        if rng.random() < cfg.flip_prob:
            ori = ori[:, ::-1]
            joints[:, 0] = size - 1 - joints[:, 0]
            joints, vis = joints[self.flip_index], vis[self.flip_index]
        ori = np.ascontiguousarray(ori)
        sample = {"ori": _to_chw(ori)}
        if self.with_aug:
            sample["aug"] = _to_chw(self.photometric(ori, rng)) if self.photometric is not None else sample["ori"]
        if self.with_target:
            stride = size / cfg.heatmap_size
            target, valid = encode_keypoints(joints, vis, (cfg.heatmap_size, cfg.heatmap_size), stride, cfg.sigma)
            sample["target"] = torch.from_numpy(target)
            sample["target_weight"] = torch.from_numpy(valid)
            sample["joints"] = torch.from_numpy(joints.astype(np.float32))
        return sample


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, S, S) uint8


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> float32 normalised with the ImageNet mean/std (SPEC §4)."""
    mean, std = _mean_std(images.device)
    return (images.float() - mean) / std


@device_constants(maxsize=8)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The constants, made once per device (:func:`~freenet.device.device_constants`)."""
    stats = torch.tensor([IMAGENET_MEAN, IMAGENET_STD]).view(2, 1, 3, 1, 1) * 255
    mean, std = stats.to(device)
    return mean, std
