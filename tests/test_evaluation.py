"""Evaluation (SPEC §11): geometry, decoding, rescoring, OKS-NMS, metrics, PCK, the CLI.

The "oracle" tests feed GT-derived heatmaps through the decode / flip / back-projection /
rescoring path and require near-perfect AP: once without pixels on the real val files, once
through the real image path (read, crop, network call) on the real sample annotations, where a
parameter-free "network" recovers the crop geometry from the pixels alone.
"""
from __future__ import annotations

import copy
import errno
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from freenet.config import load_config
from freenet.data.coco import in_joint_set_order
from freenet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from freenet.errors import DataError
from freenet.errors import EvaluationError
from freenet.evaluation import (METRIC_KEYS, EvalSettings, Evaluator, box_centre_scale, coco_keypoint_metrics,
                                crop_matrices, decode_heatmaps, eval_records, flip_back, format_metrics_table,
                                gt_heatmap_peaks, heatmap_to_image, instance_scores, keypoint_oks, oks_nms, pck,
                                pck_parts, pck_summary, val_data, warp_crop)
from freenet.heatmaps import encode_keypoints, render_gaussians
from freenet.joints import JointSetError, load_joint_set
from freenet.models import PoseHighResolutionNet
from freenet.profiling import dispatched_ops

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ANN = SHARED / "freenet" / "annotation_files"
MMPOSE = SHARED / "mmpose_samples"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared test data not found at {SHARED}")

VAL_FILES = [("animal_pose_val.json", "animalpose"), ("ap_10k_animal_pose_union_val.json", "union21")]
SAMPLES = [("ap10k", "test_ap10k.json", "ap10k"), ("animalpose", "test_animalpose.json", "animalpose_mmpose")]


# ----------------------------------------------------------------------------------------------
# Pure pieces, hand-computed
# ----------------------------------------------------------------------------------------------

def test_box_centre_scale_clips_squares_and_pads():
    boxes = np.array([[10, 20, 101, 51], [-5, -8, 50, 30], [50, 10, 1, 40]], dtype=float)
    sizes = np.array([[100, 200], [100, 200], [100, 200]], dtype=float)
    centres, scales, usable = box_centre_scale(boxes, sizes)
    # x2 = min(99, 10 + 100) = 99, y2 = min(199, 20 + 50) = 70: w 89, h 50.
    np.testing.assert_allclose(centres[0], [10 + 89 / 2, 20 + 50 / 2])
    np.testing.assert_allclose(scales[0], 89 / 200 * 1.25, rtol=1e-6)
    # Clipped at 0: x1 = 0, x2 = 49; y1 = 0, y2 = 29.
    np.testing.assert_allclose(centres[1], [24.5, 14.5])
    np.testing.assert_allclose(scales[1], 49 / 200 * 1.25, rtol=1e-6)
    # w = 1 -> x2 = x1: not usable.
    assert usable.tolist() == [True, True, False]
    assert centres.dtype == scales.dtype == np.float32


def test_crop_and_back_projection_are_inverse_and_centre_lands_on_s_over_2():
    rng = np.random.default_rng(0)
    centres = rng.uniform(50, 500, (5, 2))
    scales = rng.uniform(0.3, 3.0, 5)
    m = crop_matrices(centres, scales, 256)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", m, np.c_[centres, np.ones(5)]), 128.0)
    # 200·s image px span the 256 px crop.
    np.testing.assert_allclose(m[:, 0, 0] * 200 * scales, 256.0)
    points = centres[:, None, :] + rng.uniform(-100, 100, (5, 7, 2))
    crop = np.einsum("nij,nkj->nki", m, np.concatenate([points, np.ones((5, 7, 1))], -1))
    back = heatmap_to_image(torch.from_numpy(crop / 4), torch.from_numpy(centres), torch.from_numpy(scales), (64, 64))
    np.testing.assert_allclose(back.numpy(), points, atol=1e-9)


def test_warp_crop_moves_a_blob_where_the_matrix_says():
    h, w = 200, 300
    p = np.array([151.3, 82.7])
    yy, xx = np.mgrid[0:h, 0:w]
    blob = 255 * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 4.0 ** 2))
    image = np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)
    centre, scale = np.array([[140.0, 90.0]]), np.array([0.5])  # 100 image px -> 256 crop px
    m = crop_matrices(centre, scale, 256)[0]
    crop = warp_crop(image, m, 256)[..., 0].astype(np.float64)
    cy, cx = np.mgrid[0:256, 0:256]
    centroid = np.array([(crop * cx).sum(), (crop * cy).sum()]) / crop.sum()
    np.testing.assert_allclose(centroid, m[:, :2] @ p + m[:, 2], atol=0.1)


def test_flip_back_swaps_pairs_and_shifts_one_column():
    x = torch.arange(3 * 4, dtype=torch.float32).reshape(1, 3, 1, 4)  # channels [0..3], [4..7], [8..11]
    out = flip_back(x, [1, 0, 2], shift=True)
    # channel 0 <- mirrored channel 1 = [7, 6, 5, 4], then shifted right with column 0 kept.
    assert out[0, :, 0].tolist() == [[7, 7, 6, 5], [3, 3, 2, 1], [11, 11, 10, 9]]
    assert flip_back(x, [1, 0, 2], shift=False)[0, :, 0].tolist() == [[7, 6, 5, 4], [3, 2, 1, 0], [11, 10, 9, 8]]


def test_decode_heatmaps_quarter_offset_then_back_projection():
    heat = torch.zeros(1, 3, 64, 64)
    heat[0, 0, 20, 10] = 1.0
    heat[0, 0, 20, 11], heat[0, 0, 20, 9] = 0.5, 0.2  # right neighbour higher -> +0.25
    heat[0, 0, 19, 10], heat[0, 0, 21, 10] = 0.4, 0.1  # upper neighbour higher -> -0.25
    heat[0, 1, 30, 1] = 0.7                             # x = 1: no offset (strict 1 < x)
    heat[0, 1, 30, 2] = 0.3
    heat[0, 2] = -1.0                                   # peak <= 0: (0, 0) before back-projection
    centres, scales = np.array([[100.0, 50.0]], np.float32), np.array([0.64], np.float32)  # 200s/64 = 2 px
    coords, maxvals, argmax = decode_heatmaps(heat, centres, scales)
    np.testing.assert_allclose(coords[0].numpy(), [[100 + (10.25 - 32) * 2, 50 + (19.75 - 32) * 2],
                                                   [100 + (1 - 32) * 2, 50 + (30 - 32) * 2],
                                                   [100 - 64, 50 - 64]], atol=1e-4)
    np.testing.assert_allclose(maxvals[0].numpy(), [1.0, 0.7, -1.0])
    assert argmax[0].tolist() == [[10, 20], [1, 30], [0, 0]]  # heatmap px, before the offset (PCK's input)
    raw, _, _ = decode_heatmaps(heat, centres, scales, post_process=False)
    np.testing.assert_allclose(raw[0, 0].numpy(), [100 + (10 - 32) * 2, 50 + (20 - 32) * 2], atol=1e-4)


def test_instance_scores_average_joints_above_the_threshold():
    maxvals = np.array([[0.1, 0.5, 0.9, 0.2], [0.1, 0.2, 0.0, -1.0]])
    np.testing.assert_allclose(instance_scores(maxvals, 0.2), [(0.5 + 0.9) / 2, 0.0])
    np.testing.assert_allclose(instance_scores(maxvals, 0.2, np.array([0.5, 1.0])), [0.35, 0.0])


def test_keypoint_oks_matches_the_formula():
    sigmas = np.array([0.1, 0.05])
    a = np.array([[0.0, 0.0], [10.0, 0.0]])
    b = np.array([[3.0, 4.0], [10.0, 0.0]])
    area_a, area_b = 900.0, 1100.0
    e0 = 25 / (2 * 0.1) ** 2 / ((area_a + area_b) / 2 + np.spacing(1)) / 2
    assert keypoint_oks(a, b, area_a, area_b, sigmas) == pytest.approx((np.exp(-e0) + 1.0) / 2, rel=1e-12)


def test_oks_nms_keeps_the_best_of_near_duplicates_per_image():
    sigmas = np.full(2, 0.1)
    base = np.array([[100.0, 100.0], [150.0, 120.0]])
    kps = np.stack([base, base + 0.5, base + 300, base, base + 1.0])  # 0, 1 near-duplicates; 2 far; 3 other image
    image_ids = np.array([7, 7, 7, 3, 7])
    scores = np.array([0.8, 0.9, 0.7, 0.5, 0.85])
    areas = np.full(5, 100.0 ** 2)
    keep = oks_nms(image_ids, kps, scores, areas, sigmas, 0.9)
    # Image 7 (first seen): 1 (0.9) suppresses 4 (0.85) and 0 (0.8); 2 survives. Then image 3.
    assert keep.tolist() == [1, 2, 3]
    assert keypoint_oks(kps[1], kps[0], 1e4, 1e4, sigmas) > 0.9 > keypoint_oks(kps[1], kps[2], 1e4, 1e4, sigmas)
    # With a strict threshold nothing is suppressed; order is score-descending within each image.
    assert oks_nms(image_ids, kps, scores, areas, sigmas, 1.0).tolist() == [1, 4, 0, 2, 3]
    assert oks_nms(image_ids[:0], kps[:0], scores[:0], areas[:0], sigmas).tolist() == []


def test_oks_nms_suppresses_only_above_the_threshold():
    """Suppressed when OKS > threshold: identical detections (OKS exactly 1) both survive 1.0."""
    sigmas = np.full(2, 0.1)
    kps = np.array([[[100.0, 100.0], [150.0, 120.0]]] * 2)
    areas = np.full(2, 100.0 ** 2)
    assert keypoint_oks(kps[0], kps[1], 1e4, 1e4, sigmas) == 1.0
    assert oks_nms(np.array([5, 5]), kps, np.array([0.9, 0.8]), areas, sigmas, 1.0).tolist() == [0, 1]


def test_pck_counts_strictly_within_3_2_heatmap_px_and_pools_over_the_set():
    gt = np.zeros((3, 2, 2))
    gt[:, :] = [20, 20]
    pred = gt.copy()
    pred[0, 0] += [3, 1]   # sqrt(10) = 3.16 < 3.2: hit
    pred[1, 0] += [2, 3]   # sqrt(13): miss
    pred[2, 0] += [3, 1.5]  # sqrt(11.25) = 3.35: miss
    pred[:, 1] += [0, 1]   # all hits, but only one is valid
    valid = np.array([[True, False], [True, False], [True, True]])
    acc, counts = pck(pred, gt, valid, 64)
    np.testing.assert_allclose(acc, [1 / 3, 1.0])
    assert counts.tolist() == [3, 1]
    acc, _ = pck(pred, gt, np.zeros_like(valid), 64)
    assert np.isnan(acc).all()


def test_gt_heatmap_peaks_follow_the_encoding_and_drop_off_map_joints():
    # 200·s = 256 px: the crop is the image around the centre at scale 1.
    centres, scales = np.array([[100.0, 100.0]]), np.array([1.28])
    kps = np.array([[[100.0, 100.0], [100.0 - 128 - 26, 101.0], [100.0 - 128 - 30, 100.0], [110.0, 90.0]]])
    vis = np.array([[2.0, 1.0, 2.0, 0.0]])
    peaks, valid = gt_heatmap_peaks(kps, vis, centres, scales, 256, 64)
    # u = 128 -> cell 32; u = -26 -> int(-6.0) = -6, window reaches column 0 -> peak clipped to 0;
    # u = -30 -> cell -7, window ends at -1: off the map; joint 3 not annotated.
    assert peaks[0, 0].tolist() == [32, 32] and peaks[0, 1].tolist() == [0, 32]
    assert valid[0].tolist() == [True, True, False, False]
    # the same rule as the training encoding (§5.1)
    crop = kps[0, :3] - 100.0 + 128
    assert encode_keypoints(crop, vis[0, :3])[1].tolist() == [1.0, 1.0, 0.0]


def test_gt_heatmap_peaks_centre_the_crop_at_input_size_over_2():
    """The box centre lands on u = input_size / 2 = 128, not 127.5 (the crop matrices' convention)."""
    centres, scales = np.array([[100.0, 100.0]]), np.array([1.28])  # k = 256 / (200 * 1.28) = 1
    kps = np.array([[[102.0, 100.0]]])
    peaks, valid = gt_heatmap_peaks(kps, np.array([[2.0]]), centres, scales, 256, 64)
    # u = 128 + 2 = 130 -> int(130 / 4 + 0.5) = int(33.0) = 33 (from 127.5: int(32.875) = 32)
    assert peaks[0, 0].tolist() == [33, 32] and valid[0].tolist() == [True]


def test_pck_parts_are_the_original_group_pck_joints():
    """§11.8: head (face), front, back over the shared joints, then shared and exclusive; union-21's are
    the lists of the original code's group PCK, union-24's follow from TigDog lacking the nose and 17-20."""
    front, back = (5, 6, 7, 8, 9, 10), (4, 11, 12, 13, 14, 15, 16)
    assert pck_parts(load_joint_set("ap10k")) == {
        "face": (0, 1, 2), "front": front, "back": back, "shared": tuple(range(17)), "exclusive": ()}
    assert pck_parts(load_joint_set("union21")) == {
        "face": (0, 1, 2), "front": front, "back": back, "shared": (0, 1, 2, *range(4, 17)),
        "exclusive": (3, 17, 18, 19, 20)}
    assert pck_parts(load_joint_set("union24")) == {
        "face": (0, 1), "front": front, "back": back, "shared": (0, 1, *range(4, 17)),
        "exclusive": (2, 3, *range(17, 24))}


def test_pck_parts_of_a_missing_joint_split_take_its_shared_joints():
    """TEST.SHARED_JOINTS: level 0 of the AP-10K split shares eyes, nose, neck and tail (§3.3); the parts
    are then the original's level-0 groups (its front legs and back legs are exclusive)."""
    cfg = load_config(REPO / "experiments/ap10k/freenet_split.yaml", ["TEST.SHARED_JOINTS", "[0, 1, 2, 3, 4]"])
    settings = EvalSettings.from_config(cfg)
    assert settings.shared_joints == (0, 1, 2, 3, 4)
    assert pck_parts(load_joint_set("ap10k"), settings.shared_joints) == {
        "face": (0, 1, 2), "front": (), "back": (4,), "shared": (0, 1, 2, 3, 4), "exclusive": tuple(range(5, 17))}
    summary = pck_summary(np.full(17, 0.5), np.ones(17, dtype=int), load_joint_set("ap10k"), (0, 1, 2, 3, 4))
    assert summary["PCK_parts"]["front"] is None and summary["PCK_parts"]["exclusive"] == 0.5
    with pytest.raises(EvaluationError, match=r"TEST.SHARED_JOINTS \[0, 17\]: expected joint indices of 'ap10k' "
                                              r"\(0 to 16\)"):
        Evaluator("never-read.json", ".", "ap10k", EvalSettings(shared_joints=(0, 17)))


def test_pck_summary_pools_each_part_over_its_joints():
    """PCK is the mean over joints with GT; a part's PCK pools its (instance, joint) pairs (§11.8)."""
    counts = np.arange(1, 18)                  # joint j has j + 1 GT joints
    counts[2] = 0                              # ... but the nose none
    per_joint = np.arange(17) / 16
    per_joint[2] = np.nan
    summary = pck_summary(per_joint, counts, load_joint_set("ap10k"))
    assert summary["PCK"] == pytest.approx((np.arange(17).sum() - 2) / 16 / 16)
    parts = summary["PCK_parts"]
    assert parts["face"] == pytest.approx((0 * 1 + 1 / 16 * 2) / 3)        # not the joints' mean 1/32
    assert parts["front"] == pytest.approx(sum(j / 16 * (j + 1) for j in range(5, 11)) / sum(range(6, 12)))
    assert parts["exclusive"] is None                                       # AP-10K alone: all joints shared
    assert summary["PCK_joints"][16] == 1.0 and summary["PCK_joints"][2] is None


def test_empty_and_scoreless_results_give_zero_metrics():
    gt = _tiny_gt()
    assert coco_keypoint_metrics(gt, [], [0.1] * 2) == {k: 0.0 for k in METRIC_KEYS}
    zero = [{"image_id": 1, "category_id": 1, "keypoints": [10, 10, 0, 20, 20, 0], "score": 0.0}]
    assert coco_keypoint_metrics(gt, zero, [0.1] * 2) == {k: 0.0 for k in METRIC_KEYS}


def test_results_that_do_not_belong_to_the_ground_truth_fail_clearly(tmp_path):
    gt = _tiny_gt()
    bad_image = [{"image_id": 99, "category_id": 1, "keypoints": [10, 10, 1, 20, 20, 1], "score": 1.0}]
    with pytest.raises(DataError, match="not in the ground truth"):
        coco_keypoint_metrics(gt, bad_image, [0.1] * 2)
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [1, 1, 1], "score": 1}]))
    with pytest.raises(DataError, match=r"r\.json.*expected 3\*2"):
        coco_keypoint_metrics(gt, path, [0.1] * 2)


def test_ground_truth_scores_as_the_records_read_it_where_fields_are_missing(tmp_path):
    """No ``category_id`` (records say 1), no ``categories``, a crowd region with a box only: COCOeval
    sees the same (the region ignored), so the GT itself scores AP 1; a file with no evaluable
    instance is the evaluator's DataError naming it."""
    from freenet.evaluation import coco_ground_truth

    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
            "annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 50, 50], "area": 2500,
                             "keypoints": [10, 10, 2, 20, 20, 2]},
                            {"id": 6, "image_id": 1, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 1}]}
    given = copy.deepcopy(data)
    gt = coco_ground_truth(data)
    assert data == given  # the caller's dict is left as it was
    assert gt.getCatIds() == [1] and gt.anns[6]["num_keypoints"] == 0
    found = [{"image_id": 1, "category_id": 1, "keypoints": [10, 10, 1, 20, 20, 1], "score": 1.0}]
    metrics = coco_keypoint_metrics(gt, found, [0.1] * 2)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    with pytest.raises(DataError, match=r"\(id 8\): annotation has no 'bbox'"):
        coco_ground_truth({"images": data["images"], "annotations": [{"id": 8, "image_id": 1, "area": 1,
                                                                      "keypoints": [1, 1, 2, 2, 2, 2]}]})

    unlabeled = {"images": data["images"], "annotations": [{"id": 7, "image_id": 1, "bbox": [0, 0, 50, 50],
                                                           "area": 2500, "keypoints": [0] * 51, "num_keypoints": 0}]}
    path = tmp_path / "unlabeled_val.json"
    path.write_text(json.dumps(unlabeled))
    with pytest.raises(DataError, match=r"unlabeled_val.json: no evaluable instance"):
        Evaluator(path, tmp_path, "ap10k", check_images=False)


def _tiny_gt():
    from freenet.evaluation import coco_ground_truth
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500,
                             "keypoints": [10, 10, 2, 20, 20, 2], "num_keypoints": 2, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}]}
    return coco_ground_truth(data)


# ----------------------------------------------------------------------------------------------
# Metrics against pycocotools, on the real val files
# ----------------------------------------------------------------------------------------------

def _by_hand(ann_file, results, sigmas) -> dict:
    coco = COCO(str(ann_file))
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(sigmas)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return dict(zip(METRIC_KEYS, ev.stats.tolist()))


def _gt_results(ann_file, score=1.0):
    data = json.loads(Path(ann_file).read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": list(map(float, a["keypoints"])),
             "score": score} for a in data["annotations"] if a.get("num_keypoints", 0) > 0]


def _perturbed(results, sigmas, areas, seed):
    """GT + noise of up to about one OKS sigma, random scores, some dropped, some duplicated."""
    rng = np.random.default_rng(seed)
    out = []
    for r, area in zip(results, areas):
        if rng.random() < 0.1:
            continue
        kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
        noise = rng.normal(size=(len(kp), 2)) * (2 * sigmas[:, None]) * np.sqrt(area) * rng.uniform(0, 0.8)
        kp[:, :2] += noise
        kp[:, 2] = rng.uniform(0.05, 1.0, len(kp))
        out.append({**r, "keypoints": kp.ravel().tolist(), "score": float(rng.uniform(0.1, 1.0))})
        if rng.random() < 0.1:  # a worse duplicate
            dup = kp.copy()
            dup[:, :2] += rng.normal(size=(len(kp), 2)) * 20
            out.append({**r, "keypoints": dup.ravel().tolist(), "score": float(rng.uniform(0.0, 0.5))})
    return out


@needs_data
@pytest.mark.parametrize("name,joints", VAL_FILES)
def test_metrics_equal_pycocotools_by_hand_on_perturbed_gt(name, joints):
    ann_file = ANN / name
    sigmas = load_joint_set(joints).sigmas_for("standard")
    areas = [a["area"] for a in json.loads(ann_file.read_text())["annotations"] if a.get("num_keypoints", 0) > 0]
    results = _perturbed(_gt_results(ann_file), sigmas, areas, seed=len(name))
    ours = coco_keypoint_metrics(ann_file, results, sigmas)
    assert ours == _by_hand(ann_file, results, sigmas)
    assert 0.2 < ours["AP"] < 0.95  # the perturbation is neither trivial nor hopeless


@needs_data
@pytest.mark.parametrize("name,joints", VAL_FILES + [
    pytest.param("ap10k_animalpose_tigdog_val.json", "union24", marks=pytest.mark.slow)])
def test_exact_gt_predictions_score_ap_one(name, joints):
    metrics = coco_keypoint_metrics(ANN / name, _gt_results(ANN / name), load_joint_set(joints).sigmas)
    assert metrics["AP"] == 1.0 and metrics["AR"] == 1.0 and metrics["AP75"] == 1.0


@needs_data
def test_scoreless_detections_are_dropped_before_cocoeval():
    ann_file = ANN / "animal_pose_val.json"
    sigmas = load_joint_set("animalpose").sigmas
    results = _gt_results(ann_file)
    scoreless = copy.deepcopy(results[:50])
    for r in scoreless:
        r["keypoints"][2::3] = [0.0] * (len(r["keypoints"]) // 3)
    mixed = scoreless + results[50:]
    ours = coco_keypoint_metrics(ann_file, mixed, sigmas)
    assert ours == _by_hand(ann_file, results[50:], sigmas)
    assert ours["AR"] < _by_hand(ann_file, mixed, sigmas)["AR"]  # pycocotools alone would count them


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

@needs_data
def test_eval_records_of_animal_pose_val():
    records = eval_records(ANN / "animal_pose_val.json", "/imgs", load_joint_set("animalpose"))
    data = json.loads((ANN / "animal_pose_val.json").read_text())
    # 614 instances, 5 without keypoints; every box is usable.
    assert len(records) == 609 == sum(a["num_keypoints"] > 0 for a in data["annotations"])
    first_image = data["images"][0]["id"]
    assert records.image_ids[0] == first_image  # images in file order
    ann = next(a for a in data["annotations"] if a["id"] == records.ann_ids[0])
    x, y, w, h = ann["bbox"]
    img = data["images"][0]
    x2, y2 = min(img["width"] - 1, x + w - 1), min(img["height"] - 1, y + h - 1)
    np.testing.assert_allclose(records.centres[0], [(x + x2) / 2, (y + y2) / 2])
    np.testing.assert_allclose(records.scales[0], max(x2 - x, y2 - y) / 200 * 1.25, rtol=1e-6)
    np.testing.assert_allclose(records.areas[0], (records.scales[0].astype(float) * 200) ** 2)
    assert records.image_paths[0] == f"/imgs/{img['file_name']}"


@needs_data
def test_eval_records_reject_a_joint_set_of_the_wrong_size():
    with pytest.raises(DataError, match=r"animal_pose_val\.json \(id \d+\).*expected 3\*17"):
        eval_records(ANN / "animal_pose_val.json", "/imgs", load_joint_set("ap10k"))


@pytest.mark.parametrize("field, value, message", [
    ("keypoints", [1, None, 2] + [0] * 48, "'keypoints' must contain only numbers"),
    ("bbox", ["0", 0, 5, 5], r"'bbox' must be 4 numbers"),
])
def test_eval_records_name_the_annotation_with_a_value_that_is_not_a_number(tmp_path, field, value, message):
    ann = {"id": 7, "image_id": 1, "bbox": [0, 0, 5, 5], "keypoints": [1, 2, 2] + [0] * 48, "area": 25}
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
            "annotations": [{**ann, field: value}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"bad\.json \(id 7\): {message}"):
        eval_records(path, tmp_path, load_joint_set("ap10k"))


@needs_data
def test_union_images_fall_back_to_their_source_folders(tmp_path):
    ann_file = ANN / "ap_10k_animal_pose_union_val.json"
    data = json.loads(ann_file.read_text())
    roots = {"ap10k": tmp_path / "ap_10k", "animalpose": tmp_path / "animal_pose"}
    for img in data["images"]:
        folder = roots["ap10k" if img["from"] == "ap_10k" else "animalpose"]
        (folder / img["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / img["file_name"]).touch()
    (tmp_path / "union").mkdir()
    special = data["images"][0]
    (tmp_path / "union" / special["file_name"]).touch()  # present in the union folder itself: wins
    records = eval_records(ann_file, tmp_path / "union", load_joint_set("union21"), roots)
    source = {img["id"]: img["from"] for img in data["images"]}
    for img_id, path in zip(records.image_ids.tolist(), records.image_paths):
        if img_id == special["id"]:
            assert path == str(tmp_path / "union" / special["file_name"])
        else:
            assert Path(path).parent == roots["ap10k" if source[img_id] == "ap_10k" else "animalpose"]


# ----------------------------------------------------------------------------------------------
# Oracle without pixels: GT heatmaps in crop coordinates on the real val files
# ----------------------------------------------------------------------------------------------

def _oracle_heatmaps(evaluator: Evaluator, index: slice):
    """GT heatmaps of records ``index`` and of their mirrored crops, as a perfect network would output.

    Crop coordinates are computed here from the §11.2 definition, independently of the library.
    """
    r, s = evaluator.records, evaluator.settings.input_size
    stride = s / evaluator.settings.heatmap_size
    k = s / (200.0 * r.scales[index].astype(np.float64))
    crop = s / 2 + (r.keypoints[index] - r.centres[index, None, :]) * k[:, None, None]  # (B, J, 2)
    vis = torch.from_numpy(r.visibility[index] > 0)
    heat = render_gaussians(torch.from_numpy(crop / stride).float(), vis, (evaluator.settings.heatmap_size,) * 2)
    mirrored = crop.copy()
    mirrored[..., 0] = s - 1 - mirrored[..., 0]
    fi = evaluator.flip_index  # in the mirrored crop, channel j shows joint fi[j]
    flipped = render_gaussians(torch.from_numpy(mirrored[:, fi] / stride).float(), vis[:, fi],
                               (evaluator.settings.heatmap_size,) * 2)
    return heat, flipped, crop


def _run_oracle(evaluator: Evaluator, chunk: int = 256):
    outputs, crops = [], []
    for start in range(0, len(evaluator), chunk):
        index = slice(start, min(start + chunk, len(evaluator)))
        heat, flipped, crop = _oracle_heatmaps(evaluator, index)
        if evaluator.settings.flip_test:
            heat = evaluator.flip_average(heat, flipped)
        outputs.append(evaluator.decode(heat, index))
        crops.append(crop)
    keypoints, maxvals, argmax = (torch.cat(p).numpy() for p in zip(*outputs))
    return keypoints, maxvals, argmax, np.concatenate(crops)


@needs_data
@pytest.mark.parametrize("name,joints", VAL_FILES)
def test_oracle_heatmaps_on_val_files_score_near_perfect(name, joints):
    evaluator = Evaluator(ANN / name, "/no/images", joints, EvalSettings(), check_images=False)
    keypoints, maxvals, argmax, _ = _run_oracle(evaluator)
    metrics = evaluator.score(keypoints, maxvals, argmax)
    assert metrics["AP"] >= 0.98 and metrics["AR"] >= 0.98
    assert metrics["PCK"] >= 0.99
    assert metrics["num_instances"] == len(evaluator)


@needs_data
def test_oracle_without_flip_lands_within_a_quarter_cell():
    """Forward crop and back-projection agree: the only error left is the quarter-pixel decoding."""
    evaluator = Evaluator(ANN / "animal_pose_val.json", "/no/images", "animalpose",
                          EvalSettings(flip_test=False), check_images=False)
    keypoints, maxvals, _, crop = _run_oracle(evaluator)
    r = evaluator.records
    cell = crop / 4
    inner = (r.visibility > 0) & ((cell >= 2) & (cell <= 61)).all(-1)
    cell_px = (200.0 * r.scales.astype(np.float64) / 64)[:, None]  # image px per heatmap cell
    err = np.abs(keypoints - r.keypoints).max(-1) / cell_px
    assert inner.sum() > 4000
    assert err[inner].max() <= 0.25 + 1e-3
    assert (maxvals[inner] > 0.9).all()
    assert evaluator.score(keypoints, maxvals)["AP"] == pytest.approx(1.0, abs=2e-3)


@pytest.mark.slow
@needs_data
def test_oracle_heatmaps_on_the_union24_val_file():
    evaluator = Evaluator(ANN / "ap10k_animalpose_tigdog_val.json", "/no/images", "union24", check_images=False)
    metrics = evaluator.score(*_run_oracle(evaluator)[:3])
    assert metrics["AP"] >= 0.98 and metrics["PCK"] >= 0.99


# ----------------------------------------------------------------------------------------------
# Oracle through the image path, on the real sample annotations
# ----------------------------------------------------------------------------------------------

def _coordinate_image(width: int, height: int, index: int) -> np.ndarray:
    """RGB image whose pixels say where they are: R ∝ x, G ∝ y, B = 200 + image index."""
    x = np.round(np.arange(width) * 255 / (width - 1))
    y = np.round(np.arange(height) * 255 / (height - 1))
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = x[None, :]
    image[..., 1] = y[:, None]
    image[..., 2] = 200 + index
    return image


class CoordinateOracle(nn.Module):
    """A "network" that sees only the crop: it reads the crop -> image map off the coordinate
    pixels (least squares), and renders the GT joints of that image where they fall in the crop.
    For a mirrored crop (x decreasing to the right) channel j shows joint flip_index[j], as a
    network that learned left/right from appearance would."""

    def __init__(self, images: list[dict], flip_index: np.ndarray, heatmap_size: int = 64):
        super().__init__()
        self.images, self.flip_index, self.size = images, flip_index, heatmap_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        rgb = (x * std + mean).round().numpy()  # (B, 3, S, S)
        stride = x.shape[-1] / self.size
        maps = []
        for crop in rgb:
            blue = crop[2]
            index = int(np.bincount(blue[blue >= 200].astype(np.int64)).argmax()) - 200
            info = self.images[index]
            # Pixels of this image only, away from the black border's bilinear mixing.
            inside = cv2.erode((blue == 200 + index).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            v, u = np.nonzero(inside)
            target = np.stack([crop[0][inside] * (info["width"] - 1) / 255,
                               crop[1][inside] * (info["height"] - 1) / 255], 1)
            design = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64)
            a = np.linalg.lstsq(design, target, rcond=None)[0]  # (3, 2): [u v 1] @ a = image (x, y)
            mirrored = a[0, 0] < 0
            kps, vis = info["keypoints"], info["visibility"]
            if mirrored:
                kps, vis = kps[self.flip_index], vis[self.flip_index]
            uv = (kps - a[2]) @ np.linalg.inv(a[:2])  # (J, 2) crop px
            maps.append(render_gaussians(torch.from_numpy(uv[None] / stride).float(),
                                         torch.from_numpy(vis[None] > 0), (self.size, self.size))[0])
        return torch.stack(maps)


def _coordinate_dataset(tmp_path: Path, folder: str, ann_name: str):
    """The sample annotation file with coordinate images under the same names; oracle image info."""
    data = json.loads((MMPOSE / folder / ann_name).read_text())
    images = []
    for i, img in enumerate(data["images"]):
        picture = _coordinate_image(img["width"], img["height"], i)
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        (tmp_path / img["file_name"]).write_bytes(png.tobytes())  # PNG bytes; the decoder ignores the suffix
        ann = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert len(ann) == 1
        kp = np.asarray(ann[0]["keypoints"], dtype=np.float64).reshape(-1, 3)
        images.append({"width": img["width"], "height": img["height"], "keypoints": kp[:, :2], "visibility": kp[:, 2]})
    return images


@needs_data
@pytest.mark.parametrize("folder,ann_name,joints", SAMPLES)
def test_oracle_through_the_image_path_on_sample_annotations(tmp_path, folder, ann_name, joints):
    images = _coordinate_dataset(tmp_path, folder, ann_name)
    joint_set = load_joint_set(joints)
    oracle = CoordinateOracle(images, joint_set.flip_index)
    ann_file = MMPOSE / folder / ann_name

    plain = Evaluator(ann_file, tmp_path, joint_set, EvalSettings(flip_test=False, batch_size=1))
    keypoints, maxvals, argmax = plain.predict(oracle, "cpu")
    r = plain.records
    cell_px = (200.0 * r.scales.astype(np.float64) / 64)[:, None]
    visible = r.visibility > 0
    err = np.abs(keypoints - r.keypoints).max(-1) / cell_px
    assert err[visible].max() <= 0.3  # quarter-cell decoding + the oracle's own fit error
    assert plain.score(keypoints, maxvals, argmax)["AP"] == pytest.approx(1.0, abs=1e-12)

    offset = (keypoints - r.keypoints) / cell_px[:, :, None]  # (N, J, 2) in heatmap cells
    assert abs(offset[visible][:, 0].mean()) < 0.05  # no drift

    flipped = Evaluator(ann_file, tmp_path, joint_set, EvalSettings(flip_test=True))
    keypoints, _, _ = flipped.predict(oracle, "cpu")
    # The original's flip test: mirrored output at (S−1−u)/4, flipped back and shifted one column
    # lands at u/4 + 0.25; averaged with u/4 the peak sits 1/8 cell right of the joint.
    drift = ((keypoints - r.keypoints) / cell_px[:, :, None])[visible][:, 0].mean()
    assert 0.0 < drift < 0.25
    metrics = flipped(oracle, "cpu", output_dir=tmp_path / "out")
    assert metrics["AP"] >= 0.98 and metrics["PCK"] == 1.0
    # The written results reproduce the metrics exactly.
    again = coco_keypoint_metrics(ann_file, tmp_path / "out" / "results.json", joint_set.sigmas)
    assert again == {k: metrics[k] for k in METRIC_KEYS}
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["AP"] == metrics["AP"] and len(saved["PCK_joints"]) == joint_set.num_joints


@needs_data
def test_crops_are_cached_after_the_first_evaluation(tmp_path):
    images = _coordinate_dataset(tmp_path, "ap10k", "test_ap10k.json")
    joint_set = load_joint_set("ap10k")
    oracle = CoordinateOracle(images, joint_set.flip_index)
    evaluator = Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", tmp_path, joint_set)
    first = evaluator(oracle, "cpu")
    for f in tmp_path.glob("*.jpg"):
        f.unlink()  # a second evaluation must not need the files any more
    assert evaluator(oracle, "cpu") == first

    no_cache = Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", tmp_path, joint_set, EvalSettings(cache_bytes=0),
                         check_images=False)
    with pytest.raises(DataError, match="cannot read image"):
        no_cache(oracle, "cpu")


@needs_data
def test_missing_images_are_reported_when_the_evaluator_is_built(tmp_path):
    with pytest.raises(DataError, match=r"test_ap10k\.json \(id 6\): 2 evaluation images not found, e\.g\. "
                                        r"\S*000000000004\.jpg"):
        Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", tmp_path, "ap10k")


@needs_data
def test_evaluator_restores_the_model_mode_and_real_images_decode(tmp_path):
    torch.manual_seed(0)
    model = PoseHighResolutionNet(num_joints=17, width=8).train()
    evaluator = Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", MMPOSE / "ap10k", "ap10k",
                          EvalSettings(input_size=64, heatmap_size=16))
    metrics = evaluator(model, "cpu")
    assert model.training
    assert set(METRIC_KEYS) <= set(metrics) and len(metrics["PCK_joints"]) == 17
    assert set(metrics["PCK_parts"]) == {"face", "front", "back", "shared", "exclusive"}
    crops = evaluator._crops
    assert crops.shape == (2, 3, 64, 64) and crops.dtype == torch.uint8 and crops.float().std() > 10
    table = format_metrics_table(metrics, load_joint_set("ap10k"))
    assert "AP50" in table and "R_B_paw" in table


@needs_data
def test_evaluator_folds_batchnorm_without_changing_the_predictions():
    torch.manual_seed(0)
    model = PoseHighResolutionNet(num_joints=17, width=8)
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))      # running statistics of its own (a training forward)
        model.final_layer.weight.mul_(1000)   # heatmaps with clear peaks rather than near-ties
    evaluator = Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", MMPOSE / "ap10k", "ap10k",
                          EvalSettings(input_size=64, heatmap_size=16))
    runs = {}
    for fold in (True, False):
        ops = dispatched_ops(lambda: runs.__setitem__(fold, evaluator.predict(model, "cpu", fold=fold)))
        assert (ops["aten.native_batch_norm"] == 0) == fold
    (kp, score, peak), (kp_ref, score_ref, peak_ref) = runs[True], runs[False]
    # A peak may move only where two pixels tie to float rounding (the thread count decides which
    # wins): then its value, the score, is the same.
    same = (peak == peak_ref).all(-1)                       # (N, J)
    assert same.mean() > 0.9 and np.ptp(peak_ref, axis=(0, 1)).max() > 0
    assert np.allclose(kp[same], kp_ref[same], rtol=0, atol=1e-3) and np.allclose(score, score_ref, rtol=1e-4, atol=0)
    assert model.training


@needs_data
def test_flip_average_halves_the_sum():
    """The flip test averages the output and the flipped-back mirrored output (SPEC §11.3)."""
    evaluator = Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", MMPOSE / "ap10k", "ap10k", check_images=False)
    # constant maps stay constant through flip_back (mirror, channel swap, one-column shift)
    out = evaluator.flip_average(torch.ones(1, 17, 64, 64), torch.full((1, 17, 64, 64), 3.0))
    assert torch.equal(out, torch.full((1, 17, 64, 64), 2.0))


@needs_data
def test_evaluator_scores_with_the_protocols_sigmas():
    """--protocol freenet scores with the paper's sigma list, not the standard one."""
    js = load_joint_set("ap10k")
    evaluator = Evaluator(MMPOSE / "ap10k" / "test_ap10k.json", MMPOSE / "ap10k", js,
                          EvalSettings(protocol="freenet"), check_images=False)
    assert np.array_equal(evaluator.sigmas, js.sigmas_for("freenet"))
    assert not np.array_equal(js.sigmas_for("freenet"), js.sigmas_for("standard"))


def test_protocols_pick_the_sigma_lists():
    js = load_joint_set("ap10k")
    np.testing.assert_allclose(js.sigmas_for("freenet")[5:11], [.079, .079, .072, .072, .062, .062])
    np.testing.assert_allclose(js.sigmas_for("standard")[5:11], [.079, .072, .062, .079, .072, .062])
    with pytest.raises(JointSetError, match="sigmas_freenet"):
        load_joint_set("union21").sigmas_for("freenet")


# ----------------------------------------------------------------------------------------------
# Experiment yamls and eval_ap10k.py
# ----------------------------------------------------------------------------------------------

@needs_data
@pytest.mark.parametrize("yaml,joints,folder,ann_name", [
    ("experiments/ap10k/w32_256x256_ap10k.yaml", 17, "ap_10k", "ap10k-val-split1.json"),
    ("experiments/ap10k_animalpose/w32_256x256_union21.yaml", 21, "ap10k_animalpose",
     "ap_10k_animal_pose_union_val.json"),
    ("experiments/ap10k_animalpose_tigdog/w32_256x256_union24.yaml", 24, "ap10k_animalpose_tigdog",
     "ap10k_animalpose_tigdog_val.json"),
])
def test_experiment_yamls_resolve_the_val_set_from_the_layout(tmp_path, yaml, joints, folder, ann_name):
    target = tmp_path / folder / "annotations" / ann_name
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    cfg = load_config(REPO / yaml, ["DATASET.ROOT", str(tmp_path)])
    assert cfg.MODEL.NUM_JOINTS == joints == load_joint_set(cfg.DATASET.JOINTS).num_joints
    ann_file, image_dir, fallback = val_data(cfg)
    assert ann_file == target and image_dir == tmp_path / folder / "data"
    assert len(fallback) == {17: 0, 21: 2, 24: 3}[joints]


def _eval_cli():
    spec = importlib.util.spec_from_file_location("eval_ap10k", REPO / "eval_ap10k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("flags,cores,expected", [([], 2, 2), ([], 16, 8), (["--workers", "5"], 2, 5)])
def test_eval_cli_workers_default_to_at_most_the_usable_cores(monkeypatch, flags, cores, expected):
    spec = importlib.util.spec_from_file_location("eval_ap10k", REPO / "eval_ap10k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen = []

    def record(cfg, protocol, results):
        seen.append(cfg.WORKERS)
        raise EvaluationError("stop here")

    monkeypatch.setattr(module, "usable_cpus", lambda: cores)
    monkeypatch.setattr(module, "evaluate_from_config", record)
    cfg = str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml")       # WORKERS 8 (the default)
    assert module.main(["--cfg", cfg, *flags]) == 2 and seen == [expected]


def _saved_model(path: Path, num_joints=17, width=8, key="state_dict"):
    torch.manual_seed(1)
    model = PoseHighResolutionNet(num_joints=num_joints, width=width)
    for m in model.modules():  # varied outputs instead of the near-constant official init
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    torch.save({key: model.state_dict()} if key else model.state_dict(), path)
    return path


@needs_data
def test_eval_cli_on_sample_images_and_results_mode(tmp_path, capsys):
    weights = _saved_model(tmp_path / "w8.pth", key="student_model")
    sample = MMPOSE / "ap10k"
    common = ["--cfg", str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml"),
              "DATASET.VAL_ANN_FILE", str(sample / "test_ap10k.json"), "DATASET.VAL_IMAGE_DIR", str(sample)]
    main = _eval_cli()
    assert main(common + ["--animalpose", "MODEL.WIDTH", "8", "TEST.MODEL_FILE", str(weights), "OUTPUT_DIR",
                          str(tmp_path / "run"), "--workers", "0", "DEVICE", "cpu", "GPUS", "[0,]"]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "PCK" in out
    assert f"weights: {weights}: the student (adaptation network) of a FreeNet checkpoint\n" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert metrics["model_key"] == "student_model" and metrics["num_instances"] == 2
    assert metrics["weights"] == "the student (adaptation network) of a FreeNet checkpoint"
    assert len(results) == 2 and {r["image_id"] for r in results} == {4, 37516}
    assert all(len(r["keypoints"]) == 3 * 17 for r in results)

    assert main(common + ["--results", str(tmp_path / "run" / "results.json"), "OUTPUT_DIR", str(tmp_path / "re")]) == 0
    rescored = json.loads((tmp_path / "re" / "metrics.json").read_text())
    assert {k: rescored[k] for k in METRIC_KEYS} == {k: metrics[k] for k in METRIC_KEYS}
    assert not (tmp_path / "re" / "results.json").exists()

    # --protocol freenet changes the sigmas, hence (for these predictions) nothing or the numbers,
    # but never fails for AP-10K; for a union it is a one-line error.
    assert main(common + ["--protocol", "freenet", "--results", str(tmp_path / "run" / "results.json"),
                          "OUTPUT_DIR", str(tmp_path / "fn")]) == 0
    union = ["--cfg", str(REPO / "experiments/ap10k_animalpose/w32_256x256_union21.yaml"), "--protocol", "freenet",
             "--results", str(tmp_path / "run" / "results.json"),
             "DATASET.VAL_ANN_FILE", str(sample / "test_ap10k.json")]
    capsys.readouterr()
    assert main(union) == 2
    assert "sigmas_freenet" in capsys.readouterr().err


@needs_data
def test_results_mode_reads_the_ground_truth_in_the_joint_sets_order(tmp_path):
    # MMPose's AnimalPose file read as joint set 'animalpose' (§2.2): its joints are permuted by name.
    # Results in the set's order (as this tool writes them) must score as they do in model mode.
    ann_file = MMPOSE / "animalpose" / "test_animalpose.json"
    joint_set = load_joint_set("animalpose")
    in_set_order = in_joint_set_order(ann_file, json.loads(ann_file.read_text()), joint_set)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "keypoints": [float(v) for v in a["keypoints"]]}
               for a in in_set_order["annotations"] if a.get("num_keypoints", 0) > 0]
    assert results[0]["keypoints"] != _gt_results(ann_file)[0]["keypoints"]  # the orders do differ
    (tmp_path / "results.json").write_text(json.dumps(results))
    args = ["--cfg", str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml"),
            "--results", str(tmp_path / "results.json"),
            "DATASET.JOINTS", "animalpose", "MODEL.NUM_JOINTS", "20", "DATASET.VAL_ANN_FILE", str(ann_file),
            "OUTPUT_DIR", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, str(REPO / "eval_ap10k.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "joints listed in another order than joint set 'animalpose'; reordered by name" in proc.stderr  # logged
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["AP"] == 1.0 and metrics["AR"] == 1.0


@pytest.mark.parametrize("root", ["--data-root", "DATASET.ROOT"])
def test_eval_cli_missing_val_data_shows_the_expected_layout(tmp_path, capsys, root):
    (tmp_path / "results.json").write_text("[]")
    args = ["--cfg", str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml"),
            "--results", str(tmp_path / "results.json"), root, str(tmp_path / "nowhere")]
    assert _eval_cli()(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert "validation annotation file not found" in err[0] and "ap10k-val-split1.json" in err[0]
    assert err[1] == f"data root {tmp_path / 'nowhere'} [MISSING]; expected layout:"  # the tree, one path a line
    assert "    annotations/ap10k-val-split1.json   [MISSING]" in err


@needs_data
def test_eval_cli_wrong_checkpoint_is_a_one_line_error(tmp_path):
    weights = _saved_model(tmp_path / "w8_21.pth", num_joints=21, key="")
    sample = MMPOSE / "ap10k"
    cmd = [sys.executable, str(REPO / "eval_ap10k.py"), "--cfg", "experiments/ap10k/w32_256x256_ap10k.yaml",
           "DATASET.VAL_ANN_FILE", str(sample / "test_ap10k.json"), "MODEL.WIDTH", "8",
           "TEST.MODEL_FILE", str(weights), "OUTPUT_DIR", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "predicts 21 joints but the model has 17" in lines[0]


@needs_data
def test_eval_of_a_checkpoint_trained_at_another_size_says_how_to_score_it_as_trained(tmp_path, caplog, capsys):
    """A training checkpoint records its crop size (weights saved alone have the run's config.yaml
    beside them); scoring a 64-px model on the yaml's 256-px crops gives numbers near 0, so evaluation
    warns and names the overrides (the evaluation still runs). The weights line says in words that a
    FreeNet checkpoint gives the teacher, and how to pick the student."""
    yaml, sample = REPO / "experiments/ap10k/w32_256x256_ap10k.yaml", MMPOSE / "ap10k"
    weights = torch.load(_saved_model(tmp_path / "w8.pth", key=""))
    trained = load_config(yaml, ["MODEL.WIDTH", "8", "MODEL.IMAGE_SIZE", "[64,64]", "MODEL.HEATMAP_SIZE", "[16,16]"])
    torch.save({"teacher_model": weights, "student_model": weights, "config": trained.dump()},
               tmp_path / "checkpoint.pth")
    common = ["--cfg", str(yaml), "DATASET.VAL_ANN_FILE", str(sample / "test_ap10k.json"), "DATASET.VAL_IMAGE_DIR",
              str(sample), "MODEL.WIDTH", "8", "--workers", "0"]
    main = _eval_cli()
    assert main(common + ["TEST.MODEL_FILE", str(tmp_path / "checkpoint.pth"), "OUTPUT_DIR", str(tmp_path / "a")]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"{tmp_path / 'checkpoint.pth'} was trained on 64-px crops but is evaluated on 256-px ones "
                      "(MODEL.IMAGE_SIZE); to score it as trained, add MODEL.IMAGE_SIZE [64,64] MODEL.HEATMAP_SIZE "
                      "[16,16]"]
    assert (f"weights: {tmp_path / 'checkpoint.pth'}: the teacher (base network) of a FreeNet checkpoint; "
            "TEST.MODEL_KEY student_model picks the student\n") in capsys.readouterr().out
    caplog.clear()
    assert main(common + ["TEST.MODEL_FILE", str(tmp_path / "checkpoint.pth"), "OUTPUT_DIR", str(tmp_path / "b"),
                          "MODEL.IMAGE_SIZE", "[64,64]", "MODEL.HEATMAP_SIZE", "[16,16]"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    run = tmp_path / "run"   # a training run's folder: best-oks.pth is a plain state_dict beside config.yaml
    run.mkdir()
    torch.save(weights, run / "best-oks.pth")
    (run / "config.yaml").write_text(trained.dump())
    caplog.clear()
    assert main(common + ["TEST.MODEL_FILE", str(run / "best-oks.pth"), "OUTPUT_DIR", str(tmp_path / "c")]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith(
        f"{run / 'best-oks.pth'} was trained on 64-px crops ({run / 'config.yaml'} says so) but is evaluated on "
        "256-px ones")
    assert f"weights: {run / 'best-oks.pth'}: a state_dict (the weights alone)\n" in capsys.readouterr().out


def test_eval_cli_refuses_an_output_dir_it_cannot_write_before_any_work(tmp_path, capsys):
    """OUTPUT_DIR is tried first: the error names it and the key, before the data (missing here) is looked at."""
    weights = _saved_model(tmp_path / "w8.pth", key="")
    (tmp_path / "taken").write_text("a file where the output folder would go")
    out = tmp_path / "taken" / "eval"
    assert _eval_cli()(["--cfg", str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml"), "MODEL.WIDTH", "8",
                        "TEST.MODEL_FILE", str(weights), "DATASET.ROOT", str(tmp_path / "nowhere"),
                        "OUTPUT_DIR", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {out}: cannot write the evaluation's outputs there (OUTPUT_DIR): "
                                         f"{tmp_path / 'taken'} is a file, not a folder"]
    assert captured.out == ""


def test_a_failed_evaluation_leaves_no_empty_output_folder(tmp_path, capsys):
    """OUTPUT_DIR is tried without being made: an evaluation that then fails (no data here) leaves nothing."""
    weights = _saved_model(tmp_path / "w8.pth", key="")
    out = tmp_path / "new" / "eval"
    assert _eval_cli()(["--cfg", str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml"), "MODEL.WIDTH", "8",
                        "TEST.MODEL_FILE", str(weights), "DATASET.ROOT", str(tmp_path / "nowhere"),
                        "OUTPUT_DIR", str(out)]) == 2
    assert "validation annotation file not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@needs_data
def test_eval_cli_prints_the_metrics_before_a_failed_write(tmp_path, capsys, monkeypatch):
    """A write that fails after the evaluation (a full disk) loses no result: the table comes first."""
    spec = importlib.util.spec_from_file_location("eval_ap10k", REPO / "eval_ap10k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def full_disk(output_dir, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "write_outputs", full_disk)
    ann_file = MMPOSE / "ap10k" / "test_ap10k.json"
    (tmp_path / "results.json").write_text(json.dumps(_gt_results(ann_file)))
    assert module.main(["--cfg", str(REPO / "experiments/ap10k/w32_256x256_ap10k.yaml"), "--results",
                        str(tmp_path / "results.json"), "DATASET.VAL_ANN_FILE", str(ann_file),
                        "OUTPUT_DIR", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    header, values = captured.out.splitlines()[:2]
    assert header.split() == list(METRIC_KEYS) and values.split()[:3] == ["1.000"] * 3   # AP AP50 AP75
    assert captured.err.splitlines() == [f"error: {tmp_path / 'out'}: cannot write the outputs there (OUTPUT_DIR): "
                                         "No space left on device; the metrics are above"]


@needs_data
def test_eval_cli_width_mismatch_and_missing_model_are_one_line_errors(tmp_path, capsys):
    weights = _saved_model(tmp_path / "w8.pth")
    sample = MMPOSE / "ap10k"
    common = ["--cfg", "experiments/ap10k/w32_256x256_ap10k.yaml",
              "DATASET.VAL_ANN_FILE", str(sample / "test_ap10k.json")]
    main = _eval_cli()
    assert main(common + ["TEST.MODEL_FILE", str(weights)]) == 2  # yaml says width 32
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MODEL.WIDTH" in err
    assert main(common) == 2
    assert "TEST.MODEL_FILE" in capsys.readouterr().err
    assert main(common + ["TEST.NO_SUCH_KEY", "1"]) == 2
    assert "Non-existent" in capsys.readouterr().err
