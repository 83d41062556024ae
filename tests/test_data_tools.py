"""Data tools for your own datasets: split generation, the annotation checker, contact sheets.

Real files from ``../shared/data`` are copied and corrupted on purpose; the tests skip with a
reason when that folder is absent.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import REPO, TINY_MODEL, tool_error
from freenet.data.checks import check_coco_file, file_complete
from freenet.data.coco import load_coco_records
from freenet.data.dataset import read_image
from freenet.data.drawing import CAPTION_HEIGHT, Tile, draw_contact_sheet, render_tile
from freenet.data.splits import (SPLIT_PRESETS, apply_split, filter_by_image_ids, load_id_list, load_img_ann_ids,
                                 load_split_file, offset_records, parse_family, parse_joint_list,
                                 sample_by_ratio, sample_per_category)
from freenet.errors import DataError
from freenet.inference import PART_COLOURS
from freenet.joints import load_joint_set

SHARED = REPO.parent / "shared" / "data"
ANN = SHARED / "freenet" / "annotation_files"
INFO = SHARED / "freenet" / "info"
AP10K_SAMPLE = SHARED / "mmpose_samples" / "ap10k"

needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared data folder {SHARED}")


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_splits = load_tool("make_splits")
check_annotations = load_tool("check_annotations")
draw_annotations = load_tool("draw_annotations")
build_union_tool = load_tool("build_union")


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------------
# The checker: a corrupted copy of a real file, one planted defect at a time
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def animalpose_val():
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED}")
    return json.loads((ANN / "animal_pose_val.json").read_text())


@pytest.fixture
def ap10k_copy(tmp_path):
    """The real AP-10K sample (2 images, 2 annotations) copied beside its images."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED}")
    images = tmp_path / "images"
    images.mkdir()
    for p in AP10K_SAMPLE.glob("*.jpg"):
        shutil.copy(p, images / p.name)
    return json.loads((AP10K_SAMPLE / "test_ap10k.json").read_text()), images


def run_checker(capsys, path, *extra):
    out = path.parent / "reports" / "report.json"                  # a folder to be made
    code = check_annotations.main([str(path), *extra, "--json", str(out)])
    text = capsys.readouterr().out
    return code, text, json.loads(out.read_text())


@needs_data
@pytest.mark.parametrize("joints, message", [
    ("nope", "no joint set 'nope'"), (str(REPO / "README.md"), "README.md: malformed JSON"),
    (str(SHARED / "freenet" / "info" / "ap_10k_keypoints_format.json"), "not a joint set")])
def test_checker_joints_that_do_not_load_are_one_line(capsys, joints, message):
    code = check_annotations.main([str(ANN / "animal_pose_val.json"), "--joints", joints, "--no-images"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("check_annotations.py: --joints: ") and message in err[0]


def labeled_joint(ann):
    return next(j for j in range(len(ann["keypoints"]) // 3) if ann["keypoints"][3 * j + 2] > 0)


def dup_ann_id(d):
    d["annotations"][10]["id"] = d["annotations"][3]["id"]
    return "duplicate_annotation_id", "ann_id", d["annotations"][3]["id"]


def dup_image_id(d):
    img = d["images"][5]
    d["images"].append({**img, "file_name": "another.jpg"})
    return "duplicate_image_id", "image_id", img["id"]


def keypoint_count(d):
    d["annotations"][5]["keypoints"] = d["annotations"][5]["keypoints"][:-3]
    return "keypoint_count", "ann_id", d["annotations"][5]["id"]


def visibility_3(d):
    ann = d["annotations"][7]
    ann["keypoints"][3 * labeled_joint(ann) + 2] = 3
    return "visibility_value", "ann_id", ann["id"]


def negative_width(d):
    d["annotations"][2]["bbox"][2] = -5
    return "bbox_empty", "ann_id", d["annotations"][2]["id"]


def unknown_image(d):
    d["annotations"][4]["image_id"] = 10 ** 7
    return "unknown_image", "ann_id", d["annotations"][4]["id"]


def unknown_category(d):
    d["annotations"][8]["category_id"] = 99
    return "unknown_category", "ann_id", d["annotations"][8]["id"]


def labeled_at_origin(d):
    ann = d["annotations"][6]
    j = labeled_joint(ann)
    ann["keypoints"][3 * j:3 * j + 2] = [0, 0]
    return "labeled_at_origin", "ann_id", ann["id"]


@needs_data
@pytest.mark.parametrize("plant", [dup_ann_id, dup_image_id, keypoint_count, visibility_3,
                                   negative_width, unknown_image, unknown_category, labeled_at_origin])
def test_checker_names_each_planted_defect(plant, animalpose_val, tmp_path, capsys):
    data = copy.deepcopy(animalpose_val)
    kind, id_field, bad_id = plant(data)
    path = write_json(tmp_path / "corrupted_val.json", data)
    code, text, report = run_checker(capsys, path)
    assert code == 1
    errors = [i for i in report["issues"] if i["level"] == "error"]
    assert {i["kind"] for i in errors} == {kind}                         # that defect and nothing else
    assert any(i[id_field] == bad_id and i["file"] == str(path) for i in errors)
    where = "annotation id" if id_field == "ann_id" else "image id"
    line = next(t for t in text.splitlines() if f"{where} {bad_id}" in t and "corrupted_val.json" in t)
    assert f"[{kind}]" in text and line.strip().startswith(str(path))


def string_keypoint(d):
    ann = d["annotations"][9]
    ann["keypoints"][3 * labeled_joint(ann)] = "12"
    return "keypoint_values", "ann_id", ann["id"]


@needs_data
@pytest.mark.parametrize("plant, message", [
    (visibility_3, "'keypoints' visibility must be 0, 1 or 2, got 3 at joint "),
    (string_keypoint, "'keypoints' must contain only numbers, got \"12\" at joint "),
    (keypoint_count, "'keypoints' has 57 values, expected 3*20"),
])
def test_training_refuses_what_the_checker_calls_a_broken_annotation(plant, message, animalpose_val, tmp_path):
    """The loader stops at the annotation the checker reports, naming the same file and id."""
    data = copy.deepcopy(animalpose_val)
    kind, _, bad_id = plant(data)
    path = write_json(tmp_path / "corrupted_val.json", data)
    assert check_coco_file(path, check_images=False, joint_set=load_joint_set("animalpose")).kinds("error") == \
        Counter({kind: 1})
    with pytest.raises(DataError) as e:
        load_coco_records(path, tmp_path, load_joint_set("animalpose"), check_images=False)
    assert str(e.value).startswith(f"{path} (id {bad_id}): {message}")


@needs_data
def test_checker_untouched_real_files_have_no_errors(animalpose_val, ap10k_copy, tmp_path, capsys):
    code, text, report = run_checker(capsys, ANN / "animal_pose_val.json")
    assert code == 0 and report["summary"]["error"] == 0
    # The authors' AnimalPose boxes are [x1, y1, x2, y2]: many stick out of their image as [x, y, w, h].
    kinds = Counter(i["kind"] for i in report["issues"])
    assert kinds["bbox_corner_format"] == 1 and kinds["bbox_outside_image"] > 400
    data, images = ap10k_copy
    path = write_json(tmp_path / "test_ap10k.json", data)
    code, text, report = run_checker(capsys, path, "--images", str(images))
    assert code == 0 and report["summary"] == {"error": 0, "warning": 0, "info": 0}   # images decoded too


@needs_data
def test_checker_image_defects(ap10k_copy, tmp_path, capsys):
    data, images = ap10k_copy
    path = write_json(tmp_path / "test_ap10k.json", data)
    (images / "000000000004.jpg").unlink()                               # image id 4
    full = (images / "000000037516.jpg").read_bytes()
    (images / "000000037516.jpg").write_bytes(full[:len(full) // 2])     # image id 37516, truncated
    code, text, report = run_checker(capsys, path, "--images", str(images))
    assert code == 1
    found = {(i["kind"], i["image_id"]) for i in report["issues"] if i["level"] == "error"}
    assert found == {("image_missing", 4), ("image_unreadable", 37516)}
    assert re.search(r"test_ap10k\.json \(image id 4, field 'file_name'\): image file not found", text)
    assert re.search(r"test_ap10k\.json \(image id 37516, field 'file_name'\): cannot decode .*000000037516\.jpg", text)
    # --no-images: the same file passes, with a note that images were not opened.
    code, _, report = run_checker(capsys, path, "--images", str(images), "--no-images")
    assert code == 0 and [i["kind"] for i in report["issues"]] == ["images_not_checked"]


@needs_data
def test_checker_warnings_alone_exit_zero(ap10k_copy, tmp_path, capsys):
    data, images = ap10k_copy
    ann = next(a for a in data["annotations"] if a["image_id"] == 4)     # image 1024 x 683
    ann["keypoints"][3 * 2] = 1100                                        # nose, labeled, right of the image
    ann["num_keypoints"] += 1
    data["images"][0]["width"] += 10                                      # the file lies about image 37516
    path = write_json(tmp_path / "test_ap10k.json", data)
    code, text, report = run_checker(capsys, path, "--images", str(images))
    kinds = {(i["kind"], i["level"], i["ann_id"] or i["image_id"]) for i in report["issues"]}
    assert kinds == {("keypoint_outside_image", "warning", 6), ("num_keypoints_mismatch", "warning", 6),
                     ("image_size_mismatch", "error", 37516)}
    assert "2 nose (1100, " in text and "000000037516.jpg is 1200x867 but the file says 1210x867" in text
    del data["images"][0]["width"]                                         # size unknown: warned, not an error
    write_json(path, data)
    code, _, report = run_checker(capsys, path, "--images", str(images))
    assert code == 0 and {i["kind"] for i in report["issues"]} == {
        "keypoint_outside_image", "num_keypoints_mismatch", "image_size_missing"}


@needs_data
def test_checker_malformed_json_and_missing_sections(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text((ANN / "animal_pose_val.json").read_text()[:-50])
    code, text, report = run_checker(capsys, path)
    assert code == 1 and [i["kind"] for i in report["issues"]] == ["malformed_json"]
    assert "broken.json" in text and "malformed JSON at line" in text
    write_json(path, {"images": []})
    code, text, report = run_checker(capsys, path)
    assert code == 1 and [(i["kind"], i["field"]) for i in report["issues"]] == [("missing_section", "annotations")]


@needs_data
def test_checker_joint_set_sets_the_keypoint_count(animalpose_val):
    report = check_coco_file(ANN / "animal_pose_val.json", joint_set=load_joint_set("ap10k"))
    assert report.kinds("error") == Counter({"keypoint_count": 614})
    assert "60 values, expected 3 x 17 = 51 (joint set 'ap10k')" in str(report.errors[0])
    # Union files list 17 joint names per category but carry 21 joints: one warning, then checked at 21.
    report = check_coco_file(ANN / "ap_10k_animal_pose_union_val.json")
    assert not report.errors and report.kinds()["category_keypoints_mismatch"] == 1
    assert report.stats["joints"]["21"]["names"] == list(load_joint_set("union21").joints)


@needs_data
def test_checker_reads_joints_by_name_like_training(tmp_path):
    """MMPose's AnimalPose order checked against 'animalpose': a note with the map (SPEC §2.2), and
    statistics in the set's order; categories in two orders: an error; unknown names: a warning."""
    ann_file = SHARED / "mmpose_samples" / "animalpose" / "test_animalpose.json"
    joint_set = load_joint_set("animalpose")
    report = check_coco_file(ann_file, joint_set=joint_set)
    assert report.kinds() == Counter({"joints_reordered": 1, "images_not_checked": 1})
    # L_Eye, R_Eye, L_EarBase, R_EarBase, Nose, Throat, TailBase, Withers, then the legs in order
    assert "set joint [0, 1, 3, 4, 2, 17, 19, 18, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]" in str(report.issues[0])
    records = load_coco_records(ann_file, ann_file.parent, joint_set)
    assert report.stats["joints"]["20"]["visible"] == sum(r.visibility > 0 for r in records).tolist()

    data = json.loads(ann_file.read_text())
    names = data["categories"][0]["keypoints"]
    two = dict(data, categories=data["categories"] + [{"id": 9, "name": "x", "keypoints": names[::-1]}])
    report = check_coco_file(write_json(tmp_path / "two.json", two), joint_set=joint_set)
    assert report.kinds("error") == Counter({"category_joint_order": 1})
    assert "categories[id=9].keypoints" in str(report.errors[0])
    unknown = dict(data, categories=[dict(data["categories"][0], keypoints=["spot"] + names[1:])])
    report = check_coco_file(write_json(tmp_path / "unknown.json", unknown), joint_set=joint_set)
    assert report.kinds("warning") == Counter({"joint_names_unknown": 1}) and "unknown: spot" in str(report.issues[0])


def test_checker_survives_hostile_entries(tmp_path):
    data = {"images": ["not an object", {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
                       {"id": [2], "file_name": "b.jpg"}],
            "annotations": [{"id": 1, "image_id": [1], "category_id": 1, "bbox": "box", "keypoints": "x"},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "keypoints": [1, 2]},
                            {"image_id": 1},
                            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                             "keypoints": [1, 1, 2, 0, 0, 0]}],
            "categories": [{"id": 1, "name": "x", "keypoints": ["a", "b"]}, {"name": "no id"}]}
    report = check_coco_file(write_json(tmp_path / "hostile.json", data), [tmp_path])
    assert report.kinds("error") == Counter({"bad_image_entry": 2, "bad_category_entry": 1, "unknown_image": 1,
                                             "keypoint_values": 1, "bbox_malformed": 1, "keypoint_count": 1,
                                             "bad_annotation_entry": 1, "image_missing": 1})
    assert report.stats["instances_kept"] == 1 and report.stats["joints"]["2"]["visible"] == [1, 0]
    assert check_coco_file(tmp_path / "nowhere.json").kinds() == Counter({"file_missing": 1})


def test_checker_reads_ids_and_null_keypoints_as_training_does(tmp_path):
    """Training refuses ids that are not integers and drops an instance whose keypoints are null or
    missing: errors for the first, a note for the others."""
    box = [0, 0, 5, 5]
    data = {"images": [{"id": "img_a", "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg", "width": 9, "height": 9}],
            "annotations": [{"id": "a1", "image_id": 1, "category_id": 1, "bbox": box, "keypoints": [1, 1, 2]},
                            {"id": 2, "image_id": "1", "category_id": 1, "bbox": box, "keypoints": [1, 1, 2]},
                            {"id": 3, "image_id": 1, "category_id": "cat", "bbox": box, "keypoints": [1, 1, 2]},
                            {"id": 4, "image_id": 1, "category_id": 1, "bbox": box, "keypoints": None},
                            {"id": 5, "image_id": 1, "category_id": 1, "bbox": box, "keypoints": [1, 1, 2]},
                            {"id": 6, "image_id": 1, "category_id": 1, "bbox": box}],
            "categories": [{"id": 1, "name": "x", "keypoints": ["a"]}]}
    report = check_coco_file(write_json(tmp_path / "ids.json", data), check_images=False)
    assert report.kinds("error") == Counter({"bad_image_entry": 1, "bad_annotation_entry": 1, "unknown_image": 1,
                                             "unknown_category": 1})
    messages = {i.kind: i.message for i in report.errors}
    assert messages["unknown_image"] == "'image_id' must be an integer, got '1'"
    assert messages["unknown_category"] == "'category_id' must be an integer, got 'cat'"
    assert [(i.ann_id, i.message) for i in report.at("info") if i.kind == "instance_not_kept"] == [
        (4, "'keypoints' is null"), (6, "no 'keypoints'")]


def test_file_complete_walks_past_an_embedded_thumbnail():
    import cv2

    def jpeg(size):
        return cv2.imencode(".jpg", np.full((size, size, 3), 128, np.uint8))[1].tobytes()

    main, thumb = jpeg(64), jpeg(8)
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb        # a thumbnail inside APP1
    full = main[:2] + app1 + main[2:]
    assert cv2.imdecode(np.frombuffer(full, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
    assert file_complete(full) and file_complete(full + b"\0" * 5000)     # trailing data is fine
    assert not file_complete(full[:-2])                                     # the thumbnail's end marker does not count
    assert b"\xff\xd9" in full[:-2]
    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    assert file_complete(png) and not file_complete(png[:-12])


def _independent_counts(data, joints):
    kept = [a for a in data["annotations"] if a["bbox"][2] > 0 and a["bbox"][3] > 0 and any(a["keypoints"])]
    visible = {j: sum(1 for a in kept if a["keypoints"][3 * j + 2] > 0) for j in joints}
    return kept, visible


@needs_data
def test_checker_statistics_match_independent_counts(animalpose_val):
    stats = check_coco_file(ANN / "animal_pose_val.json").stats
    kept, visible = _independent_counts(animalpose_val, (0, 19))
    assert (stats["images"], stats["annotations"], stats["instances_kept"]) == (586, 614, 609) and len(kept) == 609
    joints = stats["joints"]["20"]
    assert joints["names"][0] == "left_eye" and joints["names"][19] == "tailbase"
    assert (joints["visible"][0], joints["visible"][19]) == (visible[0], visible[19]) == (450, 279)
    assert joints["fraction"][19] == round(279 / 609, 4)
    sheep = next(c for c in stats["categories"] if c["name"] == "sheep")
    assert (sheep["annotations"], sheep["kept"]) == (sum(a["category_id"] == 3 for a in animalpose_val["annotations"]),
                                                     sum(a["category_id"] == 3 for a in kept))

    union = json.loads((ANN / "ap_10k_animal_pose_union_val.json").read_text())
    stats = check_coco_file(ANN / "ap_10k_animal_pose_union_val.json").stats
    assert stats["sources"] == {"animalpose": {"annotations": 614, "kept": 609},
                                "ap10k": {"annotations": 1272, "kept": 1272}}
    per_source = stats["joints"]["21"]["per_source"]
    for src, name in (("animalpose", "animal_pose"), ("ap10k", "ap_10k")):
        part = {**union, "annotations": [a for a in union["annotations"] if a["from"] == name]}
        _, visible = _independent_counts(part, (0, 19))
        assert [per_source[src]["visible"][j] for j in (0, 19)] == [visible[0], visible[19]]
    assert per_source["ap10k"]["visible"][19] == 0                        # AP-10K has no throat


# ----------------------------------------------------------------------------------------------
# Splits: missing joints
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ap10k_val_file(tmp_path_factory):
    """A real AP-10K file: the AP-10K val instances of the union-21 file, cut back to their 17 joints."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED}")
    union = json.loads((ANN / "ap_10k_animal_pose_union_val.json").read_text())
    anns = [{**a, "keypoints": a["keypoints"][:51]} for a in union["annotations"] if a["from"] == "ap_10k"]
    used = {a["image_id"] for a in anns}
    data = {"images": [i for i in union["images"] if i["id"] in used], "annotations": anns,
            "categories": union["categories"]}
    return write_json(tmp_path_factory.mktemp("ap10k") / "ap10k_val.json", data)


def split(tmp_path, ann, *args, name="split.json", seed=2):
    out = tmp_path / name
    summary = make_splits.main(["missing-joints", "--ann", str(ann), *args, "--seed", str(seed), "--out", str(out)])
    return out, summary


@needs_data
@pytest.mark.parametrize("preset", ["level0", "level1", "25_5"])
def test_missing_joint_split_has_the_authors_structure(preset, ap10k_val_file, tmp_path):
    out, summary = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--preset", preset)
    entries = load_split_file(out)
    records = load_coco_records(ap10k_val_file, "", load_joint_set("ap10k"), check_images=False)
    assert len(entries) == len(records) == 1272 and sum(summary["families"].values()) == 1272
    assert all(n > 300 for n in summary["families"].values())            # every family drawn
    spec = SPLIT_PRESETS[preset]
    allowed = [set(f) | set(spec["shared"]) for f in spec["families"].values()]
    for e, r in zip(entries, records):
        kept = {j for j, v in enumerate(e["vis"]) if v}
        assert any(kept <= a for a in allowed) and kept <= set(np.flatnonzero(r.visibility))
        assert e["image_id"] == r.image_id and e["box"] == r.box.tolist()
    # The training side reads it back: every entry finds its instance, which gets the entry's joints.
    labeled, report = apply_split(records, entries)
    assert (report.matched, report.unmatched, report.untouched) == (1272, 0, 0)
    assert all(r.visibility.tolist() == e["vis"] for r, e in zip(labeled, entries))
    # The authors' files have no more joints per instance than a family + shared allows, nor do these.
    authors = load_split_file(INFO / {"level0": "missing_keypoints_anns_info_level_0.json",
                                      "level1": "missing_keypoints_anns_info_level_1.json",
                                      "25_5": "25_5_imgs_keypoints_anns_info.json"}[preset])
    most = max(len(a) for a in allowed)
    assert max(sum(e["vis"]) for e in authors) <= most and max(sum(e["vis"]) for e in entries) <= most


@needs_data
def test_missing_joint_split_is_seeded_and_level1_adds_the_paws(ap10k_val_file, tmp_path):
    a, _ = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--preset", "level0", name="a.json")
    b, _ = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--preset", "level0", name="b.json")
    c, _ = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--preset", "level0", name="c.json", seed=3)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    one, _ = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--preset", "level1", name="one.json")
    v0 = np.array([e["vis"] for e in load_split_file(a)])
    v1 = np.array([e["vis"] for e in load_split_file(one)])
    # Same seed, same family draws: level 1 = level 0 + the annotated paws (as the authors' files relate).
    assert np.all(v1 >= v0) and sorted(set(np.nonzero(v1 - v0)[1])) == [7, 10, 13, 16]


@needs_data
def test_families_by_joint_name_equal_the_preset(ap10k_val_file, tmp_path, capsys):
    preset, _ = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--preset", "level0", name="preset.json")
    named, summary = split(tmp_path, ap10k_val_file, "--joints", "ap10k", "--family",
                           "front=L_F_hip,L_F_knee,l_f_paw,R-F-hip,R_F_knee,R_F_paw", "--family", "back=11-16",
                           "--shared", "0-2,neck,4", name="named.json")
    assert named.read_bytes() == preset.read_bytes()
    assert "front:" in capsys.readouterr().out and set(summary["families"]) == {"front", "back"}
    # Without --joints the names come from the file's categories (AP-10K's own spellings).
    own, _ = split(tmp_path, ap10k_val_file, "--family", "front=left_shoulder,left_elbow,left_front_paw,"
                   "right_shoulder,right_elbow,right_front_paw", "--family", "back=11-16", "--shared", "0-4",
                   name="own.json")
    assert own.read_bytes() == preset.read_bytes()


@needs_data
def test_split_of_a_file_in_another_joint_order_is_in_the_order_training_reads(tmp_path, capsys):
    """MMPose's AnimalPose file lists FreeNet's AnimalPose joints in another order; training reads it
    in the joint set's order, so the split must be too: without --joints it is refused, with it the
    split hides the joints it names (given in the file's own spellings) once training has read it."""
    ann = SHARED / "mmpose_samples" / "animalpose" / "test_animalpose.json"
    with tool_error(capsys, r"joint set animalpose in another order \(and of animalpose_mmpose in "
                            r"this one\).*give --joints"):
        split(tmp_path, ann, "--family", "front=L_F_Elbow,R_F_Elbow", "--shared", "0")
    out, _ = split(tmp_path, ann, "--joints", "animalpose", "--family", "front=L_F_Elbow,R_F_Elbow",
                   "--shared", "L_Eye")
    js = load_joint_set("animalpose")
    records, _ = apply_split(load_coco_records(ann, "", js, check_images=False), load_split_file(out, 20))
    # annotation 129 labels both front elbows (FreeNet's L_F_hip, R_F_hip) and the left eye
    kept = [[js.joints[j] for j in np.flatnonzero(r.visibility)] for r in records]
    assert kept[0] == ["L_eye", "L_F_hip", "R_F_hip"]
    assert set(kept[1]) <= {"L_eye", "L_F_hip", "R_F_hip"}


def test_joint_list_parsing():
    names = load_joint_set("ap10k").joints
    assert parse_joint_list("0-2, neck,L_F_HIP,3", names) == [0, 1, 2, 3, 5]
    assert parse_family("legs=R_B_paw,13", names) == ("legs", [16, 13])
    assert parse_joint_list("left_front_elbow,L_F_Elbow", names) == [5]        # other datasets' names for L_F_hip
    with pytest.raises(ValueError, match="unknown joint 'L_ear'"):
        parse_joint_list("L_ear", names)
    with pytest.raises(ValueError, match=r"joint index 17 \(from '15-17'\) is outside \[0, 17\)"):
        parse_joint_list("15-17", names)
    with pytest.raises(ValueError, match="NAME=JOINTS"):
        parse_family("5,6,7", names)


@needs_data
def test_missing_joints_errors_are_one_line(tmp_path, capsys):
    with tool_error(capsys, r"preset 'level0' uses AP-10K joint indices \(17 joints\); .*has 20"):
        split(tmp_path, ANN / "animal_pose_val.json", "--joints", "animalpose", "--preset", "level0")
    with tool_error(capsys, "unknown joint 'elbow'"):
        split(tmp_path, ANN / "animal_pose_val.json", "--joints", "animalpose", "--family", "front=elbow")
    # FreeNet's AnimalPose order is animalpose's and not animalpose_mmpose's: which one training reads
    # it with is the config's choice, so the split needs --joints
    with tool_error(capsys, r"joint set animalpose_mmpose in another order \(and of animalpose in "
                            r"this one\).*give --joints"):
        split(tmp_path, ANN / "animal_pose_val.json", "--family", "front=L_F_hip")


# ----------------------------------------------------------------------------------------------
# Splits: N images per category
# ----------------------------------------------------------------------------------------------

@needs_data
def test_per_category_lists_are_nested_and_exact(tmp_path):
    train = ANN / "animal_pose_train.json"
    data = json.loads(train.read_text())
    category = {}                                  # image -> category of its first kept annotation
    for a in sorted(data["annotations"], key=lambda a: a["image_id"]):
        if a["bbox"][2] > 0 and a["bbox"][3] > 0 and any(a["keypoints"]):
            category.setdefault(a["image_id"], a["category_id"])
    make_splits.main(["per-category", "--ann", str(train), "--n", "5", "10", "25", "--out-dir", str(tmp_path / "a")])
    lists = {n: load_id_list(tmp_path / "a" / f"annotation_list_{n}.json") for n in (5, 10, 25)}
    for n, ids in lists.items():
        assert len(set(ids)) == len(ids) == 5 * n
        assert Counter(category[i] for i in ids) == {c: n for c in range(1, 6)}
    assert set(lists[5]) < set(lists[10]) < set(lists[25])
    # Grouped by category, like the authors' lists.
    assert [category[i] for i in lists[5]] == sorted(category[i] for i in lists[5])
    # Seeded; --independent draws each N afresh (the authors' lists overlap only partly).
    make_splits.main(["per-category", "--ann", str(train), "--n", "25", "--out", str(tmp_path / "b.json")])
    assert load_id_list(tmp_path / "b.json") == lists[25]
    make_splits.main(["per-category", "--ann", str(train), "--n", "5", "25", "--out-dir", str(tmp_path / "c"),
                      "--independent"])
    five, twenty_five = (load_id_list(tmp_path / "c" / f"annotation_list_{n}.json") for n in (5, 25))
    assert Counter(category[i] for i in five) == {c: 5 for c in range(1, 6)} and not set(five) <= set(twenty_five)
    # The training side: the listed images' records.
    records = load_coco_records(train, "", load_joint_set("animalpose"), check_images=False)
    labeled = filter_by_image_ids(records, lists[5])
    assert {r.image_id for r in labeled} == set(lists[5])


def test_per_category_short_categories_give_all_their_images():
    from freenet.data.records import Record

    def rec(image_id, category):
        return Record("x.jpg", image_id, image_id, category, np.ones(4, np.float32), np.zeros((1, 2), np.float32),
                      np.ones(1, np.float32))

    # Image 4 holds a category-1 and a category-2 animal: it counts once, for its first (1).
    records = [rec(1, 1), rec(2, 1), rec(3, 2), rec(4, 1), rec(4, 2)]
    lists = sample_per_category(records, [1, 5], seed=0)
    assert sorted(lists[5]) == [1, 2, 3, 4] and lists[5][-1] == 3       # category 2 has one image: 3
    assert len(lists[1]) == 2 and lists[1][0] in (1, 2, 4) and lists[1][1] == 3


# ----------------------------------------------------------------------------------------------
# Splits: random ratio
# ----------------------------------------------------------------------------------------------

def _coco(images, anns):
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in images],
            "annotations": [{"id": a, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10],
                             "keypoints": [5, 5, 2]} for a, i in anns],
            "categories": [{"id": 1, "name": "x", "keypoints": ["p"]}]}


def test_ratio_tiny_case_by_hand(tmp_path, capsys):
    a = write_json(tmp_path / "a.json", _coco([1, 2], [(1, 1), (2, 2), (3, 1)]))  # loading order: ann 1, 3, 2
    b = write_json(tmp_path / "b.json", _coco([1], [(1, 1), (2, 1)]))             # ids collide with a.json
    summary = make_splits.main(["ratio", "--ann", str(a), str(b), "--ratio", "0.6", "--out-prefix",
                                str(tmp_path / "r")])
    assert "offsetting them" in capsys.readouterr().out and summary["offsets"] == [(0, 0), (2, 3)]
    # Pool: (img 1, ann 1), (1, 3), (2, 2), b's (1, 1) -> (3, 4), (1, 2) -> (3, 5).
    # random.seed(2); random.sample(range(5), int(5 * 0.6)) == [0, 4, 3] -> pool positions 0, 3, 4.
    assert json.loads((tmp_path / "r_img_ids.json").read_text()) == [1, 3]
    assert (tmp_path / "r_img_ann_ids.json").read_text() == '{"1": [1], "3": [4, 5]}'
    assert load_img_ann_ids(tmp_path / "r_img_ann_ids.json") == {1: [1], 3: [4, 5]}
    # Disjoint ids are kept as they are.
    c = write_json(tmp_path / "c.json", _coco([7], [(9, 7), (8, 7)]))
    summary = make_splits.main(["ratio", "--ann", str(a), str(c), "--ratio", "0.4", "--seed", "7", "--out-prefix",
                                str(tmp_path / "s")])
    assert summary["offsets"] is None and "offsetting" not in capsys.readouterr().out
    # Pool: (1, 1), (1, 3), (2, 2), (7, 9), (7, 8); random.Random(7).sample(range(5), 2) == [2, 1].
    assert (tmp_path / "s_img_ann_ids.json").read_text() == '{"1": [3], "2": [2]}'
    # Ids from 0: the authors' shift by the largest id would put b's image 0 on a's image 1 and its
    # annotation 0 on a's 2; one more keeps them apart.
    z = write_json(tmp_path / "z.json", _coco([0, 1], [(0, 0), (1, 1), (2, 1)]))
    y = write_json(tmp_path / "y.json", _coco([0], [(0, 0), (1, 0)]))
    summary = make_splits.main(["ratio", "--ann", str(z), str(y), "--ratio", "1", "--out-prefix", str(tmp_path / "t")])
    assert summary["offsets"] == [(0, 0), (2, 3)]
    assert (tmp_path / "t_img_ann_ids.json").read_text() == '{"0": [0], "1": [1, 2], "2": [3, 4]}'


@needs_data
def test_ratio_files_reproduce_the_authors_animalpose_part(tmp_path):
    # AP-10K train is not shipped: the level-0 split lists its 9122 instances (image id + box) in
    # file order, which is what the pool's length and order need.
    entries = load_split_file(INFO / "missing_keypoints_anns_info_level_0.json")
    ap10k = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 2000, "height": 2000}
                        for i in sorted({e["image_id"] for e in entries})],
             "annotations": [{"id": k + 1, "image_id": e["image_id"], "category_id": 1, "bbox": e["box"],
                              "keypoints": [10, 10, 2] * 17} for k, e in enumerate(entries)]}
    ap10k_file = write_json(tmp_path / "ap10k_train.json", ap10k)
    animalpose = ANN / "animal_pose_train.json"
    summary = make_splits.main(["ratio", "--ann", str(ap10k_file), str(animalpose), "--ratio", "0.1",
                                "--offsets", "0:0", "58632:16561", "--out-prefix", str(tmp_path / "random_0.1")])
    assert (summary["labeled"], summary["unlabeled"]) == (1458, 14587 - 1458)

    ours = json.loads((tmp_path / "random_0.1_img_ann_ids.json").read_text())
    authors = json.loads((INFO / "random_0.1_img_ann_ids.json").read_text())
    ours_ids = json.loads((tmp_path / "random_0.1_img_ids.json").read_text())
    authors_ids = json.loads((INFO / "random_0.1_img_ids.json").read_text())

    def animalpose_part(d):
        return [(k, v) for k, v in d.items() if int(k) >= 58632]

    # AnimalPose: the same images and annotation ids, in the same order (per-image order included).
    assert animalpose_part(ours) == animalpose_part(authors) and len(animalpose_part(ours)) == 515
    # AP-10K (stand-in annotation ids): the same images with the same number of annotations each.
    assert {k: len(v) for k, v in ours.items() if int(k) < 58632} == \
        {k: len(v) for k, v in authors.items() if int(k) < 58632}
    assert ours_ids == [int(k) for k in ours] and [i for i in ours_ids if i >= 58632] == \
        [i for i in authors_ids if i >= 58632]
    # Exactly the training's own sampler on the same pools (records with the offsets applied).
    pools = [load_coco_records(ap10k_file, "", None, check_images=False),
             offset_records(load_coco_records(animalpose, "", None, check_images=False), 58632, 16561)]
    labeled, _ = sample_by_ratio(pools, 0.1, seed=2)
    expected = {}
    for r in labeled:
        expected.setdefault(str(r.image_id), []).append(r.ann_id)
    assert list(ours.items()) == list(expected.items())


# ----------------------------------------------------------------------------------------------
# Contact sheets
# ----------------------------------------------------------------------------------------------

def _tile_point(point, box, tile):
    """Where an image point lands in a crop tile: the box's square, padded 1.25x, fills the tile."""
    x, y, w, h = box
    side = max(w, h) * 1.25
    return np.round((np.asarray(point) - [x + w / 2, y + h / 2]) * tile / side + tile / 2).astype(int)


def _isolated_joint(kps, labeled):
    """The labeled joint farthest from every other labeled joint."""
    idx = np.flatnonzero(labeled)
    d = np.linalg.norm(kps[idx, None] - kps[None, idx], axis=-1) + np.eye(len(idx)) * 1e9
    return int(idx[np.argmax(d.min(1))])


def _part_colour(joint_set, j):
    return next(PART_COLOURS[g.name] for g in joint_set.part_groups if j in g.joints)


@needs_data
def test_contact_sheet_size_tiles_and_a_gt_joint_at_its_pixel(ap10k_copy, tmp_path, capsys):
    data, images = ap10k_copy
    path = write_json(tmp_path / "test_ap10k.json", data)
    out = tmp_path / "sheet.png"
    assert draw_annotations.main([str(path), "--images", str(images), "--tile", "128", "--out", str(out)]) == 0
    assert "2 tiles, 256x146 px" in capsys.readouterr().out
    sheet = read_image(str(out))
    assert sheet.shape == (128 + CAPTION_HEIGHT, 256, 3)
    _, tiles = draw_contact_sheet(path, [images], tile_size=128, cols=1)
    assert [(t.image_id, t.ann_id, t.category) for t in tiles] == [(4, 6, "antelope"), (37516, 9284, "jaguar")]

    ann = next(a for a in data["annotations"] if a["id"] == 6)       # the first tile (image 4)
    values = np.asarray(ann["keypoints"], float).reshape(17, 3)
    j = _isolated_joint(values[:, :2], values[:, 2] > 0)
    x, y = _tile_point(values[j, :2], ann["bbox"], 128)
    colour = _part_colour(load_joint_set("ap10k"), j)
    assert np.abs(sheet[y, x].astype(int) - colour).max() <= 30      # PNG round trip is lossless; AA aside
    plain = render_tile(read_image(str(images / "000000000004.jpg")), Tile("", 4, 6, "", *_region(ann), []),
                        load_joint_set("ap10k"), 128)
    assert np.abs(plain[y, x].astype(int) - colour).max() > 30       # the photo alone is not that colour


def _region(ann):
    x, y, w, h = ann["bbox"]
    return (x + w / 2, y + h / 2), max(w, h) * 1.25


@needs_data
def test_contact_sheet_draws_predictions_instead(ap10k_copy, tmp_path):
    data, images = ap10k_copy
    path = write_json(tmp_path / "test_ap10k.json", data)
    joint_set = load_joint_set("ap10k")
    by_image = {a["image_id"]: a for a in data["annotations"]}
    results, expected = [], {}
    for image_id, shift in ((4, 40.0), (37516, -60.0)):
        values = np.asarray(by_image[image_id]["keypoints"], float).reshape(17, 3)
        j = _isolated_joint(values[:, :2], values[:, 2] > 0)
        pred = values.copy()
        pred[:, 0] += shift
        pred[:, 2] = 0.05                      # below the threshold: not drawn ...
        pred[j, 2] = 0.9                       # ... except one joint
        result = {"image_id": image_id, "category_id": by_image[image_id]["category_id"],
                  "keypoints": pred.ravel().tolist(), "score": 0.75}
        if image_id == 37516:                  # eval_ap10k.py's results carry the crop they were made on
            result.update(center=[500.0, 400.0], scale=[5.0, 5.0])
            centre, side = (500.0, 400.0), 1000.0
        else:
            centre, side = _region(by_image[image_id])
        results.append(result)
        expected[image_id] = (j, np.round((pred[j, :2] - centre) * 128 / side + 64).astype(int))
    results_file = write_json(tmp_path / "results.json", results)
    sheet, tiles = draw_contact_sheet(path, [images], results_file, tile_size=128, cols=2)
    assert [(t.image_id, t.ann_id, t.score) for t in tiles] == [(4, 6, 0.75), (37516, 9284, 0.75)]
    assert tiles[0].caption == "img 4 ann 6 antelope pred 0.75"
    for col, t in enumerate(tiles):
        j, (x, y) = expected[t.image_id]
        tile = sheet[:128, col * 128:(col + 1) * 128].astype(int)
        assert np.abs(tile[y, x] - _part_colour(joint_set, j)).max() <= 30
        plain = render_tile(read_image(str(images / t.file_name)), Tile("", 0, 0, "", t.centre, t.side, []),
                            joint_set, 128).astype(int)
        changed = np.argwhere(np.abs(tile - plain).max(-1) > 0)          # (K, 2) rows, cols
        assert len(changed) and np.abs(changed - [y, x]).max() <= 6      # only that marker was drawn


@needs_data
def test_contact_sheet_grid_of_whole_images(tmp_path):
    horse10 = SHARED / "mmpose_samples" / "horse10"
    sheet, tiles = draw_contact_sheet(horse10 / "test_horse10.json", [horse10], tile_size=64, cols=2, whole=True)
    assert len(tiles) == 3 and sheet.shape == (2 * (64 + CAPTION_HEIGHT), 128, 3)
    assert tiles[0].caption == "img 100 1 instance"
    empty = sheet[64 + CAPTION_HEIGHT:, 64:]                              # the fourth cell
    assert (empty == 40).all()
    assert (sheet[:64, :64] != 40).any(axis=-1).mean() > 0.5             # a photo fills the first cell
    sheet, tiles = draw_contact_sheet(horse10 / "test_horse10.json", [horse10], tile_size=64, max_tiles=2,
                                      image_ids=[500, 900])
    assert [t.image_id for t in tiles] == [500, 900] and sheet.shape == (64 + CAPTION_HEIGHT, 128, 3)


# ----------------------------------------------------------------------------------------------
# The training scripts read what make_splits writes
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_split_ap10k.py", "train_synthetic_ap10k.py"])
def test_training_reads_generated_files(script, synthetic_root, tmp_path):
    train = synthetic_root / "ap_10k" / "annotations" / "ap10k-train-split1.json"
    split_file, args = tmp_path / "split.json", []
    if script == "train_synthetic_ap10k.py":
        make_splits.main(["per-category", "--ann", str(train), "--n", "2", "--out", str(tmp_path / "list.json")])
        args = ["DATASET.LABEL_LIST", str(tmp_path / "list.json")]
        make_splits.main(["missing-joints", "--ann", str(train), "--joints", "ap10k", "--preset", "25_5",
                          "--images", str(tmp_path / "list.json"), "--out", str(split_file)])
    else:
        make_splits.main(["missing-joints", "--ann", str(train), "--joints", "ap10k", "--family", "front=5-10",
                          "--family", "back=L_B_hip,L_B_knee,L_B_paw,R_B_hip,R_B_knee,R_B_paw", "--shared", "0-4",
                          "--seed", "7", "--out", str(split_file)])
    n = len(load_split_file(split_file))
    level = ["--level", "0"] if script == "train_split_ap10k.py" else []
    cmd = [sys.executable, str(REPO / script), *level, "--anns-info-path", str(split_file), "--data-root",
           str(synthetic_root), "--output-dir", str(tmp_path / "out"), "--total-steps", "2", "--eval-step", "2",
           "--workers", "0", "--batch-size", "2", "--mu", "2", "--warmup-steps", "1", "--feedback-steps-start", "2",
           "--feedback-steps-complete", "4", "--pretrained-weights-name", "", "--pretrained-model-path",
           str(tmp_path / "none"), *TINY_MODEL, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"{split_file}: {n}/{n} entries matched a record, 0/{n} records untouched" in log


def test_every_tool_ends_a_user_error_with_exit_code_2(tmp_path, capsys):
    """The scripts' convention (README: exit codes): 2 and one line for an input the user can fix;
    check_annotations.py's 1 means problems found in a file it could read."""
    missing = str(tmp_path / "missing.json")
    with tool_error(capsys, f"^draw_annotations.py: .*{re.escape(missing)}"):
        draw_annotations.main([missing, "--images", str(tmp_path), "--out", str(tmp_path / "sheet.png")])
    with tool_error(capsys, f"^make_splits.py ratio: .*{re.escape(missing)}"):
        make_splits.main(["ratio", "--ann", missing, "--ratio", "0.1", "--out-prefix", str(tmp_path / "p")])
    assert check_annotations.main([missing, "--joints", "no_such_set"]) == 2
    assert "check_annotations.py: --joints: " in capsys.readouterr().err
    (tmp_path / "a_file").touch()
    with pytest.raises(SystemExit) as stop:                          # refused before the check runs
        check_annotations.main([missing, "--json", str(tmp_path / "a_file" / "report.json")])
    assert stop.value.code == 2
    assert f"argument --json: {tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    assert build_union_tool.main(["--out", str(tmp_path / "u"), "--name", "u", "--source", f"ap10k={missing}"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
