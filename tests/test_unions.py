"""Joint unions from names, converted annotation files, the build_union tool and training on a custom
union (SPEC §2.4, §2.5, §3.4, §3.5)."""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, TINY_MODEL
from freenet.config import configured_joint_set, load_config
from freenet.data.coco import load_coco_json, load_coco_records
from freenet.data.settings import build_training_sets
from freenet.data.synthetic import CATEGORY_KEYPOINT_NAMES
from freenet.errors import DataError
from freenet.evaluation import coco_ground_truth, coco_keypoint_metrics
from freenet.joints import (JointSetError, load_alias_table, load_joint_set, parse_alias_table, parse_joint_set)
from freenet.unions import (SourceFile, UnionError, build_union, convert_annotations, flip_pairs_by_name,
                            format_report, make_union_folder, parse_rename, side_and_stem, source_joint_names,
                            source_skeleton)

MMPOSE = SHARED_DATA / "mmpose_samples"
SAMPLE_FILES = {"ap10k": MMPOSE / "ap10k/test_ap10k.json", "atrw": MMPOSE / "atrw/test_atrw.json",
                "horse10": MMPOSE / "horse10/test_horse10.json", "ak": MMPOSE / "ak/test_animalkingdom.json",
                "animalpose": MMPOSE / "animalpose/test_animalpose.json"}

# SPEC §2.4, written out.
UNION24_JOINTS = ["L_eye", "R_eye", "nose", "neck", "tail", "L_F_hip", "L_F_knee", "L_F_paw", "R_F_hip", "R_F_knee",
                  "R_F_paw", "L_B_hip", "L_B_knee", "L_B_paw", "R_B_hip", "R_B_knee", "R_B_paw", "L_ear", "R_ear",
                  "throat", "wither", "chin", "L_shoulder", "R_shoulder"]
ANIMALPOSE_MAP = [[0, 0], [1, 1], [2, 2], [3, 17], [4, 18], [5, 5], [6, 8], [7, 11], [8, 14], [9, 6], [10, 9],
                  [11, 12], [12, 15], [13, 7], [14, 10], [15, 13], [16, 16], [17, 19], [18, 20], [19, 4]]
TIGDOG_MAP = [[0, 0], [1, 1], [2, 21], [3, 7], [4, 10], [5, 13], [6, 16], [7, 4], [8, 6], [9, 9], [10, 12],
              [11, 15], [12, 22], [13, 23], [14, 5], [15, 8], [16, 11], [17, 14], [18, 3]]
AP10K_SIGMAS = [.025, .025, .026, .035, .035, .079, .072, .062, .079, .072, .062, .107, .087, .089, .107, .087, .089]
UNION21_WEIGHTS = [1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 1.5, 1.2, 1.2, 1.5, 1.5, 1.2, 1.5, 1.5, 1.2, 1.5,
                   1.0, 1.0, 1.0, 1.0]
UNION24_WEIGHTS = [1, 1, 1, 1, 1, 1, 1.2, 1.5, 1, 1.2, 1.5, 1, 1.2, 1.5, 1, 1.2, 1.5, 1, 1, 1, 1, 1, 1, 1]
AP10K_FLIPS = [[0, 1], [5, 8], [6, 9], [7, 10], [11, 14], [12, 15], [13, 16]]


def needs_samples():
    if not MMPOSE.is_dir():
        pytest.skip(f"needs the MMPose sample files in {MMPOSE} (not present beside this checkout)")


def spec_sources(style: str):
    """Source joint names: FreeNet's names or the spellings inside the datasets' own files."""
    names = {n: list(load_joint_set(n).joints) for n in ("ap10k", "animalpose", "tigdog")}
    if style == "dataset":
        names["ap10k"] = list(CATEGORY_KEYPOINT_NAMES["ap10k"])          # left_shoulder, root_of_tail, ...
        names["animalpose"] = list(CATEGORY_KEYPOINT_NAMES["animalpose"])  # left_front_elbow, withers, ...
    return [(n, names[n]) for n in ("ap10k", "animalpose", "tigdog")]


# ----------------------------------------------------------------------------------------------
# The SPEC unions rebuilt from names
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["freenet", "dataset"])
def test_union21_from_names_is_spec_2_4(style):
    union, index, rows = build_union(spec_sources(style)[:2], name="union21")
    assert union["joints"] == UNION24_JOINTS[:21]
    assert union["sources"]["ap10k"]["map"] == [[i, i] for i in range(17)]
    assert union["sources"]["animalpose"]["map"] == ANIMALPOSE_MAP
    assert index["animalpose"].tolist() == [u for _, u in ANIMALPOSE_MAP]
    assert union["flip_pairs"] == AP10K_FLIPS + [[17, 18]]
    assert union["loss_weights"] == UNION21_WEIGHTS
    assert union["upper_body"] == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 17, 18]
    assert union["lower_body"] == [4, 11, 12, 13, 14, 15, 16, 19, 20]
    assert union["sigmas"] == AP10K_SIGMAS + [.035, .035, .10, .10]
    assert union["part_groups"] == [
        {"name": "face", "joints": [0, 1, 2], "min_ratio": 0.5},
        {"name": "front", "joints": [5, 6, 7, 8, 9, 10, 17, 18], "min_ratio": 0.6},
        {"name": "back", "joints": [4, 11, 12, 13, 14, 15, 16], "min_ratio": 0.65},
        {"name": "exclusive", "joints": [3, 19, 20], "min_ratio": 0.65}]
    assert union["logging_groups"] == {"head": [0, 1, 2, 3, 17, 18, 19], "front": [5, 6, 7, 8, 9, 10, 20],
                                       "back": [4, 11, 12, 13, 14, 15, 16]}
    bundled = json.loads(Path(load_joint_set("union21").path).read_text())
    for key in ("joints", "flip_pairs", "loss_weights", "upper_body", "lower_body", "sigmas", "skeleton",
                "part_groups", "logging_groups"):
        assert union[key] == bundled[key], key
    assert [r.created for r in rows if r.source == "animalpose"].count(True) == 4  # ears, throat, wither


@pytest.mark.parametrize("style", ["freenet", "dataset"])
def test_union24_from_names_is_spec_2_4_and_the_bundled_file(style):
    union, _, _ = build_union(spec_sources(style), like=load_joint_set("union24"), name="union24")
    assert union["joints"] == UNION24_JOINTS
    assert union["sources"]["animalpose"]["map"] == ANIMALPOSE_MAP
    assert union["sources"]["tigdog"]["map"] == TIGDOG_MAP
    assert union["flip_pairs"] == AP10K_FLIPS + [[17, 18], [22, 23]]
    assert union["loss_weights"] == UNION24_WEIGHTS
    assert union["upper_body"] == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 17, 18, 21, 22, 23]
    assert union["sigmas"] == AP10K_SIGMAS + [.035, .035, .10, .10, .026, .035, .035]
    assert union["part_groups"][3] == {"name": "exclusive", "joints": [3, 19, 20, 21, 22, 23], "min_ratio": 0.65}
    assert union["logging_groups"]["head"] == [0, 1, 2, 3, 17, 18, 19, 21]
    assert union["logging_groups"]["front"] == [5, 6, 7, 8, 9, 10, 20, 22, 23]
    bundled = json.loads(Path(load_joint_set("union24").path).read_text())
    for key in bundled:
        if key == "sources":
            assert {s: v["map"] for s, v in union[key].items()} == {s: v["map"] for s, v in bundled[key].items()}
        elif key != "description":
            assert union[key] == bundled[key], key
    assert parse_joint_set(union).flip_index[22] == 23


def test_union24_without_a_template_takes_the_dictionary_weights():
    """union-24's loss weights (hips and tail 1.0) are the authors' choice; the dictionary holds union-21's."""
    union, _, _ = build_union(spec_sources("freenet"), name="u")
    assert union["loss_weights"] == UNION21_WEIGHTS + [1.0, 1.0, 1.0]
    assert union["sigmas"] == list(load_joint_set("union24").sigmas)


def test_mmpose_animalpose_order_gives_the_same_union_joints():
    mm = list(load_joint_set("animalpose_mmpose").joints)
    freenet, _, _ = build_union(spec_sources("freenet")[:2], name="u")
    union, index, _ = build_union([spec_sources("freenet")[0], ("animalpose", mm)], name="u")
    for key in ("joints", "flip_pairs", "loss_weights", "upper_body", "sigmas", "skeleton", "part_groups",
                "logging_groups"):
        assert union[key] == freenet[key], key
    mm_names = ["L_Eye", "R_Eye", "L_EarBase", "R_EarBase", "Nose", "Throat", "TailBase", "Withers", "L_F_Elbow",
                "R_F_Elbow", "L_B_Elbow", "R_B_Elbow", "L_F_Knee", "R_F_Knee", "L_B_Knee", "R_B_Knee", "L_F_Paw",
                "R_F_Paw", "L_B_Paw", "R_B_Paw"]
    _, index2, _ = build_union([spec_sources("freenet")[0], ("animalpose", mm_names)], name="u")
    expected = [0, 1, 17, 18, 2, 19, 4, 20, 5, 8, 11, 14, 6, 9, 12, 15, 7, 10, 13, 16]
    assert index["animalpose"].tolist() == expected and index2["animalpose"].tolist() == expected


# ----------------------------------------------------------------------------------------------
# The joint dictionary and naming rules
# ----------------------------------------------------------------------------------------------

def test_dictionary_values_agree_with_the_bundled_union24_and_documented_defaults():
    table = load_alias_table()
    u24 = load_joint_set("union24")
    assert list(table.joints) == list(u24.joints)             # dictionary order = union-24 order
    assert [table.joints[n].sigma for n in u24.joints] == list(u24.sigmas)
    assert dict(table.part_min_ratios) == {"face": .5, "front": .6, "back": .65, "exclusive": .65}
    new = table.new_joint
    assert new.sigma == statistics.median(AP10K_SIGMAS) == 0.072  # the documented reason for the default
    assert (new.part, new.half, new.log, new.weight) == ("exclusive", "upper", None, 1.0)
    # AP-10K-style slot names vs TigDog's shoulder
    assert table.canonical_name("left_shoulder") == "L_F_hip" and table.canonical_name("L_shoulder") == "L_shoulder"
    assert table.canonical_name("Ankle_Left ") is None and "Animal Kingdom" in table.note("Ankle_Left ")


def test_bad_dictionary_entries_name_the_field():
    good = json.loads(Path(load_alias_table().path).read_text())
    cases = [(("joints", "nose", "half"), "middle", "joints.nose.half"),
             (("joints", "nose", "links"), ["snout"], "joints.nose.links"),
             (("joints", "nose", "sigma"), 0, "joints.nose.sigma")]
    for (a, b, c), value, field in cases:
        bad = json.loads(json.dumps(good))
        bad[a][b][c] = value
        with pytest.raises(JointSetError, match=f"d.json: field '{field}'"):
            parse_alias_table(bad, "d.json")
    bad = json.loads(json.dumps(good))
    bad["distinct"].append({"names": ["root_of_tail"], "note": "x"})
    with pytest.raises(JointSetError, match="'root_of_tail' is also an alias of 'tail'"):
        parse_alias_table(bad, "d.json")


@pytest.mark.parametrize("name, expected", [
    ("L_F_hip", ("L", "f_hip")), ("R_shoulder", ("R", "shoulder")), ("Eye_Left", ("L", "eye")),
    ("Mouth_Back_Right", ("R", "mouth_back")), ("left_front_paw", ("L", "front_paw")),
    ("Ankle_Left ", ("L", "ankle")), ("Nearknee", ("L", "knee")), ("Offhindfetlock", ("R", "hindfetlock")),
    ("lefteye", ("L", "eye")), ("neck", (None, "neck")), ("Shoulder", (None, "shoulder"))])
def test_side_and_stem(name, expected):
    assert side_and_stem(name) == expected


def test_flip_pairs_settle_shared_stems_by_origin():
    names = ["Nearknee", "Offknee", "Knee_Left", "Knee_Right", "offset", "tail_left", "tail_right", "Eye"]
    origins = ["horse10", "horse10", "ak", "ak", "x", "y", "z", "horse10"]
    assert flip_pairs_by_name(names, origins) == [(0, 1), (2, 3), (5, 6)]
    assert flip_pairs_by_name(names) == [(5, 6)]  # without origins 'knee' is ambiguous: no guess


def test_renames_and_clashes():
    sources = [("ap10k", list(CATEGORY_KEYPOINT_NAMES["ap10k"])),
               ("mine", ["nose", "left_shoulder", "L_F_Elbow", "Shoulder_Left", "Shoulder_Right", "tip"])]
    union, index, rows = build_union(sources, renames={("mine", "shoulder_left"): "L_shoulder",
                                                       ("mine", "Shoulder_Right"): "R_shoulder",
                                                       ("mine", "tip"): "tail_tip"}, name="u")
    names = union["joints"]
    mine = [names[u] for u in index["mine"]]
    # left_shoulder and L_F_Elbow both mean L_F_hip: the second is kept apart under the source's name
    assert mine == ["nose", "L_F_hip", "mine_L_F_Elbow", "L_shoulder", "R_shoulder", "tail_tip"]
    assert [r.kind for r in rows if r.source == "mine"] == ["same", "alias", "clash", "renamed", "renamed", "renamed"]
    assert [names.index("L_shoulder"), names.index("R_shoulder")] in union["flip_pairs"]
    assert "CLASH" in format_report(rows, union)
    with pytest.raises(UnionError, match="source 'mine' has no such joint"):
        build_union(sources, renames={("mine", "ear"): "L_ear"})
    with pytest.raises(UnionError, match="no source named 'theirs'"):
        build_union(sources, renames={("theirs", "nose"): "nose"})
    assert parse_rename("ak:Ankle_Left =L_B_paw") == (("ak", "Ankle_Left "), "L_B_paw")
    assert SourceFile.parse("a=x/t.json:imgs/a") == SourceFile("a", Path("x/t.json"), Path("imgs/a"))
    assert SourceFile.parse("a=x/t.json") == SourceFile("a", Path("x/t.json"))


def test_every_clash_gets_a_joint_of_its_own():
    union, index, rows = build_union([("a", ["nose", "L_eye", "L_eye", "L_eye"])], name="u")
    assert union["joints"] == ["nose", "L_eye", "a_L_eye", "a_L_eye_2"]
    assert index["a"].tolist() == [0, 1, 2, 3]
    assert [r.kind for r in rows] == ["same", "same", "clash", "clash"]
    assert [r.created for r in rows] == [True, True, True, True]
    # a clash name an earlier source already uses is not shared either
    union, index, _ = build_union([("x", ["a_L_eye"]), ("a", ["L_eye", "L_eye"])], name="u")
    assert union["joints"] == ["a_L_eye", "L_eye", "a_L_eye_2"] and index["a"].tolist() == [1, 2]


def test_a_clash_between_two_spellings_of_a_new_joint_names_both():
    union, index, rows = build_union([("b", ["Tail Tip", "tail-tip"])], name="u")
    assert union["joints"] == ["Tail_Tip", "b_tail-tip"] and index["b"].tolist() == [0, 1]
    assert [r.kind for r in rows] == ["unknown", "clash"]
    assert rows[1].note.startswith("'tail-tip' and 'Tail_Tip' of b both resolve to 'Tail_Tip';")


def test_template_values_reach_new_joints_by_name():
    template = dict(json.loads(Path(load_joint_set("ap10k").path).read_text()), name="tpl",
                    joints=list(load_joint_set("ap10k").joints[:16]) + ["center"])
    template["sigmas"] = template["sigmas"][:16] + [0.5]
    template["loss_weights"] = template["loss_weights"][:16] + [2.0]
    template.pop("sigmas_freenet")
    union, _, _ = build_union([("atrw", ["nose", "center", "left_ear"])], like=parse_joint_set(template), name="u")
    assert union["sigmas"] == [.026, 0.5, .035] and union["loss_weights"] == [1.0, 2.0, 1.0]
    assert union["lower_body"] == [1]                    # 'center' is joint 16 of the template: lower body


# ----------------------------------------------------------------------------------------------
# Real sample files: ATRW, Horse-10, AP-10K (and Animal Kingdom)
# ----------------------------------------------------------------------------------------------

def sample_union(names=("ap10k", "atrw", "horse10")):
    needs_samples()
    sources = [(n, source_joint_names(SAMPLE_FILES[n])) for n in names]
    return build_union(sources, name="samples", skeletons={n: source_skeleton(SAMPLE_FILES[n]) for n in names})


def test_real_sample_joints_map_by_name():
    union, index, rows = sample_union()
    names = union["joints"]

    def lands(src, joint):
        return names[index[src][source_joint_names(SAMPLE_FILES[src]).index(joint)]]

    assert index["ap10k"].tolist() == list(range(17))                 # AP-10K by identity
    assert names[:17] == UNION24_JOINTS[:17]
    assert lands("atrw", "left_shoulder") == "L_F_hip" and lands("atrw", "right_hip") == "R_B_hip"
    assert lands("atrw", "left_ear") == "L_ear" and lands("atrw", "tail") == "tail"
    assert lands("horse10", "Nearfrontfoot") == "L_F_paw" and lands("horse10", "Offhindfoot") == "R_B_paw"
    assert lands("horse10", "Wither") == "wither" and lands("horse10", "Nose") == "nose"
    center = names.index("center")
    assert [r.created for r in rows if r.name == "center"] == [True]
    assert union["sigmas"][center] == 0.072 and union["loss_weights"][center] == 1.0
    assert center in union["part_groups"][-1]["joints"] and union["part_groups"][-1]["name"] == "exclusive"
    for joint in ("Eye", "Nearknee", "Shoulder", "Girth", "Ischium"):
        assert lands("horse10", joint) == joint                      # new joints keep the source's name
    flips = {tuple(names[i] for i in p) for p in union["flip_pairs"]}
    assert {("Nearknee", "Offknee"), ("Nearhindhock", "Offhindhock"), ("Nearfrontfetlock", "Offfrontfetlock"),
            ("L_ear", "R_ear")} <= flips
    flip_index = parse_joint_set(union).flip_index
    assert flip_index[names.index("Eye")] == names.index("Eye")      # side-less: its own mirror
    edges = {tuple(sorted(names[i] for i in e)) for e in union["skeleton"]}
    assert {("center", "nose"), ("center", "tail"), ("L_F_hip", "center")} <= edges  # ATRW's own edges


def test_animal_kingdom_maps_only_the_same_points():
    union, index, _ = sample_union(("ap10k", "ak"))
    ak = source_joint_names(SAMPLE_FILES["ak"])
    assert ak[18] == "Ankle_Left "
    landed = dict(zip(ak, (union["joints"][u] for u in index["ak"])))
    assert {k: v for k, v in landed.items() if v in UNION24_JOINTS} == {
        "Eye_Left": "L_eye", "Eye_Right": "R_eye", "Tail_Top_Back": "tail"}
    assert landed["Ankle_Left "] == "Ankle_Left"
    names = union["joints"]
    assert [names.index("Ankle_Left"), names.index("Ankle_Right")] in union["flip_pairs"]


def test_categories_that_disagree_are_an_error(tmp_path):
    data = {"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "dog", "keypoints": ["nose", "tail"]},
        {"id": 7, "name": "cat", "keypoints": ["tail", "nose"]}]}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"mixed.json: category 7 \('cat'\) lists other joints than category 1"):
        source_joint_names(path)


def test_converted_files_load_and_keep_the_source_values(tmp_path):
    union, _, _ = sample_union(("ap10k", "atrw", "horse10", "ak"))
    out = tmp_path / "u"
    stats = convert_annotations([(n, SAMPLE_FILES[n], None) for n in ("ap10k", "atrw", "horse10", "ak")], union,
                                out / "annotations" / "train.json", out)
    js = parse_joint_set(union)
    records = load_coco_records(out / "annotations" / "train.json", out, js, check_images=True)
    assert [r.source for r in records] == ["ap10k"] * 2 + ["atrw"] * 2 + ["horse10"] * 3 + ["ak"] * 2
    # one image folder (``out``) resolves every source's images, wherever they are
    assert all(Path(r.image_path).resolve().parent in (SAMPLE_FILES[r.source].parent.resolve(),
                                                       SAMPLE_FILES[r.source].parent.resolve() / "AAOYRUDX")
               for r in records)
    offsets = {st.source: st.annotation_id_offset for st in stats}
    by_ann = {(r.source, r.ann_id - offsets[r.source]): r for r in records}
    names = list(js.joints)
    horse = by_ann["horse10", 100]
    assert horse.keypoints[names.index("L_F_paw")].tolist() == pytest.approx([98.7, 117.3])  # Nearfrontfoot
    assert horse.keypoints[names.index("Ischium")].tolist() == pytest.approx([23.1, 63.6])
    tiger = by_ann["atrw", 3464]
    assert tiger.keypoints[names.index("center")].tolist() == [592, 277]
    assert tiger.keypoints[names.index("L_F_hip")].tolist() == [536, 401]   # left_shoulder
    assert tiger.visibility[names.index("L_eye")] == 0 and tiger.keypoints[names.index("L_eye")].tolist() == [0, 0]
    elephant = by_ann["ak", 1]
    assert elephant.keypoints[names.index("L_eye")].tolist() == pytest.approx([238.4957, 151.0030], abs=1e-3)
    assert elephant.keypoints[names.index("Mouth_Front_Top")].tolist() == [0, 0]  # AK's -1 placeholder -> 0
    data = load_coco_json(out / "annotations" / "train.json")
    anns = {(a["from"], a["id"] - offsets[a["from"]]): a for a in data["annotations"]}
    assert anns["horse10", 500]["num_keypoints"] == 19 and anns["ak", 1]["num_keypoints"] == 6
    assert len({a["id"] for a in data["annotations"]}) == 9 and len({i["id"] for i in data["images"]}) == 9
    assert all(c["keypoints"] == names for c in data["categories"])
    # the tiger of ATRW and AP-10K's tiger are one category; AK's unlisted id 4 gets its own
    cats = {c["name"]: c["id"] for c in data["categories"]}
    assert anns["atrw", 61]["category_id"] == cats["tiger"] == 32 and anns["ak", 1]["category_id"] == cats["ak_4"]
    assert [st.unlisted_categories for st in stats][-1] == [4]


def test_a_file_with_other_joints_than_the_union_was_built_from_is_refused(tmp_path):
    union, _, _ = sample_union(("ap10k", "atrw"))
    with pytest.raises(DataError, match="test_horse10.json: joint names .* differ from those the union"):
        convert_annotations([("atrw", SAMPLE_FILES["horse10"], None)], union, tmp_path / "x.json", tmp_path)


# ----------------------------------------------------------------------------------------------
# The tool: joint set + annotations + config, and the config in the training data path
# ----------------------------------------------------------------------------------------------

def run_tool(argv):
    spec = importlib.util.spec_from_file_location("build_union_tool", REPO / "tools" / "build_union.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_tool_writes_joint_set_annotations_and_a_loadable_config(tmp_path, capsys):
    needs_samples()
    out = tmp_path / "union"
    argv = ["--out", str(out), "--name", "tiger_horse", "--sample-ratio", "0.5"]
    argv += [f"--source={n}={SAMPLE_FILES[n]}" for n in ("ap10k", "atrw", "horse10")]
    argv += [f"--val=horse10={SAMPLE_FILES['horse10']}"]
    assert run_tool(argv) == 0
    printed = capsys.readouterr().out
    assert "left_shoulder    ->   5 L_F_hip" in printed and "center           ->  19 center" in printed
    # what to run next: the base network first, then FreeNet with it as the teacher
    assert printed.splitlines()[-2:] == [
        f"train the base network: python train_supervised.py --cfg {out / 'config.yaml'} "
        "--save-as pretrained_weights/tiger_horse_sl.pth",
        f"then FreeNet: python train_ap10k_animalpose_tigdog.py --cfg {out / 'config.yaml'} "
        "--pretrained-weights-name tiger_horse_sl.pth"]
    for path in (out / "tiger_horse.json", out / "annotations/train.json", out / "annotations/val.json",
                 out / "config.yaml"):
        assert path.is_file(), path
    cfg = load_config(str(out / "config.yaml"))
    js = configured_joint_set(cfg)
    assert js.num_joints == cfg.MODEL.NUM_JOINTS == 37 and js.joints[19] == "center"
    assert Path(cfg.DATASET.TRAIN_FILE) == out / "annotations/train.json" and Path(cfg.DATASET.TRAIN_IMAGE_DIR) == out
    assert Path(cfg.DATASET.VAL_ANN_FILE) == out / "annotations/val.json"
    assert (cfg.DATASET.LABELED, cfg.DATASET.SAMPLE_RATIO) == ("ratio", 0.5)

    sets = build_training_sets(cfg.DATASET, js, cfg.SEED)
    assert sets.notes[0] == "train records per source: ap10k 2, atrw 2, horse10 3"
    assert len(sets.labeled) == 3 and len(sets.labeled) + len(sets.unlabeled) == 7

    # Scoring the val file's own keypoints as predictions gives a perfect OKS: the converted file is
    # a consistent COCO ground truth (areas, categories, num_keypoints) for the union's sigmas.
    gt = load_coco_json(cfg.DATASET.VAL_ANN_FILE)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"],
                "score": 1.0} for a in gt["annotations"]]
    metrics = coco_keypoint_metrics(coco_ground_truth(gt), results, js.sigmas)
    assert metrics["AP"] == pytest.approx(1.0)


def test_tool_reports_a_val_source_without_train_file(tmp_path, capsys):
    needs_samples()
    argv = ["--out", str(tmp_path), "--name", "u", f"--source=atrw={SAMPLE_FILES['atrw']}",
            f"--val=horse10={SAMPLE_FILES['horse10']}"]
    assert run_tool(argv) == 2
    assert "--val sources ['horse10'] have no --source" in capsys.readouterr().err


def test_union_of_the_synthetic_sources_trains_on_the_same_records_as_the_spec_union(synthetic_root, tmp_path):
    """AP-10K + AnimalPose + TigDog files through the tool give union-24 and, through DATASET.TRAIN_FILE,
    the very labeled/unlabeled records the built-in 24-joint setting draws (SPEC §3.5)."""
    root = synthetic_root
    train = [SourceFile("ap10k", root / "ap_10k/annotations/ap10k-train-split1.json", root / "ap_10k/data"),
             SourceFile("animalpose", root / "animal_pose/annotations/animal_pose_train.json",
                        root / "animal_pose/data"),
             SourceFile("tigdog", root / "tigdog/annotations/tigdog_train.json", root / "tigdog/data")]
    built = make_union_folder(tmp_path / "u", "u24", train, like=load_joint_set("union24"), sample_ratio=0.3)
    assert built.union["joints"] == UNION24_JOINTS and built.union["loss_weights"] == UNION24_WEIGHTS

    ours = load_config(str(built.config_file))
    spec = load_config("experiments/ap10k_animalpose_tigdog/freenet_ratio.yaml",
                       ["DATASET.ROOT", str(root), "DATASET.SAMPLE_RATIO", "0.3"])
    a = build_training_sets(ours.DATASET, configured_joint_set(ours), 2)
    b = build_training_sets(spec.DATASET, configured_joint_set(spec), 2)
    assert a.notes[0] == b.notes[0] == "train records per source: ap10k 17, animalpose 17, tigdog 17"
    for mine, theirs in ((a.labeled, b.labeled), (a.unlabeled, b.unlabeled)):
        assert len(mine) == len(theirs) > 0
        for r, s in zip(mine, theirs):
            assert r.source == s.source and os.path.samefile(r.image_path, s.image_path)
            np.testing.assert_array_equal(r.keypoints, s.keypoints)
            np.testing.assert_array_equal(r.visibility, s.visibility)
            np.testing.assert_array_equal(r.box, s.box)


# ----------------------------------------------------------------------------------------------
# Training and evaluating on a custom union (slow)
# ----------------------------------------------------------------------------------------------

def run_script(script, args):
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_freenet_supervised_and_evaluation_on_a_union_of_the_samples(tmp_path):
    needs_samples()
    union_dir = tmp_path / "union"
    argv = ["--out", str(union_dir), "--name", "samples5", "--sample-ratio", "0.5"]
    argv += [f"--source={n}={SAMPLE_FILES[n]}" for n in ("ap10k", "atrw", "horse10", "ak", "animalpose")]
    assert run_tool(argv) == 0
    cfg = str(union_dir / "config.yaml")
    num_joints = load_joint_set(union_dir / "samples5.json").num_joints
    assert num_joints == 58

    out = tmp_path / "freenet"
    proc = run_script("train_ap10k_animalpose_tigdog.py", [
        "--cfg", cfg, "--pretrained-weights-name", "", "--pretrained-model-path", str(tmp_path / "none"),
        "--output-dir", str(out), "--total-steps", "4", "--eval-step", "2", "--workers", "0", "--batch-size", "2",
        "--mu", "2", "--warmup-steps", "1", "--feedback-steps-start", "2", "--feedback-steps-complete", "4",
        "--sample-ratio", "0.5", *TINY_MODEL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train records per source: ap10k 2, atrw 2, horse10 3, ak 2, animalpose 2" in proc.stderr
    run = next(out.glob("ours_*"))
    ckpt = torch.load(run / "checkpoint.pth", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["joint_set"] == "samples5" and ckpt["num_joints"] == num_joints
    assert ckpt["student_model"]["final_layer.weight"].shape[0] == num_joints

    sup = tmp_path / "supervised"
    proc = run_script("train_supervised.py", ["--cfg", cfg, "--output-dir", str(sup), "--epochs", "1",
                                              "--batch-size", "2", "--workers", "0", *TINY_MODEL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 labeled training records" in proc.stderr           # int(11 * 0.5) of the pooled samples
    best = torch.load(next(sup.glob("ours_*")) / "best.pth", weights_only=True)
    assert best["final_layer.weight"].shape[0] == num_joints

    proc = run_script("eval_ap10k.py", ["--cfg", cfg, "OUTPUT_DIR", str(tmp_path / "eval"), "TEST.MODEL_FILE",
                                        str(run / "checkpoint.pth"), *TINY_MODEL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "Ankle_Left" in proc.stdout and len(metrics["PCK_joints"]) == num_joints
    evaluated = json.loads((union_dir / "annotations" / "train.json").read_text())["annotations"]  # no --val files
    assert metrics["num_instances"] == sum(any(v > 0 for v in a["keypoints"][2::3]) for a in evaluated) == 11
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(results) == 11 and all(len(r["keypoints"]) == 3 * num_joints for r in results)


def test_bad_source_annotations_name_the_file_and_id(tmp_path):
    union, _, _ = build_union([("a", ["nose", "tail"])], name="u")
    good = {"images": [{"id": 1, "file_name": "x.jpg"}], "categories": [{"id": 1, "name": "dog",
                                                                          "keypoints": ["nose", "tail"]}]}
    cases = [([{"id": 5, "image_id": 1, "keypoints": [1, 2, 2]}], r"\(id 5\): 'keypoints' has 3 values, expected 3\*2"),
             ([{"id": 5, "image_id": 9, "keypoints": []}], r"\(id 5\): annotation points at unknown image id 9"),
             ([{"id": 5, "image_id": 1}, {"id": 5, "image_id": 1}], r"\(id 5\): duplicate annotation id 5")]
    for anns, message in cases:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(dict(good, annotations=anns)))
        with pytest.raises(DataError, match="bad.json " + message):
            convert_annotations([("a", path, None)], union, tmp_path / "out.json", tmp_path, check_images=False)
    assert not (tmp_path / "out.json").exists()                # nothing half-written


def test_train_file_without_from_is_one_pool_named_after_the_file(synthetic_root):
    cfg = load_config(None, ["DATASET.JOINTS", "ap10k", "DATASET.LABELED", "all", "DATASET.TRAIN_FILE",
                             str(synthetic_root / "ap_10k/annotations/ap10k-train-split1.json"),
                             "DATASET.TRAIN_IMAGE_DIR", str(synthetic_root / "ap_10k/data")])
    sets = build_training_sets(cfg.DATASET, load_joint_set("ap10k"), 2)
    assert sets.notes[0] == "train records per source: ap10k-train-split1 17"
    assert sets.labeled == sets.unlabeled and len(sets.labeled) == 17


def test_a_setting_without_labeled_records_says_how_the_lists_came_about(synthetic_root):
    from freenet.config import ConfigError

    cfg = load_config(None, ["DATASET.JOINTS", "ap10k", "DATASET.LABELED", "ratio", "DATASET.SAMPLE_RATIO", "0.01",
                             "DATASET.TRAIN_FILE", str(synthetic_root / "ap_10k/annotations/ap10k-train-split1.json"),
                             "DATASET.TRAIN_IMAGE_DIR", str(synthetic_root / "ap_10k/data")])
    # 1 % of 17 records rounds to none
    with pytest.raises(ConfigError, match=r"no labeled training records \(DATASET.LABELED ratio\): train records "
                                          r"per source: ap10k-train-split1 17; random 0.01 of the pool labeled"):
        build_training_sets(cfg.DATASET, load_joint_set("ap10k"), 2)


def test_a_source_is_read_in_the_configured_joint_set(synthetic_root):
    """The AnimalPose files read as ``animalpose_mmpose`` come out in that set's order, matched by
    joint name (SPEC §2.2), and a union file of the layout can be its own union's source (§3.1)."""
    def labeled(joints, sources, num_joints):
        cfg = load_config(None, ["DATASET.ROOT", str(synthetic_root), "DATASET.JOINTS", joints, "DATASET.SOURCES",
                                 str(sources), "DATASET.LABELED", "all", "MODEL.NUM_JOINTS", str(num_joints)])
        return build_training_sets(cfg.DATASET, configured_joint_set(cfg), 2).labeled

    freenet_order, mmpose_order = labeled("animalpose", ["animalpose"], 20), labeled("animalpose_mmpose",
                                                                                      ["animalpose"], 20)
    # MMPose slot -> FreeNet slot: L_Eye, R_Eye, L_EarBase, R_EarBase, Nose, Throat, TailBase, Withers, ...
    slots = [0, 1, 3, 4, 2, 17, 19, 18, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert len(mmpose_order) == len(freenet_order) == 17
    for mm, fn in zip(mmpose_order, freenet_order):
        np.testing.assert_array_equal(mm.keypoints, fn.keypoints[slots])
        np.testing.assert_array_equal(mm.visibility, fn.visibility[slots])

    union_file = labeled("union21", ["ap10k_animalpose"], 21)
    mapped = labeled("union21", ["ap10k", "animalpose"], 21)
    assert len(union_file) == len(mapped) > 0
    with pytest.raises(DataError, match=r"tigdog_train.json: has 19 joints \('tigdog'\) but the joint set 'union21' "
                                        r"has 21 and no map from 'tigdog'"):
        labeled("union21", ["tigdog"], 21)
