"""One image in, keypoints and a drawing out (the top-down path of SPEC §11 for a single box).

    model, joint_set, _ = load_pose_model("model.pth")           # joints and width from the file
    keypoints, scores = predict(model, image, box=None, flip=True, joint_set=joint_set)
    picture = draw_pose(image, keypoints, scores, joint_set)

The crop, flip test, decoding and back-projection are the evaluation's own functions, so with
``flip=True`` (the evaluation's default flip test) a keypoint predicted here is exactly what
``eval_ap10k.py`` would score for the same box.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from freenet.checkpoint import RAW_DICT, CheckpointError, check_compatible, extract_state_dict, load_checkpoint
from freenet.data.transforms import normalize_images
from freenet.evaluation import box_centre_scale, crop_matrices, decode_heatmaps, flip_back, warp_crop
from freenet.joints import JointSet, JointSetError, load_joint_set
from freenet.models import PoseHighResolutionNet, fold_batchnorm

log = logging.getLogger(__name__)

# A training run's resolved config, in the run folder beside checkpoint.pth and best-*.pth / best.pth.
RUN_CONFIG = "config.yaml"

# What the weights found under a checkpoint key are (SPEC §1 names the networks, §11.9 the key order).
WEIGHTS_IN_WORDS = {"teacher_model": "the teacher (base network) of a FreeNet checkpoint",
                    "student_model": "the student (adaptation network) of a FreeNet checkpoint",
                    RAW_DICT: "a state_dict (the weights alone)"}

# Joint set assumed for a checkpoint of J joints when none is named (20: the FreeNet AnimalPose order).
DEFAULT_JOINT_SETS = {17: "ap10k", 19: "tigdog", 20: "animalpose", 21: "union21", 24: "union24"}

# RGB colour per part group (SPEC §2.5); joints in no group are grey.
PART_COLOURS = {"face": (255, 214, 0), "front": (0, 200, 90), "back": (40, 140, 255), "exclusive": (230, 60, 200)}
OTHER_COLOUR = (190, 190, 190)


def load_pose_model(weights: str | os.PathLike, joints: str | os.PathLike | None = None, key: str = "",
                    device: torch.device | str = "cpu", checkpoint=None, fold: bool = True
                    ) -> tuple[PoseHighResolutionNet, JointSet, str]:
    """An HRNet built to fit a checkpoint: J and width are read off ``final_layer.weight``.

    ``joints`` (bundled name or file) defaults to the joint set the weights were trained with
    (``DATASET.JOINTS`` of :func:`training_record`: the checkpoint's stored config, else the run's
    ``config.yaml`` beside the file), else to :data:`DEFAULT_JOINT_SETS` [J]. The
    checkpoint key search is SPEC §11.9's (``key`` picks one). Returns (model in eval mode, joint
    set, key used). Raises :class:`CheckpointError` (one line) when the file does not fit.
    ``checkpoint``: the contents of ``weights`` when the caller has already loaded them. ``fold``
    (default): BatchNorm folded into the convolutions (:func:`~freenet.models.fold_batchnorm`), for
    inference only; ``fold=False`` gives the network itself, to train or to save.
    """
    if checkpoint is None:
        checkpoint = load_checkpoint(weights)
    state, where = extract_state_dict(checkpoint, key, str(weights))
    final = state.get("final_layer.weight")
    if final is None or final.ndim != 4:
        raise CheckpointError(f"{weights}: no 'final_layer.weight' in '{where}': not an HRNet pose checkpoint")
    num_joints, width = final.shape[0], final.shape[1]
    joint_set = (load_joint_set(joints) if joints is not None
                 else _default_joint_set(training_record(checkpoint, weights), num_joints, weights))
    if joint_set.num_joints != num_joints:
        raise CheckpointError(f"{weights}: checkpoint predicts {num_joints} joints but joint set '{joint_set.name}' "
                              f"has {joint_set.num_joints}")
    model = PoseHighResolutionNet(num_joints=num_joints, width=width)
    check_compatible(model, state, str(weights))
    model.load_state_dict(state)
    model = model.to(device, memory_format=torch.channels_last).eval()
    return (fold_batchnorm(model) if fold else model), joint_set, where


def _default_joint_set(record: TrainingRecord, num_joints: int, weights) -> JointSet:
    """The training run's joint set when its config records one that still loads, else the
    bundled set of that size."""
    trained = record.joints
    recorded = ""
    if trained:
        try:
            joint_set = load_joint_set(trained)
            if joint_set.num_joints == num_joints:
                return joint_set
            recorded = f" (the run's joint set {trained} has {joint_set.num_joints})"
        except (JointSetError, OSError):   # e.g. a union file moved since training: try the bundled sets
            recorded = f" (the run's joint set {trained} does not load here)"
    if num_joints not in DEFAULT_JOINT_SETS:
        raise CheckpointError(f"{weights}: checkpoint predicts {num_joints} joints and no joint set of that size "
                              f"is bundled{recorded}; name one with --joints")
    return load_joint_set(DEFAULT_JOINT_SETS[num_joints])


def stored_config(checkpoint):
    """The resolved training config a FreeNet training checkpoint stores (a yacs CfgNode), if any."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), str):
        return None
    from yacs.config import CfgNode

    return CfgNode.load_cfg(checkpoint["config"])


@dataclass(frozen=True)
class TrainingRecord:
    """The resolved config the weights were trained with, as far as it is known, and where it was read."""

    config: Mapping | None = None
    source: str = ""            # the checkpoint file, or the run's config.yaml beside it

    def _setting(self, section: str, key: str):
        part = (self.config or {}).get(section)
        return part.get(key) if isinstance(part, Mapping) else None

    @property
    def input_size(self) -> int | None:
        """MODEL.IMAGE_SIZE (square crops: its first side)."""
        size = self._setting("MODEL", "IMAGE_SIZE")
        return int(size[0]) if isinstance(size, (list, tuple)) and size else None

    @property
    def joints(self) -> str | None:
        """DATASET.JOINTS: a bundled joint-set name or a joint-set file."""
        joints = self._setting("DATASET", "JOINTS")
        return str(joints) if joints else None


def training_record(checkpoint, weights: str | os.PathLike | None = None) -> TrainingRecord:
    """How the weights were trained: the config a FreeNet training checkpoint stores, else the run's
    ``config.yaml`` in the weights' folder (``best-oks.pth``, ``best-pck.pth`` and ``best.pth`` hold
    the weights alone, beside it). Empty when neither exists; a config.yaml that does not parse
    as a yaml mapping is passed over with a warning naming it."""
    stored = stored_config(checkpoint)
    if stored is not None:
        return TrainingRecord(stored, str(weights) if weights is not None else "the checkpoint")
    path = Path(weights).parent / RUN_CONFIG if weights is not None else None
    if path is None or not path.is_file():
        return TrainingRecord()
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        log.warning("%s: not read (%s), so the training size and joint set are not taken from it", path,
                    str(e).splitlines()[0])
        return TrainingRecord()
    if not isinstance(config, dict):
        log.warning("%s: not a yaml mapping, so the training size and joint set are not taken from it", path)
        return TrainingRecord()
    return TrainingRecord(config, str(path))


def describe_weights(checkpoint, where: str, key: str, key_option: str) -> str:
    """The weights found under ``where`` (by :func:`~freenet.checkpoint.extract_state_dict`), in words.

    SPEC §11.9's key order takes the teacher of a FreeNet checkpoint holding both networks; unless
    ``key`` asked for it, the words then say how to take the student instead (``key_option``: the
    tool's flag or config key, ``--key`` or ``TEST.MODEL_KEY``).
    """
    words = WEIGHTS_IN_WORDS.get(where, f"the weights under '{where}'")
    if where == "teacher_model" and not key and isinstance(checkpoint, Mapping) and "student_model" in checkpoint:
        words += f"; {key_option} student_model picks the student"
    return words


def whole_image_box(image: np.ndarray) -> np.ndarray:
    """[0, 0, W, H]: the crop is then square around the image centre, so nothing is distorted."""
    h, w = image.shape[:2]
    return np.array([0.0, 0.0, w, h])


def predict(model: nn.Module, image: np.ndarray, box=None, flip: bool = False, device=None,
            joint_set: JointSet | None = None, input_size: int = 256, shift: bool = True,
            post_process: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of the animal in ``box`` ([x, y, w, h]; default the whole image) of an RGB uint8 image.

    The box is clipped, squared and padded 1.25x like an evaluation GT box (§11.1), cropped to
    ``input_size`` (§11.2), optionally flip-tested (needs ``joint_set`` for the left/right swap,
    §11.3) and decoded back to image pixels (§11.4). Returns keypoints (J, 2) float32 and scores
    (J,) float32 (heatmap peaks).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if flip and joint_set is None:
        raise ValueError("flip test needs the joint set (its flip pairs swap left and right channels)")
    box = whole_image_box(image) if box is None else np.asarray(box, dtype=np.float64)
    centres, scales, usable = box_centre_scale(box[None], np.array([[image.shape[1], image.shape[0]]]))
    if not usable[0]:
        # Not usable (§11.1): under 2 pixels wide or high, or starting at the last column or row or beyond.
        why = "is under 2 pixels wide or high: nothing to crop in" if min(box[2], box[3]) <= 1 else "does not overlap"
        raise ValueError(f"box {box.tolist()} {why} the {image.shape[1]}x{image.shape[0]} image")
    crop = warp_crop(image, crop_matrices(centres, scales, input_size)[0], input_size)
    if device is None:
        device = next(model.parameters()).device
    x = normalize_images(torch.from_numpy(crop.transpose(2, 0, 1).copy())[None].to(device))  # (1, 3, S, S)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            heat = model(torch.cat([x, x.flip(3)]) if flip else x).float()
            if flip:
                heat = (heat[:1] + flip_back(heat[1:], joint_set.flip_index, shift)) * 0.5
    finally:
        model.train(was_training)
    coords, maxvals, _ = decode_heatmaps(heat, centres, scales, post_process)
    return coords[0].cpu().numpy().astype(np.float32), maxvals[0].cpu().numpy().astype(np.float32)


def joint_colours(joint_set: JointSet) -> list[tuple[int, int, int]]:
    colours = [OTHER_COLOUR] * joint_set.num_joints
    for group in joint_set.part_groups:
        for j in group.joints:
            colours[j] = PART_COLOURS.get(group.name, OTHER_COLOUR)
    return colours


def draw_pose(image: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, joint_set: JointSet,
              threshold: float = 0.4, box=None) -> np.ndarray:
    """A copy of the RGB image with the skeleton and the joints scoring >= ``threshold``.

    Marker radius grows with the joint's score (up to ~1.5% of the image's longer side), colours
    follow the body-part groups (face, front, back, exclusive); a limb is drawn when both its
    joints pass the threshold. ``box`` ([x, y, w, h]) is outlined when given.
    """
    out = np.ascontiguousarray(image.copy())
    unit = max(out.shape[:2]) / 400.0
    thickness = max(1, round(1.5 * unit))
    max_radius = max(3.0, 6.0 * unit)
    colours = joint_colours(joint_set)
    pts = np.round(np.asarray(keypoints, dtype=np.float64)).astype(np.int64)
    shown = np.asarray(scores) >= threshold
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 255, 255), thickness, cv2.LINE_AA)
    for a, b in joint_set.skeleton:
        if shown[a] and shown[b]:
            cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), colours[b], thickness + 1, cv2.LINE_AA)
    for j in np.flatnonzero(shown):
        radius = max(2, round(max_radius * float(np.clip(scores[j], 0, 1))))
        cv2.circle(out, tuple(map(int, pts[j])), radius, colours[j], -1, cv2.LINE_AA)
        cv2.circle(out, tuple(map(int, pts[j])), radius, (20, 20, 20), max(1, thickness // 2), cv2.LINE_AA)
    return out


def pose_to_dict(keypoints: np.ndarray, scores: np.ndarray, joint_set: JointSet, threshold: float = 0.4,
                 image: str = "", box=None) -> dict:
    """JSON-ready prediction: one entry per joint with name, x, y, score and ``visible``: whether the
    score reaches ``threshold`` (the joints :func:`draw_pose` draws), not the GT visibility flag."""
    return {
        "image": str(image),
        "box": None if box is None else [float(v) for v in box],
        "joint_set": joint_set.name,
        "num_joints": joint_set.num_joints,
        "threshold": threshold,
        "keypoints": [{"name": n, "x": float(x), "y": float(y), "score": float(s), "visible": bool(s >= threshold)}
                      for n, (x, y), s in zip(joint_set.joints, keypoints, scores)],
    }
