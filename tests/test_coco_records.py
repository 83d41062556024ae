"""COCO keypoint records, union conversion and the data-root layout (SPEC §2.4, §3.1, §3.2)."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from freenet.data.coco import (DataLayout, load_coco_json, load_coco_records, normalize_source,
                               to_union)
from freenet.data.records import Record
from freenet.errors import DataError
from freenet.evaluation import eval_records
from freenet.joints import JointSetError, load_joint_set, map_by_name, remap_keypoints

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ANN = SHARED / "freenet" / "annotation_files"
MMPOSE = SHARED / "mmpose_samples"

needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared test data not found at {SHARED}")

# SPEC §2.4: AnimalPose (FreeNet order) -> union index.
ANIMALPOSE_TO_UNION = [(0, 0), (1, 1), (2, 2), (3, 17), (4, 18), (5, 5), (6, 8), (7, 11), (8, 14), (9, 6),
                       (10, 9), (11, 12), (12, 15), (13, 7), (14, 10), (15, 13), (16, 16), (17, 19), (18, 20),
                       (19, 4)]
TIGDOG_TO_UNION24 = [(0, 0), (1, 1), (2, 21), (3, 7), (4, 10), (5, 13), (6, 16), (7, 4), (8, 6), (9, 9),
                     (10, 12), (11, 15), (12, 22), (13, 23), (14, 5), (15, 8), (16, 11), (17, 14), (18, 3)]


def _load(name, joint_set=None, **kw):
    kw.setdefault("check_images", False)
    js = load_joint_set(joint_set) if joint_set else None
    return load_coco_records(ANN / name, "/nonexistent/images", js, **kw)


# ----------------------------------------------------------------------------------------------
# Real files
# ----------------------------------------------------------------------------------------------

@needs_data
def test_animal_pose_train_keeps_instances_with_keypoints_in_image_then_file_order():
    records = _load("animal_pose_train.json", "animalpose", source="animalpose")
    assert len(records) == 5465  # 5503 annotations, 38 without any keypoint

    raw = json.loads((ANN / "animal_pose_train.json").read_text())
    assert len(raw["annotations"]) == 5503
    per_image = defaultdict(list)
    for a in raw["annotations"]:
        if any(a["keypoints"]):
            per_image[a["image_id"]].append(a["id"])
    expected_order = [aid for img in sorted(per_image) for aid in per_image[img]]
    assert [r.ann_id for r in records] == expected_order

    first = records[0]  # image 1 "2007_000063.jpg", annotation 1
    assert (first.image_id, first.ann_id, first.category_id) == (1, 1, 1)
    assert first.image_path == str(Path("/nonexistent/images") / "2007_000063.jpg")
    np.testing.assert_array_equal(first.box, [123, 115, 379, 275])
    np.testing.assert_array_equal(first.keypoints[[0, 3, 18, 19]], [[193, 216], [204, 186], [190, 145], [351, 238]])
    np.testing.assert_array_equal(first.visibility[[0, 5, 19]], [1, 0, 1])
    assert first.keypoints.shape == (20, 2) and first.keypoints.dtype == np.float32
    assert {r.source for r in records} == {"animalpose"}


@needs_data
def test_animal_pose_val_count():
    records = _load("animal_pose_val.json", "animalpose")
    # 614 annotations, 5 of them with all-zero keypoints (counted in the file by hand).
    assert len(records) == 609
    assert all(np.any(r.visibility > 0) for r in records)


@needs_data
@pytest.mark.parametrize("name, joint_set, expected", [
    ("ap_10k_animal_pose_union_val.json", "union21", {"ap10k": 1272, "animalpose": 609}),
    ("ap10k_animalpose_tigdog_val.json", "union24", {"ap10k": 1272, "animalpose": 609, "tigdog": 3537}),
])
def test_union_files_count_per_source(name, joint_set, expected):
    records = _load(name, joint_set, source="ignored-when-from-is-present")
    assert Counter(r.source for r in records) == expected
    num_joints = load_joint_set(joint_set).num_joints
    assert {r.num_joints for r in records} == {num_joints}
    # Without a joint set, J comes from the annotations (the categories list only 17 names).
    assert _load(name)[0].num_joints == num_joints


@needs_data
def test_mmpose_ap10k_sample_finds_real_images():
    root = MMPOSE / "ap10k"
    records = load_coco_records(root / "test_ap10k.json", root, load_joint_set("ap10k"), "ap_10k")
    assert [(r.image_id, r.ann_id) for r in records] == [(4, 6), (37516, 9284)]  # ascending image id
    assert all(Path(r.image_path).is_file() for r in records)
    assert Path(records[0].image_path).name == "000000000004.jpg"
    r = records[0]
    assert r.source == "ap10k"
    np.testing.assert_array_equal(r.keypoints[2], [466, 499])  # nose
    np.testing.assert_array_equal(r.visibility[:3], [2, 0, 2])  # right eye unannotated
    np.testing.assert_array_equal(r.box, [408, 197, 429, 341])


@needs_data
def test_mmpose_animalpose_order_to_union21_by_names():
    root = MMPOSE / "animalpose"
    ann_file = root / "test_animalpose.json"
    records = load_coco_records(ann_file, root, load_joint_set("animalpose_mmpose"), "animalpose")
    assert [r.ann_id for r in records] == [129, 583]
    names = json.loads(ann_file.read_text())["categories"][0]["keypoints"]
    union = load_joint_set("union21")
    index = map_by_name(names, union.joints)
    kps, vis = remap_keypoints(np.stack([r.keypoints for r in records]), np.stack([r.visibility for r in records]),
                               index, union.num_joints)
    cat = 0  # annotation 129, ca110.jpeg; values read off the file
    np.testing.assert_array_equal(kps[cat, 5], [123, 142])    # L_F_Elbow -> L_F_hip slot
    np.testing.assert_array_equal(kps[cat, 20], [144, 53])    # Withers -> wither
    np.testing.assert_array_equal(kps[cat, 17], [115, 56])    # L_EarBase -> L_ear
    np.testing.assert_array_equal(kps[cat, 4], [235, 163])    # TailBase -> tail
    np.testing.assert_array_equal(kps[cat, 6], [115, 186])    # L_F_Knee -> L_F_knee
    assert vis[cat, 3] == 0 and np.all(kps[cat, 3] == 0)      # neck: not in AnimalPose
    horse = 1  # annotation 583: R_F_Elbow (index 9) is unannotated
    assert vis[horse, 8] == 0 and vis[horse, 5] == 2


# Annotation 129 of MMPose's AnimalPose sample in FreeNet's AnimalPose order (SPEC §2.2), read off the
# file by joint name: e.g. its 5th triplet is Nose (102, 109) -> slot 2; R_B_Elbow, R_B_Knee, R_B_Paw
# are unannotated -> slots 8, 12, 16.
CAT_129_FREENET_ORDER = [(117, 95), (85, 102), (102, 109), (115, 56), (62, 78), (123, 142), (40, 161),
                         (182, 160), (0, 0), (115, 186), (64, 192), (189, 195), (0, 0), (84, 214), (53, 209),
                         (146, 206), (0, 0), (104, 130), (144, 53), (235, 163)]


@needs_data
def test_mmpose_animalpose_file_read_as_freenet_order_is_reordered_by_names(caplog):
    """SPEC §2.2: both AnimalPose conversions load into the FreeNet order (by joint names)."""
    ann_file = MMPOSE / "animalpose" / "test_animalpose.json"
    original = ann_file.read_text()
    with caplog.at_level("INFO", logger="freenet.data.coco"):
        records = load_coco_records(ann_file, ann_file.parent, load_joint_set("animalpose"), "animalpose")
    assert "reordered by name" in caplog.text
    np.testing.assert_array_equal(records[0].keypoints, CAT_129_FREENET_ORDER)
    assert np.flatnonzero(records[0].visibility == 0).tolist() == [8, 12, 16]
    as_written = load_coco_records(ann_file, ann_file.parent, load_joint_set("animalpose_mmpose"), "animalpose")
    np.testing.assert_array_equal(as_written[0].keypoints[[0, 1, 4, 2, 3]], records[0].keypoints[:5])
    assert ann_file.read_text() == original


@needs_data
def test_evaluator_scores_an_mmpose_order_file_in_the_joint_set_order():
    """The evaluated keypoints and the COCOeval ground truth are both reordered, so they agree."""
    from freenet.evaluation import Evaluator
    ann_file = MMPOSE / "animalpose" / "test_animalpose.json"
    ev = Evaluator(ann_file, ann_file.parent, "animalpose")
    np.testing.assert_array_equal(ev.records.keypoints[0], CAT_129_FREENET_ORDER)
    gt = np.asarray(ev.coco.anns[129]["keypoints"]).reshape(20, 3)
    np.testing.assert_array_equal(gt[:, :2], CAT_129_FREENET_ORDER)


def test_joint_order_errors_and_unknown_names(ap10k_sample, caplog):
    root, data = ap10k_sample
    names = data["categories"][0]["keypoints"]
    swapped = dict(data["categories"][0], id=99, keypoints=[names[1], names[0]] + names[2:])
    two_orders = dict(data, categories=data["categories"] + [swapped])
    with pytest.raises(DataError, match=r"orders.json.*categories\[id=99\].keypoints.*another order"):
        load_coco_records(_write(root / "orders.json", two_orders), root, load_joint_set("ap10k"))
    unknown = dict(data, categories=[dict(c, keypoints=["spot"] + names[1:]) for c in data["categories"]])
    with caplog.at_level("WARNING", logger="freenet.data.coco"):
        records = load_coco_records(_write(root / "unknown.json", unknown), root, load_joint_set("ap10k"))
    assert "unknown.json" in caplog.text and "unknown: spot" in caplog.text
    np.testing.assert_array_equal(records[0].keypoints, load_coco_records(root / "test_ap10k.json", root,
                                                                          load_joint_set("ap10k"))[0].keypoints)


@needs_data
@pytest.mark.parametrize("union_name", ["union21", "union24"])
def test_to_union_follows_spec_map_on_real_animalpose_record(union_name):
    records = _load("animal_pose_train.json", "animalpose", source="animalpose")
    union = load_joint_set(union_name)
    rec = records[0]
    before = rec.keypoints.copy()
    out = to_union(records[:50], union)
    u = out[0]
    assert u.num_joints == union.num_joints and u.ann_id == rec.ann_id and u.source == "animalpose"
    for s, t in ANIMALPOSE_TO_UNION:
        np.testing.assert_array_equal(u.keypoints[t], rec.keypoints[s])
        assert u.visibility[t] == rec.visibility[s]
    # By value: left ear (204, 186) -> 17, tail (351, 238) -> 4, wither (190, 145) -> 20.
    np.testing.assert_array_equal(u.keypoints[[17, 4, 20]], [[204, 186], [351, 238], [190, 145]])
    missing = sorted(set(range(union.num_joints)) - {t for _, t in ANIMALPOSE_TO_UNION})
    assert missing == ([3] if union_name == "union21" else [3, 21, 22, 23])
    assert np.all(u.keypoints[missing] == 0) and np.all(u.visibility[missing] == 0)
    np.testing.assert_array_equal(rec.keypoints, before)  # input untouched
    assert [r.ann_id for r in out] == [r.ann_id for r in records[:50]]


def _record(source, num_joints, ann_id=0):
    kps = np.stack([np.arange(num_joints), 100 + np.arange(num_joints)], axis=1).astype(np.float32)
    return Record("img.jpg", 1, ann_id, 1, np.array([0, 0, 10, 10], np.float32), kps,
                  np.full(num_joints, 2, np.float32), source)


def test_to_union_mixed_sources_keep_order_and_use_each_map():
    union = load_joint_set("union24")
    records = [_record("tigdog", 19, 0), _record("ap10k", 17, 1), _record("animal_pose", 20, 2)]
    out = to_union(records, union)
    assert [r.ann_id for r in out] == [0, 1, 2]
    assert [r.source for r in out] == ["tigdog", "ap10k", "animalpose"]
    for s, t in TIGDOG_TO_UNION24:  # keypoint x encodes the source index
        assert out[0].keypoints[t, 0] == s
    assert out[0].visibility[[17, 18, 19, 20]].sum() == 0  # ears, throat, wither: not in TigDog
    np.testing.assert_array_equal(out[1].keypoints[:17, 0], np.arange(17))  # AP-10K: identity
    assert out[1].visibility[17:].sum() == 0
    for s, t in ANIMALPOSE_TO_UNION:
        assert out[2].keypoints[t, 0] == s


def test_to_union_errors_name_the_problem():
    union = load_joint_set("union21")
    with pytest.raises(DataError, match="no source dataset"):
        to_union([_record("", 17)], union)
    assert to_union([_record("", 17)], union, source="ap_10k")[0].source == "ap10k"
    with pytest.raises(DataError, match="21 joints .* expects 17"):
        to_union([_record("ap10k", 21, ann_id=77)], union)
    with pytest.raises(JointSetError, match="tigdog"):
        to_union([_record("tigdog", 19)], union)


def test_normalize_source():
    assert [normalize_source(s) for s in ("ap_10k", "animal_pose", "tigdog", "tigdog_horse", None, "other")] == \
        ["ap10k", "animalpose", "tigdog", "tigdog", "", "other"]


# ----------------------------------------------------------------------------------------------
# Bad input: the error names the file and the annotation id
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def ap10k_sample(tmp_path):
    """A copy of the MMPose AP-10K sample (json + both images) in tmp_path."""
    src = MMPOSE / "ap10k"
    if not src.is_dir():
        pytest.skip(f"shared test data not found at {src}")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path, json.loads((src / "test_ap10k.json").read_text())


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_malformed_json(ap10k_sample):
    root, _ = ap10k_sample
    bad = _write(root / "broken.json", (root / "test_ap10k.json").read_text()[:-20])
    with pytest.raises(DataError, match="broken.json.*malformed JSON"):
        load_coco_records(bad, root)
    with pytest.raises(DataError, match="missing.json.*not found"):
        load_coco_json(root / "missing.json")


def test_keypoint_count_mismatch(ap10k_sample):
    root, data = ap10k_sample
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:-3]  # annotation 9284
    bad = _write(root / "short.json", data)
    with pytest.raises(DataError) as e:
        load_coco_records(bad, root, load_joint_set("ap10k"))
    assert "short.json" in str(e.value) and "9284" in str(e.value) and "51" in str(e.value)
    assert e.value.record_id == 9284
    # The joint set decides J: a correct AP-10K file read as AnimalPose is a mismatch too.
    with pytest.raises(DataError, match=r"test_ap10k.json \(id 9284\).*expected 3\*20"):
        load_coco_records(root / "test_ap10k.json", root, load_joint_set("animalpose"))


def test_annotation_without_keypoints_field_is_dropped(ap10k_sample, caplog):
    """A box-only annotation has no labeled joint: dropped and counted, as a null or empty list is
    (SPEC §3.2; the original loader did the same)."""
    root, data = ap10k_sample
    every = [r.ann_id for r in load_coco_records(_write(root / "all.json", data), root, load_joint_set("ap10k"))]
    del data["annotations"][1]["keypoints"]  # annotation 6
    with caplog.at_level("INFO", logger="freenet.data.coco"):
        records = load_coco_records(_write(root / "nokps.json", data), root, load_joint_set("ap10k"))
    assert 6 in every and [r.ann_id for r in records] == [i for i in every if i != 6]
    assert "1 without keypoints" in caplog.text


def test_unknown_image_id(ap10k_sample):
    root, data = ap10k_sample
    data["annotations"][1]["image_id"] = 999  # annotation 6
    bad = _write(root / "orphan.json", data)
    with pytest.raises(DataError, match=r"orphan.json \(id 6\).*unknown image id 999"):
        load_coco_records(bad, root)


def test_duplicate_annotation_id_and_missing_sections(ap10k_sample):
    root, data = ap10k_sample
    dup = dict(data, annotations=data["annotations"] + [dict(data["annotations"][0])])
    with pytest.raises(DataError, match=r"dup.json \(id 9284\).*duplicate annotation id"):
        load_coco_records(_write(root / "dup.json", dup), root)
    no_anns = {k: v for k, v in data.items() if k != "annotations"}
    with pytest.raises(DataError, match="no_anns.json.*'annotations'"):
        load_coco_records(_write(root / "no_anns.json", no_anns), root)


def test_missing_image_file(ap10k_sample):
    root, _ = ap10k_sample
    (root / "000000037516.jpg").unlink()
    with pytest.raises(DataError) as e:
        load_coco_records(root / "test_ap10k.json", root)
    msg = str(e.value)
    assert "000000037516.jpg" in msg and "(id 9284)" in msg and "test_ap10k.json" in msg
    # Without the check the records load, paths pointing where the image should be.
    records = load_coco_records(root / "test_ap10k.json", root, check_images=False)
    assert records[1].image_path == str(root / "000000037516.jpg")


def test_box_and_keypoint_filters(tmp_path):
    data = {"images": [{"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "a.jpg"}],
            "annotations": [
                {"id": 10, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "keypoints": [1, 2, 2, 0, 0, 0]},
                {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5], "keypoints": [1, 2, 2, 0, 0, 0]},
                {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "keypoints": [0, 0, 0, 0, 0, 0]},
                {"id": 13, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "keypoints": [0, 0, 0, 3, 4, 0]},
                {"id": 14, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "keypoints": [0, 0, 0, 0, 0, 1]},
            ]}
    records = load_coco_records(_write(tmp_path / "f.json", data), tmp_path, check_images=False, source="x")
    # Image 1 first (ascending id), then image 2's annotations in file order; 11 (w = 0) and 12
    # (all-zero keypoints) dropped; 13 kept for its non-zero coordinates, 14 for its flag.
    assert [r.ann_id for r in records] == [14, 10, 13]
    np.testing.assert_array_equal(records[2].keypoints, [[0, 0], [3, 4]])
    np.testing.assert_array_equal(records[2].visibility, [0, 0])


def test_null_keypoint_names_the_annotation(ap10k_sample):
    """A JSON null among the keypoints would become NaN coordinates: an error instead (SPEC §3.2)."""
    root, data = ap10k_sample
    data["annotations"][1]["keypoints"][0] = None   # annotation 6
    with pytest.raises(DataError, match=r"null.json \(id 6\): 'keypoints' must contain only numbers"):
        load_coco_records(_write(root / "null.json", data), root, load_joint_set("ap10k"))


def _one_dog(tmp_path, name, text=None, **fields):
    """A hand-built AP-10K file: image 1 with annotations 4 (good) and 5 (``fields`` replaced);
    ``text`` ({placeholder: raw JSON}) puts values in the file that json.dumps cannot write (1e400)."""
    good = {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "keypoints": [10, 20, 2] * 17,
            "area": 2500, "num_keypoints": 17, "iscrowd": 0}
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
            "annotations": [good, {**good, "id": 5, **fields}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 3, "name": "cat"}]}
    raw = json.dumps(data)
    for placeholder, value in (text or {}).items():
        raw = raw.replace(json.dumps(placeholder), value)
    return _write(tmp_path / name, raw)


@pytest.mark.parametrize("value, shown", [(7, "7"), (-1, "-1"), (1.5, "1.5")])
def test_visibility_outside_0_1_2_names_the_annotation_and_joint(tmp_path, value, shown):
    """A visibility code other than 0, 1, 2 (the checker's 'visibility_value' error) is refused by
    both loaders, naming the file, the annotation, the field and the joint."""
    kps = [10, 20, 2] * 17
    kps[3 * 3 + 2] = value                                              # joint 3, 'neck'
    path = _one_dog(tmp_path, "vis.json", keypoints=kps)
    message = rf"vis.json \(id 5\): 'keypoints' visibility must be 0, 1 or 2, got {re.escape(shown)} at joint 3"
    with pytest.raises(DataError, match=message + r" \(neck\)$"):
        load_coco_records(path, tmp_path, load_joint_set("ap10k"), check_images=False)
    with pytest.raises(DataError, match=message):
        eval_records(path, tmp_path, load_joint_set("ap10k"))
    # The file is broken even where training would drop the instance (no box).
    with pytest.raises(DataError, match=r"nobox.json \(id 5\): 'keypoints' visibility"):
        load_coco_records(_one_dog(tmp_path, "nobox.json", keypoints=kps, bbox=None), tmp_path, check_images=False)


@pytest.mark.parametrize("value, shown", [("12", '"12"'), (True, "true"), ([1], r"\[1\]")])
def test_keypoint_values_that_are_not_numbers_are_refused(tmp_path, value, shown):
    """NumPy would read the string "12" as 12 and true as 1: refused by both loaders instead."""
    kps = [10, 20, 2] * 17
    kps[3 * 2 + 1] = value                                              # joint 2's y
    path = _one_dog(tmp_path, "str.json", keypoints=kps)
    message = rf"str.json \(id 5\): 'keypoints' must contain only numbers, got {shown} at joint 2$"
    with pytest.raises(DataError, match=message):
        load_coco_records(path, tmp_path, load_joint_set("ap10k"), check_images=False)
    with pytest.raises(DataError, match=message):
        eval_records(path, tmp_path, load_joint_set("ap10k"))


@pytest.mark.parametrize("raw, shown", [("1e400", "inf"), ("NaN", "nan"), ("-Infinity", "-inf")])
def test_box_with_a_value_that_is_not_finite_is_refused(tmp_path, raw, shown):
    """1e400 in JSON reads as infinity: a broken file, refused (a box with w <= 0 or h <= 0 is
    dropped and counted instead, SPEC §3.2)."""
    path = _one_dog(tmp_path, "inf.json", text={"BAD": raw}, bbox=[0, "BAD", 50, 50])
    with pytest.raises(DataError, match=rf"inf.json \(id 5\): 'bbox' must be 4 finite numbers \[x, y, w, h\], "
                                        rf"got \[0, {shown}, 50, 50\]"):
        load_coco_records(path, tmp_path, load_joint_set("ap10k"), check_images=False)
    with pytest.raises(DataError, match=r"str.json \(id 5\): 'bbox' must be 4 numbers \[x, y, w, h\], got \"50\""):
        load_coco_records(_one_dog(tmp_path, "str.json", bbox=[0, 0, "50", 50]), tmp_path, check_images=False)


def test_empty_box_is_still_dropped_and_counted(tmp_path, caplog):
    path = _one_dog(tmp_path, "empty.json", bbox=[0, 0, -5, 50])
    with caplog.at_level("INFO", logger="freenet.data.coco"):
        records = load_coco_records(path, tmp_path, load_joint_set("ap10k"), check_images=False)
    assert [r.ann_id for r in records] == [4]
    assert "kept 1 of 2 annotations (dropped: 1 without a valid box, 0 without keypoints)" in caplog.text


def test_category_id_not_in_categories_loads_with_a_warning(tmp_path, caplog):
    """Public files carry annotations of categories they do not list; the file's categories share
    one joint layout, so such an annotation loads, with one warning naming the annotations."""
    path = _one_dog(tmp_path, "cat.json", category_id=2)
    data = json.loads(path.read_text())
    with caplog.at_level("WARNING", logger="freenet.data.coco"):
        records = load_coco_records(path, tmp_path, load_joint_set("ap10k"), check_images=False)
    assert [(r.ann_id, r.category_id) for r in records] == [(4, 1), (5, 2)]
    assert caplog.messages == [f"{path}: 1 annotations (first ids 5) have a 'category_id' not in 'categories' (ids 2); "
                               "loaded with the joint layout of the file's categories"]
    del data["categories"]                                      # nothing to check against
    assert len(load_coco_records(_write(tmp_path / "nocats.json", data), tmp_path, check_images=False)) == 2


@needs_data
def test_real_animal_kingdom_sample_loads_though_it_lists_not_the_category_of_its_annotations(caplog):
    """MMPose's Animal Kingdom sample lists categories 1 and 2 (with the 23 joint names) but its
    annotations are of category 4."""
    with caplog.at_level("WARNING", logger="freenet.data.coco"):
        records = load_coco_records(MMPOSE / "ak" / "test_animalkingdom.json", MMPOSE / "ak", check_images=False)
    assert records and {r.category_id for r in records} == {4}
    assert "have a 'category_id' not in 'categories' (ids 4)" in caplog.text


@pytest.mark.parametrize("where, field, value, message", [
    ("images", "id", "img_a", r"strid.json: an image's 'id' must be an integer, got 'img_a'"),
    ("annotations", "id", 6.5, r"strid.json: an annotation's 'id' must be an integer, got 6.5"),
    ("annotations", "image_id", "2", r"strid.json \(id 6\): annotation's 'image_id' must be an integer, got '2'"),
    ("annotations", "category_id", "dog", r"strid.json \(id 6\): annotation's 'category_id' must be an integer"),
])
def test_ids_that_are_not_integers_name_the_field(ap10k_sample, where, field, value, message):
    """Records, splits and id files sort and offset ids as integers: a string id (some converters
    write them) is refused by name on loading, for training and evaluation alike."""
    root, data = ap10k_sample
    data[where][1][field] = value           # image 2 / annotation 6
    bad = _write(root / "strid.json", data)
    with pytest.raises(DataError, match=message):
        load_coco_records(bad, root, load_joint_set("ap10k"))
    with pytest.raises(DataError, match=message):
        eval_records(bad, root, load_joint_set("ap10k"))


def test_joint_count_without_a_joint_set_is_the_most_common_one(ap10k_sample):
    """Without a joint set J is what most annotations have: a short first annotation is the one
    named, not the good annotation after it."""
    root, data = ap10k_sample
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:-3]  # 9284: 16 joints of 17
    data["annotations"].append(dict(data["annotations"][1], id=7))
    with pytest.raises(DataError, match=r"short.json \(id 9284\): 'keypoints' has 48 values, expected 3\*17"):
        load_coco_records(_write(root / "short.json", data), root)
    data["annotations"][0]["keypoints"] = [1, 2]                                    # no triplets anywhere
    data["annotations"] = data["annotations"][:1]
    with pytest.raises(DataError, match=r"pair.json \(id 9284\): 'keypoints' has 2 values, not a multiple of 3"):
        load_coco_records(_write(root / "pair.json", data), root)


# ----------------------------------------------------------------------------------------------
# Data-root layout
# ----------------------------------------------------------------------------------------------

def test_layout_paths(tmp_path):
    layout = DataLayout(tmp_path)
    assert layout.annotation_file("ap10k", "train") == tmp_path / "ap_10k/annotations/ap10k-train-split1.json"
    assert layout.annotation_file("animalpose", "val") == tmp_path / "animal_pose/annotations/animal_pose_val.json"
    assert layout.annotation_file("tigdog", "train") == tmp_path / "tigdog/annotations/tigdog_train.json"
    assert layout.annotation_file("ap10k_animalpose", "val") == \
        tmp_path / "ap10k_animalpose/annotations/ap_10k_animal_pose_union_val.json"
    assert layout.annotation_file("ap10k_animalpose_tigdog", "train") == \
        tmp_path / "ap10k_animalpose_tigdog/annotations/ap10k_animalpose_tigdog_train.json"
    assert layout.image_dir("animalpose") == tmp_path / "animal_pose/data"
    assert layout.fallback_roots("ap10k_animalpose_tigdog") == {
        "ap10k": tmp_path / "ap_10k/data", "animalpose": tmp_path / "animal_pose/data",
        "tigdog": tmp_path / "tigdog/data"}
    with pytest.raises(KeyError, match="unknown dataset"):
        layout.annotation_file("coco", "train")


def test_layout_missing_file_explains_where_files_come_from(tmp_path):
    layout = DataLayout(tmp_path)
    (tmp_path / "animal_pose/annotations").mkdir(parents=True)
    (tmp_path / "animal_pose/annotations/animal_pose_train.json").write_text("{}")
    with pytest.raises(DataError) as e:
        layout.load("ap10k_animalpose", "train")
    msg = str(e.value)
    assert str(layout.annotation_file("ap10k_animalpose", "train")) in msg
    assert "resources/annotation_files" in msg and "official" in msg
    tree = layout.describe()
    assert "annotations/animal_pose_train.json   [present]" in tree
    assert "annotations/animal_pose_val.json   [MISSING]" in tree


def test_layout_union_images_fall_back_to_source_folders(tmp_path):
    layout = DataLayout(tmp_path)
    union = {"images": [{"id": 5, "file_name": "000000000005.jpg", "from": "ap_10k"},
                        {"id": 58640, "file_name": "2008_000001.jpg", "from": "animal_pose"},
                        {"id": 63300, "file_name": "horse/00000001.jpg", "from": "tigdog"}],
             "annotations": [{"id": i, "image_id": img, "category_id": 1, "bbox": [0, 0, 4, 4],
                              "keypoints": [1, 1, 1] + [0] * 69, "from": src}
                             for i, (img, src) in enumerate([(5, "ap_10k"), (58640, "animal_pose"),
                                                             (63300, "tigdog")])]}
    ann_file = layout.annotation_file("ap10k_animalpose_tigdog", "val")
    ann_file.parent.mkdir(parents=True)
    _write(ann_file, union)
    for rel in ["ap_10k/data/000000000005.jpg", "animal_pose/data/2008_000001.jpg",
                "tigdog/data/horse/00000001.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    # The union's own data/ folder, when present, wins over the source folders.
    own = layout.image_dir("ap10k_animalpose_tigdog") / "2008_000001.jpg"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")

    records = layout.load("ap10k_animalpose_tigdog", "val")
    assert [r.source for r in records] == ["ap10k", "animalpose", "tigdog"]
    assert records[0].num_joints == 24
    assert [r.image_path for r in records] == [str(tmp_path / "ap_10k/data/000000000005.jpg"), str(own),
                                              str(tmp_path / "tigdog/data/horse/00000001.jpg")]

    (tmp_path / "tigdog/data/horse/00000001.jpg").unlink()
    with pytest.raises(DataError, match=r"\(id 2\).*horse/00000001.jpg"):
        layout.load("ap10k_animalpose_tigdog", "val")


@needs_data
def test_layout_loads_real_file(tmp_path):
    layout = DataLayout(tmp_path)
    target = layout.annotation_file("animalpose", "val")
    target.parent.mkdir(parents=True)
    shutil.copy(ANN / "animal_pose_val.json", target)
    records = layout.load("animalpose", "val", check_images=False)
    assert len(records) == 609 and records[0].num_joints == 20
    assert {r.source for r in records} == {"animalpose"}
    assert records[0].image_path.startswith(str(tmp_path / "animal_pose" / "data"))
    with pytest.raises(DataError, match="image file not found"):
        layout.load("animalpose", "val", check_images=True)
