"""Evaluation: GT-box records -> crops -> heatmaps -> keypoints -> OKS mAP and PCK (SPEC §11).

The pipeline, in the order the data flows:

    eval_records      every usable GT instance of the val file; centre + scale of its padded square box (§11.1)
    crop_matrices     centre -> (S/2, S/2), padded side -> S px; bilinear warp (§11.2)
    flip_back         flipped output -> flip-pair channel swap + one-column shift (§11.3)
    decode_heatmaps   argmax + quarter offset, back-projected to image pixels (§11.4; also inference's)
    instance_scores   mean of the joint scores above IN_VIS_THRE (§11.5)
    oks_nms           greedy OKS-NMS per image (§11.5)
    coco_keypoint_metrics   pycocotools COCOeval with the joint set's sigmas (§11.5, §11.6)
    pck               heatmap-space PCK@0.05, pooled over the whole set (§11.7, §11.8)

:class:`Evaluator` holds what does not change between evaluations (records, GT, crop cache) so the
training loop builds it once and calls it at every evaluation. Every step after the network is a
pure function of arrays, so tests can feed heatmaps directly (the "oracle" tests).

Geometry convention (HRNet's, kept by FreeNet): crop pixel ``u = S/2 + (x − c)·S/(200·s)`` and
heatmap cell ``k`` sits on crop pixel ``stride·k``; the back-projection
``x = c + (k − W_h/2)·(200·s/W_h)`` is the exact inverse of that pair.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from freenet.data.coco import (DataLayout, image_paths, in_joint_set_order, keypoint_values, load_coco_json,
                               load_json, require_id)
from freenet.data.dataset import init_worker, read_image
from freenet.data.transforms import normalize_images
from freenet.config import configured_joint_set
from freenet.errors import DataError, EvaluationError, from_worker
from freenet.fileio import why_unwritable, write_json_atomic
from freenet.heatmaps import argmax_keypoints, refine_quarter_offset, window_on_map
from freenet.joints import JointSet, load_joint_set
from freenet.models import PoseHighResolutionNet, fold_batchnorm

log = logging.getLogger(__name__)

PIXEL_STD = 200.0    # HRNet's box unit: scale = side / 200
BOX_PADDING = 1.25   # GT boxes are enlarged by this factor before cropping (§11.1)
PCK_THRESHOLD = 0.05  # fraction of the heatmap size (3.2 px at 64, §11.7)
METRIC_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.json"


# ----------------------------------------------------------------------------------------------
# Records (§11.1)
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalRecords:
    """Every evaluated instance of a val file, as arrays (built once, reused at every evaluation)."""

    ann_file: str
    image_ids: np.ndarray     # (N,) int64
    ann_ids: np.ndarray       # (N,) int64
    category_ids: np.ndarray  # (N,) int64
    image_paths: list         # (N,) str
    centres: np.ndarray       # (N, 2) float32, image px
    scales: np.ndarray        # (N,) float32: padded square side / 200
    keypoints: np.ndarray     # (N, J, 2) float32 GT, image px
    visibility: np.ndarray    # (N, J) float32 GT (0 = not annotated)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def areas(self) -> np.ndarray:
        """(N,) float64 (200·s)², the area OKS-NMS uses (§11.5)."""
        return (self.scales.astype(np.float64) * PIXEL_STD) ** 2


def box_centre_scale(boxes: np.ndarray, image_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip [x, y, w, h] boxes to their images and square + pad them (SPEC §11.1).

    boxes (N, 4), image_sizes (N, 2) as (width, height). x1 = max(0, x), y1 = max(0, y),
    x2 = min(W−1, x1 + max(0, w−1)), y2 = min(H−1, y1 + max(0, h−1)); a box is usable when x2 > x1
    and y2 > y1. Centre of the clipped box; side = its larger side; scale = side/200 × 1.25.
    Returns centres (N, 2) float32, scales (N,) float32, usable (N,) bool.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    x1 = np.maximum(0, boxes[:, 0])
    y1 = np.maximum(0, boxes[:, 1])
    x2 = np.minimum(sizes[:, 0] - 1, x1 + np.maximum(0, boxes[:, 2] - 1))
    y2 = np.minimum(sizes[:, 1] - 1, y1 + np.maximum(0, boxes[:, 3] - 1))
    w, h = x2 - x1, y2 - y1
    centres = np.stack([x1 + w * 0.5, y1 + h * 0.5], axis=1).astype(np.float32)
    # float32 as in the original's records, so centres and scales equal its values exactly.
    scales = (np.maximum(w, h) / PIXEL_STD).astype(np.float32) * np.float32(BOX_PADDING)
    return centres, scales, (x2 > x1) & (y2 > y1)


def eval_records(ann_file: str | os.PathLike, image_dir: str | os.PathLike, joint_set: JointSet,
                 fallback_roots: Mapping[str, str | os.PathLike] | None = None, *,
                 data: dict | None = None) -> EvalRecords:
    """The evaluated instances of a COCO keypoint val file (SPEC §11.1), in the original's order.

    Kept: non-crowd annotations with a box, keypoints with a non-zero value and num_keypoints > 0,
    area > 0 when given, and a usable clipped box (:func:`box_centre_scale`). Order: images in file
    order, each image's annotations in file order (the original iterated ``coco.getImgIds()``).

    Images are ``image_dir / file_name``. With ``fallback_roots`` ({source: folder}) an image not
    in ``image_dir`` is taken from its source's folder (the union files' per-annotation or
    per-image ``from`` field: ap_10k / animal_pose / tigdog), so union sets need no image copy.
    ``data`` is the already-parsed file in the joint set's order (:func:`~freenet.data.coco.in_joint_set_order`),
    if the caller has it.
    """
    ann_file = str(ann_file)
    data = in_joint_set_order(ann_file, load_coco_json(ann_file), joint_set) if data is None else data
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(ann_file, f"expected a list under '{key}'")
    num_joints = joint_set.num_joints
    images = {}
    for img in data["images"]:
        if "id" not in img or "file_name" not in img:
            raise DataError(ann_file, f"an image entry lacks 'id' or 'file_name': {img!r:.100}")
        img_id = require_id(ann_file, img, "id", "an image")
        if "width" not in img or "height" not in img:
            raise DataError(ann_file, "image has no 'width'/'height' (needed to clip its boxes)", img_id)
        images[img_id] = img

    candidates = []
    for ann in data["annotations"]:
        if ann.get("iscrowd") or "bbox" not in ann or not ann.get("keypoints"):
            continue
        kps = ann["keypoints"]
        if len(kps) != 3 * num_joints:
            raise DataError(ann_file, f"'keypoints' has {len(kps)} values, expected 3*{num_joints} for joint set "
                            f"'{joint_set.name}'", ann.get("id"))
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(ann_file, f"'bbox' must be 4 numbers [x, y, w, h], got {box!r:.80}", ann.get("id"))
        ann_id = require_id(ann_file, ann, "id", "an annotation")
        if require_id(ann_file, ann, "image_id", "annotation", ann_id) not in images:
            raise DataError(ann_file, f"annotation points at unknown image id {ann['image_id']}", ann_id)
        if "category_id" in ann:
            require_id(ann_file, ann, "category_id", "annotation", ann_id)
        if ann.get("num_keypoints", 1) == 0 or ann.get("area", 1) <= 0:
            continue
        candidates.append(ann)
    values = keypoint_values(ann_file, candidates, num_joints)          # (C, J, 3)
    per_image = defaultdict(list)
    for i, annotated in enumerate((values.reshape(len(candidates), 3 * num_joints).max(axis=1) != 0).tolist()):
        if annotated:                                                   # the original's max(keypoints) != 0
            per_image[candidates[i]["image_id"]].append(i)
    order = [i for img in data["images"] for i in per_image.get(img["id"], ())]
    anns = [candidates[i] for i in order]
    n = len(anns)

    image_ids = np.array([a["image_id"] for a in anns], dtype=np.int64)
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
    sizes = np.array([(images[i]["width"], images[i]["height"]) for i in image_ids.tolist()],
                     dtype=np.float64).reshape(n, 2)
    centres, scales, usable = box_centre_scale(boxes, sizes)
    kps = values[order]
    by_id = image_paths(ann_file, [(a["image_id"], a) for a in anns], images, Path(image_dir),
                        fallback_roots=fallback_roots)
    paths = [by_id[a["image_id"]] for a in anns]
    keep = np.flatnonzero(usable)
    return EvalRecords(
        ann_file=ann_file,
        image_ids=image_ids[keep],
        ann_ids=np.array([a["id"] for a in anns], dtype=np.int64)[keep],
        category_ids=np.array([a.get("category_id", 1) for a in anns], dtype=np.int64)[keep],
        image_paths=[paths[i] for i in keep.tolist()],
        centres=centres[keep],
        scales=scales[keep],
        keypoints=np.ascontiguousarray(kps[keep, :, :2]),
        visibility=np.ascontiguousarray(kps[keep, :, 2]),
    )


# ----------------------------------------------------------------------------------------------
# Geometry and decoding (§11.2–§11.4)
# ----------------------------------------------------------------------------------------------

def crop_matrices(centres: np.ndarray, scales: np.ndarray, input_size: int) -> np.ndarray:
    """(N, 2, 3) affine maps image px -> crop px: centre -> (S/2, S/2), 200·s px -> S px (§11.2)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    k = input_size / (PIXEL_STD * np.asarray(scales, dtype=np.float64).reshape(-1))  # (N,)
    m = np.zeros((len(k), 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = k
    m[:, :, 2] = input_size / 2 - k[:, None] * centres
    return m


def warp_crop(image: np.ndarray, matrix: np.ndarray, input_size: int) -> np.ndarray:
    """Bilinear crop (S, S, 3) uint8 of an RGB image; outside the image is black (§11.2)."""
    return cv2.warpAffine(image, matrix, (input_size, input_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def flip_back(heatmaps: torch.Tensor, flip_index, shift: bool = True) -> torch.Tensor:
    """Output for the mirrored crop -> output for the crop (SPEC §11.3).

    heatmaps (B, J, H, W). Mirror the columns, swap left/right channels (``out[:, j] =
    in[:, flip_index[j]]``) and, with ``shift``, move everything one column right
    (``out[..., 1:] = out[..., :-1]``; column 0 keeps its value), as the original did to offset
    the flip's misalignment.
    """
    index = torch.as_tensor(np.asarray(flip_index), dtype=torch.long, device=heatmaps.device)
    out = heatmaps.flip(-1).index_select(1, index)
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    return out


def heatmap_to_image(coords: torch.Tensor, centres: torch.Tensor, scales: torch.Tensor,
                     heatmap_size: tuple[int, int]) -> torch.Tensor:
    """Heatmap (x, y) -> image px: x_img = c_x + (x − W_h/2)·(200·s/W_h) (SPEC §11.4).

    coords (B, J, 2), centres (B, 2), scales (B,), heatmap_size (W_h, H_h).
    """
    size = torch.tensor(heatmap_size, dtype=coords.dtype, device=coords.device)  # (2,)
    step = scales.to(coords).reshape(-1, 1, 1) * PIXEL_STD / size               # (B, 1, 2)
    return centres.to(coords).reshape(-1, 1, 2) + (coords - size / 2) * step


def decode_heatmaps(heatmaps: torch.Tensor, centres, scales, post_process: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmaps -> keypoints in image px and their scores (SPEC §11.4).

    heatmaps (B, J, H, W); centres (B, 2) and scales (B,) of the crops (arrays or tensors, on any
    device: they are moved to the heatmaps'). Argmax (§5.3), quarter-pixel offset toward the higher
    neighbour when ``post_process``, then the back-projection. Returns coords (B, J, 2) image px,
    maxvals (B, J) and the raw argmax (B, J, 2) heatmap px (what PCK compares, §11.7).
    """
    argmax, maxvals = argmax_keypoints(heatmaps)
    coords = refine_quarter_offset(heatmaps, argmax) if post_process else argmax
    size = (heatmaps.shape[-1], heatmaps.shape[-2])
    centres = torch.as_tensor(centres).to(heatmaps.device)
    scales = torch.as_tensor(scales).to(heatmaps.device)
    return heatmap_to_image(coords, centres, scales, size), maxvals, argmax


# ----------------------------------------------------------------------------------------------
# Rescoring, OKS-NMS, results (§11.5)
# ----------------------------------------------------------------------------------------------

def instance_scores(maxvals: np.ndarray, in_vis_thre: float = 0.2, box_scores: np.ndarray | None = None
                    ) -> np.ndarray:
    """Mean of the joint scores above ``in_vis_thre`` (0 if none), times the box score (1 for GT boxes)."""
    maxvals = np.asarray(maxvals, dtype=np.float64)
    above = maxvals > in_vis_thre
    count = above.sum(axis=1)
    score = np.where(count > 0, (maxvals * above).sum(axis=1) / np.maximum(count, 1), 0.0)
    return score if box_scores is None else score * np.asarray(box_scores, dtype=np.float64)


def keypoint_oks(a: np.ndarray, b: np.ndarray, area_a, area_b, sigmas) -> np.ndarray:
    """OKS between keypoint sets as OKS-NMS computes it (all joints, mean of the two areas).

    a, b (..., J, 2) broadcastable; areas (...). exp(−d²/(2σ)²/((A_a + A_b)/2 + eps)/2), averaged
    over joints.
    """
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    d2 = ((np.asarray(a, dtype=np.float64) - b) ** 2).sum(-1)               # (..., J)
    area = (np.asarray(area_a, dtype=np.float64) + area_b) / 2 + np.spacing(1)  # (...)
    return np.exp(-d2 / variances / area[..., None] / 2).mean(-1)


def oks_nms(image_ids: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            sigmas, threshold: float = 0.9) -> np.ndarray:
    """Greedy OKS-NMS within each image (SPEC §11.5); returns the indices kept.

    Per image, highest score first, a detection is kept unless its OKS with an already kept one
    is > ``threshold``. Output order: images by first appearance, score descending within an
    image (ties in input order). Vectorised over images: one pass per rank within an image.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    image_ids = np.asarray(image_ids)
    _, first, inverse = np.unique(image_ids, return_index=True, return_inverse=True)
    group = np.argsort(np.argsort(first))[inverse.reshape(-1)]       # image rank by first appearance
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64), group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, n])
    keep = np.ones(n, dtype=bool)  # over sorted positions
    crowded = np.flatnonzero(counts > 1)
    if len(crowded):
        # (R, M) table of sorted positions for the images with several detections, -1 = padding.
        m = int(counts.max())
        table = starts[crowded, None] + np.arange(m)
        present = np.arange(m) < counts[crowded, None]
        table = np.where(present, table, 0)
        kp = np.asarray(keypoints)[order][table]             # (R, M, J, 2)
        ar = np.asarray(areas, dtype=np.float64)[order][table]  # (R, M)
        alive = present.copy()
        kept = np.zeros_like(present)
        for r in range(m):
            kept[:, r] = alive[:, r]
            if r + 1 < m:
                oks = keypoint_oks(kp[:, r, None], kp[:, r + 1:], ar[:, r, None], ar[:, r + 1:], sigmas)
                alive[:, r + 1:] &= ~(kept[:, r, None] & (oks > threshold))
        keep[table[present]] = kept[present]
    return order[keep]


def coco_results(records: EvalRecords, keypoints: np.ndarray, maxvals: np.ndarray, scores: np.ndarray,
                 keep: np.ndarray) -> list[dict]:
    """COCO keypoint results for the kept detections: [x, y, score] per joint, category of the GT box."""
    keep = np.asarray(keep, dtype=np.int64)
    triplets = np.concatenate([keypoints[keep], maxvals[keep, :, None]], axis=-1)  # (K, J, 3)
    triplets = triplets.reshape(len(keep), -1).astype(np.float64).tolist()
    centres = records.centres[keep].astype(np.float64).tolist()
    scales = records.scales[keep].astype(np.float64).tolist()
    return [{"image_id": i, "category_id": c, "keypoints": k, "score": s, "center": ce, "scale": [sc, sc]}
            for i, c, k, s, ce, sc in zip(records.image_ids[keep].tolist(), records.category_ids[keep].tolist(),
                                          triplets, np.asarray(scores, dtype=np.float64)[keep].tolist(),
                                          centres, scales)]


# ----------------------------------------------------------------------------------------------
# Metrics (§11.6–§11.8)
# ----------------------------------------------------------------------------------------------

def coco_ground_truth(data: dict, ann_file: str | os.PathLike = "<dict>") -> COCO:
    """A pycocotools COCO index over an already-parsed file (quietly); ``data`` is left as it is.

    Filled in where a file lacks them, as the records read it (:func:`eval_records`): ``iscrowd``
    0, ``category_id`` 1 and a ``categories`` list of the annotations' ids; no ``keypoints`` (a
    box-only region) is none labeled, which ``num_keypoints`` (COCOeval's ignore flag) then says.
    ``area`` and ``bbox`` cannot be guessed and must be there. The index holds copies of the
    annotation dicts (filled in) and shares everything else with ``data``.
    """
    data = {**data, "annotations": [dict(ann) for ann in data.get("annotations", [])]}
    for ann in data["annotations"]:
        if not ann.get("keypoints"):
            ann["keypoints"] = []
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann["keypoints"])[2::3] > 0))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", 1)
        for key in ("area", "bbox"):
            if key not in ann:
                raise DataError(ann_file, f"annotation has no '{key}' (COCOeval needs it for OKS)", ann.get("id"))
    if "categories" not in data:
        data["categories"] = [{"id": c} for c in sorted({a["category_id"] for a in data["annotations"]})]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_keypoint_metrics(ann_file, results, sigmas) -> dict:
    """OKS AP/AR with pycocotools (SPEC §11.6): AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl.

    ``ann_file``: GT file path (or a :class:`COCO` from :func:`coco_ground_truth`); ``results``: a
    list of COCO keypoint results or a results JSON path; ``sigmas``: the joint set's OKS sigmas.
    Detections whose every joint score is <= 0 are dropped first (§11.5). With no detection left
    every metric is 0.0. pycocotools' progress prints are silenced.
    """
    coco = ann_file if isinstance(ann_file, COCO) else coco_ground_truth(load_coco_json(ann_file), ann_file)
    source = str(results) if isinstance(results, (str, os.PathLike)) else "<results>"
    if isinstance(results, (str, os.PathLike)):
        results = load_json(results)
    if not isinstance(results, list):
        raise DataError(source, f"expected a JSON list of keypoint results, got {type(results).__name__}")
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if not results:
        return {k: 0.0 for k in METRIC_KEYS}
    required = ("image_id", "category_id", "keypoints", "score")
    bad = next((i for i, r in enumerate(results) if not isinstance(r, dict) or any(k not in r for k in required)), None)
    if bad is not None:
        raise DataError(source, f"result #{bad} lacks one of the fields {', '.join(required)}")
    try:
        kps = np.asarray([r["keypoints"] for r in results], dtype=np.float64)  # (N, 3J)
    except (TypeError, ValueError):
        raise DataError(source, "result 'keypoints' must be equally long lists of numbers") from None
    image_ids = {r["image_id"] for r in results}
    if kps.ndim != 2 or kps.shape[1] != 3 * len(sigmas):
        raise DataError(source, f"results carry {kps.shape[-1] if kps.ndim == 2 else '?'} keypoint values, "
                        f"expected 3*{len(sigmas)} for the joint set's {len(sigmas)} sigmas")
    unknown = image_ids - set(coco.getImgIds())
    if unknown:
        raise DataError(source, f"{len(unknown)} result image ids are not in the ground truth "
                        f"(e.g. {sorted(unknown)[0]}): results and annotation file do not belong together")
    scored = np.flatnonzero((kps[:, 2::3] > 0).any(axis=1))
    if len(scored) == 0:
        return {k: 0.0 for k in METRIC_KEYS}
    detections = [dict(results[i]) for i in scored.tolist()]  # loadRes adds fields: keep the caller's intact
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco.loadRes(detections)
        ev = COCOeval(coco, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(METRIC_KEYS, ev.stats)}


def gt_heatmap_peaks(keypoints: np.ndarray, visibility: np.ndarray, centres: np.ndarray, scales: np.ndarray,
                     input_size: int, heatmap_size: int, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Where the GT heatmap of each joint peaks in the evaluation crop, and whether it exists (§11.7).

    The GT crop coordinates go through the §5.1 encoding: centre cell int(u/stride + 0.5), window
    radius int(3σ); a joint is counted when annotated and its window touches the map. The peak
    of a window cut by the border is its in-map pixel nearest the centre, i.e. the clipped centre.
    Returns peaks (N, J, 2) int64 and valid (N, J) bool.
    """
    k = input_size / (PIXEL_STD * scales.astype(np.float64))[:, None, None]            # (N, 1, 1)
    crop = input_size / 2 + (keypoints.astype(np.float64) - centres[:, None, :]) * k  # (N, J, 2)
    cell = np.trunc(crop / (input_size / heatmap_size) + 0.5).astype(np.int64)
    radius = int(3 * sigma)
    touches = window_on_map(cell, radius, (heatmap_size, heatmap_size))
    return np.clip(cell, 0, heatmap_size - 1), (visibility > 0) & touches


def pck(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, heatmap_size: int,
        threshold: float = PCK_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint heatmap PCK pooled over the whole set (SPEC §11.7, DECISION §14.7).

    pred, gt (N, J, 2) heatmap px (pred = raw argmax of the flip-averaged output), valid (N, J).
    A valid joint is correct when its distance is < threshold × heatmap size (3.2 px at 64).
    Returns accuracy (J,) (NaN where a joint has no valid GT) and counts (J,).
    """
    dist = np.linalg.norm((np.asarray(pred, np.float64) - gt) / heatmap_size, axis=-1)  # (N, J)
    hits = ((dist < threshold) & valid).sum(axis=0)
    counts = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / counts, np.nan), counts


def pck_parts(joint_set: JointSet, shared: Sequence[int] = ()) -> dict[str, tuple[int, ...]]:
    """The joints of each PCK part (SPEC §11.8), as the original code's group PCK defines them: each
    body-part group of §2.5 but the exclusive one (face = the paper's "head", front, back) limited to
    the shared joints, then "shared" and "exclusive" (the others). The shared joints are ``shared``,
    else those every source dataset annotates (:attr:`JointSet.shared_joints`): a single dataset's
    are all shared, so AP-10K's exclusive part is empty and its neck is only "shared"; a missing-joint
    split's are its shared joints (level 0: 0-4), as the original's ``level`` argument chose them.
    """
    shared = tuple(sorted(set(shared))) or joint_set.shared_joints
    parts = {g.name: tuple(j for j in g.joints if j in shared)
             for g in joint_set.part_groups if g.name != "exclusive"}
    parts["shared"] = shared
    parts["exclusive"] = tuple(j for j in range(joint_set.num_joints) if j not in shared)
    return parts


def pck_summary(per_joint: np.ndarray, counts: np.ndarray, joint_set: JointSet, shared: Sequence[int] = ()) -> dict:
    """PCK (mean over joints with GT), PCK_joints (list, None = no GT), and PCK_parts {part: PCK}
    pooled over the part's (instance, joint) pairs as the original's group PCK is (§11.8; None
    where a part has no GT joint; ``shared`` as in :func:`pck_parts`). ``per_joint``, ``counts``:
    the (J,) arrays of :func:`pck`."""
    known = per_joint[~np.isnan(per_joint)]
    hits = np.where(counts > 0, np.nan_to_num(per_joint) * counts, 0.0)

    def pooled(joints):
        n = counts[list(joints)].sum()
        return float(hits[list(joints)].sum() / n) if n else None

    return {
        "PCK": float(known.mean()) if len(known) else 0.0,
        "PCK_joints": [None if np.isnan(v) else float(v) for v in per_joint],
        "PCK_parts": {name: pooled(joints) for name, joints in pck_parts(joint_set, shared).items()},
    }


def format_metrics_table(metrics: dict, joint_set: JointSet | None = None) -> str:
    """A printable summary: the OKS row, PCK per part and per joint where present."""
    def fmt(v):
        return "   -  " if v is None or (isinstance(v, float) and v < 0) else f"{v:6.3f}"

    lines = [" ".join(f"{k:>6}" for k in METRIC_KEYS), " ".join(fmt(metrics.get(k)) for k in METRIC_KEYS)]
    if "PCK" in metrics:
        parts = "  ".join(f"{name} {fmt(v).strip()}" for name, v in metrics.get("PCK_parts", {}).items())
        lines.append(f"PCK@{PCK_THRESHOLD:g} (heatmap) {metrics['PCK']:.3f}" + (f"  |  {parts}" if parts else ""))
        if joint_set is not None and metrics.get("PCK_joints"):
            cells = [f"{name:<12}{fmt(v)}" for name, v in zip(joint_set.joints, metrics["PCK_joints"])]
            lines += ["  ".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]
    if "num_instances" in metrics:
        lines.append(f"{metrics['num_instances']} instances")
    return "\n".join(lines)


def check_output_dir(output_dir: str | os.PathLike, key: str = "OUTPUT_DIR") -> None:
    """Say (naming ``output_dir`` and the setting ``key``) that the outputs cannot go to that folder
    before an evaluation, not after it. Nothing is made: a failed evaluation leaves no empty folder."""
    problem = why_unwritable(output_dir)
    if problem:
        raise EvaluationError(f"{output_dir}: cannot write the evaluation's outputs there ({key}): {problem}")


def write_outputs(output_dir: str | os.PathLike, metrics: dict, results: list | None = None) -> None:
    """``metrics.json`` (and ``results.json``, the COCO results) under ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if results is not None:
        write_json_atomic(out / RESULTS_FILE, results)
    write_json_atomic(out / METRICS_FILE, metrics, indent=2)


# ----------------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSettings:
    """Evaluation knobs (config keys in brackets); defaults are the paper's."""

    input_size: int = 256          # MODEL.IMAGE_SIZE (square)
    heatmap_size: int = 64         # MODEL.HEATMAP_SIZE
    sigma: float = 2.0             # MODEL.SIGMA (only decides which GT joints PCK counts)
    flip_test: bool = True         # TEST.FLIP_TEST
    shift_heatmap: bool = True     # TEST.SHIFT_HEATMAP
    post_process: bool = True      # TEST.POST_PROCESS
    in_vis_thre: float = 0.2       # TEST.IN_VIS_THRE
    oks_thre: float = 0.9          # TEST.OKS_THRE
    protocol: str = "standard"     # TEST.PROTOCOL
    shared_joints: tuple[int, ...] = ()  # TEST.SHARED_JOINTS (() = the joint set's, §11.8)
    batch_size: int = 32           # TEST.BATCH_SIZE_PER_GPU
    workers: int = 0               # WORKERS
    cache_bytes: int = 1_500_000_000  # keep the uint8 crops in memory when they fit in this

    @classmethod
    def from_config(cls, cfg, protocol: str | None = None) -> EvalSettings:
        if not cfg.TEST.USE_GT_BBOX:
            raise EvaluationError("TEST.USE_GT_BBOX false: only GT boxes are supported (FreeNet evaluates on them)")
        (w, h), (hw, hh) = cfg.MODEL.IMAGE_SIZE, cfg.MODEL.HEATMAP_SIZE
        if w != h or hw != hh:
            raise EvaluationError(f"evaluation crops are square: MODEL.IMAGE_SIZE "
                                  f"{list(cfg.MODEL.IMAGE_SIZE)} and MODEL.HEATMAP_SIZE "
                                  f"{list(cfg.MODEL.HEATMAP_SIZE)} must have equal sides")
        return cls(input_size=int(w), heatmap_size=int(hw), sigma=float(cfg.MODEL.SIGMA),
                   flip_test=bool(cfg.TEST.FLIP_TEST), shift_heatmap=bool(cfg.TEST.SHIFT_HEATMAP),
                   post_process=bool(cfg.TEST.POST_PROCESS), in_vis_thre=float(cfg.TEST.IN_VIS_THRE),
                   oks_thre=float(cfg.TEST.OKS_THRE), protocol=protocol or cfg.TEST.PROTOCOL,
                   shared_joints=tuple(cfg.TEST.SHARED_JOINTS),
                   batch_size=int(cfg.TEST.BATCH_SIZE_PER_GPU), workers=int(cfg.WORKERS))


class _Crops(Dataset):
    """Record i -> its uint8 (3, S, S) evaluation crop."""

    def __init__(self, records: EvalRecords, input_size: int):
        self.paths = records.image_paths
        self.ann_ids = records.ann_ids
        self.matrices = crop_matrices(records.centres, records.scales, input_size)
        self.size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        crop = warp_crop(read_image(self.paths[i], int(self.ann_ids[i])), self.matrices[i], self.size)
        return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))


class Evaluator:
    """OKS mAP + PCK of a model on one val file (SPEC §11), built once and called per evaluation.

    ``evaluator(model, device)`` -> metrics dict with AP ... ARl, PCK, PCK_joints, PCK_parts,
    num_instances. The crops are decoded and warped once; when they fit in
    ``settings.cache_bytes`` they stay in memory (uint8), so later calls cost only the forward
    passes. For heatmaps that do not come from a network use :meth:`flip_average`,
    :meth:`decode` and :meth:`score` directly.
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, joint_set: JointSet | str,
                 settings: EvalSettings = EvalSettings(), fallback_roots: Mapping[str, str | os.PathLike] | None = None,
                 check_images: bool = True):
        self.joint_set = load_joint_set(joint_set) if isinstance(joint_set, (str, os.PathLike)) else joint_set
        self.settings = settings
        n = self.joint_set.num_joints
        if not all(isinstance(j, int) and 0 <= j < n for j in settings.shared_joints):
            raise EvaluationError(f"TEST.SHARED_JOINTS {list(settings.shared_joints)}: expected joint indices of "
                                  f"'{self.joint_set.name}' (0 to {n - 1})")
        self.ann_file = str(ann_file)
        data = in_joint_set_order(ann_file, load_coco_json(ann_file), self.joint_set)
        self.records = eval_records(ann_file, image_dir, self.joint_set, fallback_roots, data=data)
        if len(self.records) == 0:
            raise DataError(ann_file, "no evaluable instance (non-crowd, with keypoints and a usable box)")
        if check_images:
            missing = sorted({p for p in self.records.image_paths if not os.path.isfile(p)})
            if missing:
                first = self.records.image_paths.index(missing[0])
                raise DataError(ann_file, f"{len(missing)} evaluation images not found, e.g. {missing[0]} "
                                f"(image folder {image_dir})", int(self.records.ann_ids[first]))
        self.coco = coco_ground_truth(data, ann_file)
        self.sigmas = self.joint_set.sigmas_for(settings.protocol)
        self.flip_index = self.joint_set.flip_index
        r = self.records
        self.gt_peaks, self.gt_valid = gt_heatmap_peaks(r.keypoints, r.visibility, r.centres, r.scales,
                                                        settings.input_size, settings.heatmap_size, settings.sigma)
        self._crops: torch.Tensor | None = None
        self._cache = len(r) * 3 * settings.input_size ** 2 <= settings.cache_bytes

    @classmethod
    def from_config(cls, cfg, joint_set: JointSet | None = None, protocol: str | None = None,
                    check_images: bool = True) -> Evaluator:
        """From a yacs config: data from DATASET.VAL_ANN_FILE/VAL_IMAGE_DIR or the data-root layout."""
        joint_set = joint_set or load_joint_set(cfg.DATASET.JOINTS)
        ann_file, image_dir, fallback = val_data(cfg)
        return cls(ann_file, image_dir, joint_set, EvalSettings.from_config(cfg, protocol), fallback, check_images)

    def __len__(self) -> int:
        return len(self.records)

    def __call__(self, model: nn.Module, device: torch.device | str | None = None, output_dir=None,
                 amp: bool = False, progress: bool = False, fold: bool = True) -> dict:
        """Evaluate ``model`` (left as it came in); writes results when ``output_dir``."""
        keypoints, maxvals, argmax = self.predict(model, device, amp, progress, fold)
        return self.score(keypoints, maxvals, argmax, output_dir)

    # -- model -> keypoints ----------------------------------------------------------------------

    def predict(self, model: nn.Module, device=None, amp: bool = False, progress: bool = False, fold: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched inference over all records: keypoints (N, J, 2) image px, maxvals (N, J),
        raw heatmap argmax (N, J, 2) of the flip-averaged output (for PCK). ``fold``: an HRNet runs as
        a copy with its BatchNorm folded into the convolutions (:func:`~freenet.models.fold_batchnorm`:
        the same outputs to float rounding, faster)."""
        if device is None:
            device = next(model.parameters()).device
        device = torch.device(device)
        centres = torch.from_numpy(self.records.centres).to(device)
        scales = torch.from_numpy(self.records.scales).to(device)
        outputs = []
        was_training = model.training
        net = fold_batchnorm(model) if fold and isinstance(model, PoseHighResolutionNet) else model.eval()
        try:
            with torch.no_grad():
                for start, crops in self._crop_batches(progress, device):
                    x = normalize_images(crops.to(device, non_blocking=True))
                    x = x.contiguous(memory_format=torch.channels_last)  # NHWC convolutions are faster
                    with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                        # One forward for both views: eval-mode BatchNorm makes samples independent.
                        heat = net(torch.cat([x, x.flip(3)]) if self.settings.flip_test else x).float()
                    if self.settings.flip_test:
                        heat = self.flip_average(*heat.chunk(2))
                    outputs.append(self.decode(heat, slice(start, start + len(crops)), centres, scales))
        finally:
            model.train(was_training)
        # One transfer at the end instead of a device sync per batch.
        return tuple(torch.cat(parts).cpu().numpy() for parts in zip(*outputs))

    def flip_average(self, heatmaps: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """(output + flip_back(output of the mirrored crop)) / 2 (SPEC §11.3)."""
        return (heatmaps + flip_back(flipped, self.flip_index, self.settings.shift_heatmap)) * 0.5

    def decode(self, heatmaps: torch.Tensor, index, centres: torch.Tensor | None = None,
               scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmaps (B, J, H, W) of records ``index`` -> (keypoints (B, J, 2) image px, maxvals (B, J),
        raw argmax (B, J, 2) heatmap px)."""
        size = self.settings.heatmap_size
        if heatmaps.shape[-2:] != (size, size):
            raise EvaluationError(f"the model outputs {tuple(heatmaps.shape[-2:])} heatmaps but the evaluation "
                                  f"expects {size}x{size} (MODEL.HEATMAP_SIZE)")
        if heatmaps.shape[1] != self.joint_set.num_joints:
            raise EvaluationError(f"the model outputs {heatmaps.shape[1]} joints but the joint set "
                                  f"'{self.joint_set.name}' has {self.joint_set.num_joints}")
        centres = torch.from_numpy(self.records.centres) if centres is None else centres
        scales = torch.from_numpy(self.records.scales) if scales is None else scales
        return decode_heatmaps(heatmaps, centres[index], scales[index], self.settings.post_process)

    def _crop_batches(self, progress: bool, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
        """(first record index, uint8 crops (B, 3, S, S)) in record order; from the cache once filled."""
        n, bs = len(self.records), self.settings.batch_size
        bar = tqdm(total=n, desc="eval", unit="img", leave=False, disable=not progress, dynamic_ncols=True)
        try:
            if self._crops is not None:
                for start in range(0, n, bs):
                    yield start, self._crops[start:start + bs]
                    bar.update(min(bs, n - start))
                return
            size = self.settings.input_size
            cache = torch.empty((n, 3, size, size), dtype=torch.uint8) if self._cache else None
            loader = DataLoader(_Crops(self.records, size), batch_size=bs, shuffle=False,
                                num_workers=self.settings.workers, pin_memory=device.type == "cuda",
                                worker_init_fn=init_worker)
            start = 0
            try:
                for crops in loader:
                    if cache is not None:
                        cache[start:start + len(crops)] = crops
                    yield start, crops
                    start += len(crops)
                    bar.update(len(crops))
            except (DataError, RuntimeError) as e:
                clean = from_worker(e)  # a worker's DataError, without the worker's traceback
                if clean is None:
                    raise
                raise clean from None
            if cache is not None:
                # On a GPU the cache lives there: later evaluations copy nothing to the device.
                self._crops = cache.to(device) if device.type == "cuda" else cache
        finally:
            bar.close()

    # -- keypoints -> metrics --------------------------------------------------------------------

    def results(self, keypoints: np.ndarray, maxvals: np.ndarray) -> list[dict]:
        """Rescoring + OKS-NMS (SPEC §11.5) -> COCO keypoint results."""
        r = self.records
        scores = instance_scores(maxvals, self.settings.in_vis_thre)
        keep = oks_nms(r.image_ids, keypoints, scores, r.areas, self.sigmas, self.settings.oks_thre)
        return coco_results(r, keypoints, maxvals, scores, keep)

    def score(self, keypoints: np.ndarray, maxvals: np.ndarray, argmax: np.ndarray | None = None,
              output_dir=None) -> dict:
        """Metrics of per-record predictions (keypoints (N, J, 2) image px, maxvals (N, J)); PCK when
        the raw heatmap argmax (N, J, 2) is given. Writes results/metrics JSON under ``output_dir``."""
        results = self.results(np.asarray(keypoints), np.asarray(maxvals))
        metrics = self.metrics_of(results, argmax)
        if output_dir is not None:
            write_outputs(output_dir, metrics, results)
        return metrics

    def metrics_of(self, results: list[dict], argmax: np.ndarray | None = None) -> dict:
        """OKS AP/AR of COCO results (from :meth:`results`), PCK when the raw argmax is given, and
        the number of instances."""
        metrics = coco_keypoint_metrics(self.coco, results, self.sigmas)
        if argmax is not None:
            per_joint, counts = pck(argmax, self.gt_peaks, self.gt_valid, self.settings.heatmap_size)
            metrics.update(pck_summary(per_joint, counts, self.joint_set, self.settings.shared_joints))
        metrics["num_instances"] = len(self.records)
        return metrics


# ----------------------------------------------------------------------------------------------
# Config plumbing for eval_ap10k.py
# ----------------------------------------------------------------------------------------------

def val_data(cfg) -> tuple[Path, Path, dict]:
    """(annotation file, image folder, fallback image folders) of the validation set.

    DATASET.VAL_ANN_FILE (+ DATASET.VAL_IMAGE_DIR, default: the annotation file's folder) when
    set, else the SPEC §3.1 layout under DATASET.ROOT for DATASET.DATASET / DATASET.VAL_SET.
    """
    if cfg.DATASET.VAL_ANN_FILE:
        ann_file = Path(cfg.DATASET.VAL_ANN_FILE)
        image_dir = Path(cfg.DATASET.VAL_IMAGE_DIR) if cfg.DATASET.VAL_IMAGE_DIR else ann_file.parent
        if not ann_file.is_file():
            raise DataError(ann_file, "validation annotation file (DATASET.VAL_ANN_FILE) not found")
        return ann_file, image_dir, {}
    layout = DataLayout(cfg.DATASET.ROOT)
    try:
        ann_file = layout.annotation_file(cfg.DATASET.DATASET, cfg.DATASET.VAL_SET)
    except KeyError as e:
        raise EvaluationError(f"DATASET.DATASET: {e.args[0]}") from None
    if not ann_file.is_file():
        raise DataError(ann_file, "validation annotation file not found (set DATASET.ROOT, or DATASET.VAL_ANN_FILE "
                        "and DATASET.VAL_IMAGE_DIR).\n" + layout.describe([cfg.DATASET.DATASET]))
    return ann_file, layout.image_dir(cfg.DATASET.DATASET), layout.fallback_roots(cfg.DATASET.DATASET)


def evaluate_from_config(cfg, protocol: str | None = None, results_file: str = "", progress: bool = True
                         ) -> tuple[dict, list | None, JointSet]:
    """What ``eval_ap10k.py`` does: score TEST.MODEL_FILE (or an existing results file) on the val set.

    Returns the metrics, the COCO results (None when scoring a results file) and the joint set. The
    caller shows the metrics, then writes them under OUTPUT_DIR (:func:`write_outputs`), so a failed
    write loses no result; OUTPUT_DIR is made and tried before any work (:func:`check_output_dir`).
    """
    from freenet.checkpoint import load_checkpoint, load_model_weights
    from freenet.device import resolve_device
    from freenet.inference import describe_weights, training_record

    joint_set = configured_joint_set(cfg)
    protocol = protocol or cfg.TEST.PROTOCOL
    sigmas = joint_set.sigmas_for(protocol)
    results_file = results_file or cfg.TEST.RESULTS_FILE
    if not results_file and not cfg.TEST.MODEL_FILE:
        raise EvaluationError("no model to evaluate: set TEST.MODEL_FILE <checkpoint> (or give --results FILE)")
    check_output_dir(cfg.OUTPUT_DIR)
    if results_file:
        ann_file = val_data(cfg)[0]
        # The results are in the joint set's order (as this tool writes them); so must the GT be (§2.2).
        gt = coco_ground_truth(in_joint_set_order(ann_file, load_coco_json(ann_file), joint_set), ann_file)
        metrics = coco_keypoint_metrics(gt, results_file, sigmas)
        metrics["results_file"] = str(results_file)
        return metrics, None, joint_set
    try:
        device = resolve_device(cfg.DEVICE)
    except RuntimeError as e:  # e.g. DEVICE cuda on a machine without CUDA
        raise EvaluationError(str(e)) from None
    model = PoseHighResolutionNet(num_joints=joint_set.num_joints, width=cfg.MODEL.WIDTH)
    checkpoint = load_checkpoint(cfg.TEST.MODEL_FILE)
    where = load_model_weights(model, cfg.TEST.MODEL_FILE, cfg.TEST.MODEL_KEY, checkpoint)
    trained, size = training_record(checkpoint, cfg.TEST.MODEL_FILE), int(cfg.MODEL.IMAGE_SIZE[0])
    if trained.input_size not in (None, size):   # a 64-px model scored on 256-px crops scores about 0
        t = trained.input_size
        said = "" if trained.source == str(cfg.TEST.MODEL_FILE) else f" ({trained.source} says so)"
        log.warning("%s was trained on %d-px crops%s but is evaluated on %d-px ones (MODEL.IMAGE_SIZE); to score "
                    "it as trained, add MODEL.IMAGE_SIZE [%d,%d] MODEL.HEATMAP_SIZE [%d,%d]", cfg.TEST.MODEL_FILE,
                    t, said, size, t, t, t // 4, t // 4)
    evaluator = Evaluator.from_config(cfg, joint_set, protocol)
    model = model.to(device, memory_format=torch.channels_last)
    keypoints, maxvals, argmax = evaluator.predict(model, device, progress=progress)
    results = evaluator.results(keypoints, maxvals)
    metrics = evaluator.metrics_of(results, argmax)
    metrics.update({"model_file": str(cfg.TEST.MODEL_FILE), "model_key": where,
                    "weights": describe_weights(checkpoint, where, cfg.TEST.MODEL_KEY, "TEST.MODEL_KEY"),
                    "protocol": protocol})
    return metrics, results, joint_set
