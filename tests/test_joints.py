import json
from pathlib import Path

import numpy as np
import pytest

from freenet.joints import (JointSetError, available_joint_sets, load_alias_table, load_joint_set, map_by_name,
                            normalize_name, parse_joint_set, remap_keypoints)

# SPEC §2.4 source -> union maps, [source index, union index]
ANIMALPOSE_MAP = [[0, 0], [1, 1], [2, 2], [3, 17], [4, 18], [5, 5], [6, 8], [7, 11], [8, 14], [9, 6], [10, 9],
                  [11, 12], [12, 15], [13, 7], [14, 10], [15, 13], [16, 16], [17, 19], [18, 20], [19, 4]]
TIGDOG_MAP = [[0, 0], [1, 1], [2, 21], [3, 7], [4, 10], [5, 13], [6, 16], [7, 4], [8, 6], [9, 9], [10, 12],
              [11, 15], [12, 22], [13, 23], [14, 5], [15, 8], [16, 11], [17, 14], [18, 3]]


def as_index(pairs, n):
    idx = np.full(n, -1)
    for s, u in pairs:
        idx[s] = u
    return idx


def test_bundled_sets_load():
    assert set(available_joint_sets()) >= {"ap10k", "animalpose", "animalpose_mmpose", "tigdog", "union21", "union24"}
    sizes = {name: load_joint_set(name).num_joints for name in available_joint_sets()}
    assert sizes["ap10k"] == 17 and sizes["animalpose"] == 20 and sizes["animalpose_mmpose"] == 20
    assert sizes["tigdog"] == 19 and sizes["union21"] == 21 and sizes["union24"] == 24


def test_spec_values_ap10k_and_unions():
    ap, u21, u24 = load_joint_set("ap10k"), load_joint_set("union21"), load_joint_set("union24")
    assert ap.sigmas_for("standard").tolist() == [.025, .025, .026, .035, .035, .079, .072, .062, .079, .072,
                                                  .062, .107, .087, .089, .107, .087, .089]
    assert ap.sigmas_for("freenet").tolist()[5:9] == [.079, .079, .072, .072]
    assert ap.lower_body == (4, 11, 12, 13, 14, 15, 16)
    assert u21.lower_body == (4, 11, 12, 13, 14, 15, 16, 19, 20)
    assert u24.upper_body == (0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 17, 18, 21, 22, 23)
    assert u21.sigmas[17:] == (.035, .035, .10, .10) and u24.sigmas[21:] == (.026, .035, .035)
    assert u24.loss_weights[:8] == (1, 1, 1, 1, 1, 1, 1.2, 1.5) and u21.loss_weights[4] == 1.2
    assert (22, 23) in u24.flip_pairs and (17, 18) in u21.flip_pairs
    assert [(g.name, g.min_ratio) for g in u24.part_groups] == [("face", .5), ("front", .6), ("back", .65),
                                                                  ("exclusive", .65)]
    assert u24.part_groups[3].joints == (3, 19, 20, 21, 22, 23)
    assert u21.logging_groups["head"] == (0, 1, 2, 3, 17, 18, 19)
    assert u24.logging_groups["front"] == (5, 6, 7, 8, 9, 10, 20, 22, 23)
    with pytest.raises(JointSetError, match="sigmas_freenet"):
        u21.sigmas_for("freenet")


def test_animalpose_sigmas_are_the_spec_list():
    assert list(load_joint_set("animalpose").sigmas) == [.025, .025, .026, .035, .035, .079, .079, .107, .107,
                                                         .072, .072, .087, .087, .062, .062, .089, .089, .10, .10,
                                                         .035]


def test_file_maps_are_the_spec_maps():
    u24 = load_joint_set("union24")
    assert u24.source_index("animalpose").tolist() == as_index(ANIMALPOSE_MAP, 20).tolist()
    assert u24.source_index("tigdog").tolist() == as_index(TIGDOG_MAP, 19).tolist()
    assert u24.source_index("ap10k").tolist() == list(range(17))
    assert load_joint_set("union21").source_index("animalpose").tolist() == as_index(ANIMALPOSE_MAP, 20).tolist()


@pytest.mark.parametrize("union", ["union21", "union24"])
def test_maps_rebuilt_from_names_reproduce_spec(union):
    target = load_joint_set(union).joints
    assert map_by_name(load_joint_set("ap10k").joints, target).tolist() == list(range(17))
    assert map_by_name(load_joint_set("animalpose").joints, target).tolist() == as_index(ANIMALPOSE_MAP, 20).tolist()
    if union == "union24":
        assert map_by_name(load_joint_set("tigdog").joints, target).tolist() == as_index(TIGDOG_MAP, 19).tolist()


def test_maps_from_the_official_names_in_real_files(shared_data):
    """The category keypoint names inside the datasets' own files map onto the SPEC §2.4 maps."""
    u21 = load_joint_set("union21").joints
    def keypoint_names(relative):
        return json.loads((shared_data / relative).read_text())["categories"][0]["keypoints"]

    ap10k_names = keypoint_names("mmpose_samples/ap10k/test_ap10k.json")
    assert ap10k_names[4] == "root_of_tail" and ap10k_names[5] == "left_shoulder"
    assert map_by_name(ap10k_names, u21).tolist() == list(range(17))
    apose_names = keypoint_names("freenet/annotation_files/animal_pose_val.json")
    assert apose_names[5] == "left_front_elbow" and apose_names[19] == "tailbase"
    assert map_by_name(apose_names, u21).tolist() == as_index(ANIMALPOSE_MAP, 20).tolist()
    mm_names = keypoint_names("mmpose_samples/animalpose/test_animalpose.json")
    mm = map_by_name(mm_names, u21)
    assert mm[mm_names.index("L_F_Elbow")] == 5 and mm[mm_names.index("L_F_Knee")] == 6
    assert mm[mm_names.index("Withers")] == 20 and mm[mm_names.index("TailBase")] == 4
    assert mm[mm_names.index("L_EarBase")] == 17 and (mm >= 0).all()


@pytest.mark.parametrize("union", ["union21", "union24"])
def test_every_source_flips_the_joints_its_union_flips(union):
    """A source's flip pairs (its own flip augmentation and flip test) are exactly the union's flip
    pairs read through its map (SPEC §2.3, §2.4): TigDog's shoulders, for one, are union24's 22/23."""
    u = load_joint_set(union)
    union_pairs = {frozenset(p) for p in u.flip_pairs}
    for name, smap in u.sources.items():
        source = load_joint_set(smap.joint_set)
        to_union = dict(smap.pairs)
        mapped = {frozenset((to_union[a], to_union[b])) for a, b in source.flip_pairs}
        covered = {p for p in union_pairs if p <= set(to_union.values())}   # both sides annotated by the source
        assert mapped == covered, name


def test_mmpose_animalpose_set_is_a_permutation_of_the_freenet_order():
    fn, mm = load_joint_set("animalpose"), load_joint_set("animalpose_mmpose")
    perm = map_by_name(mm.joints, fn.joints)
    assert sorted(perm.tolist()) == list(range(20))
    assert [fn.sigmas[p] for p in perm] == list(mm.sigmas)
    # flip pairs describe the same left/right joints in both orders
    fn_pairs = {frozenset((fn.joints[a], fn.joints[b])) for a, b in fn.flip_pairs}
    assert {frozenset((mm.joints[a], mm.joints[b])) for a, b in mm.flip_pairs} == fn_pairs


def test_unknown_names_stay_unmapped_and_normalisation():
    assert normalize_name(" L-F.Knee ") == "l_f_knee"
    assert map_by_name(["left_eye", "tail_tip", "Nose"], ["nose", "L_eye"]).tolist() == [1, -1, 0]


def test_remap_keypoints_hand_values():
    kps = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    vis = np.array([[2.0, 0.0, 1.0]])
    out_k, out_v = remap_keypoints(kps, vis, np.array([2, -1, 0]), 4)
    assert out_k[0].tolist() == [[5.0, 6.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]
    assert out_v[0].tolist() == [1.0, 0.0, 2.0, 0.0]


def test_flip_index_swaps_pairs():
    u24 = load_joint_set("union24")
    idx = u24.flip_index
    assert idx[0] == 1 and idx[1] == 0 and idx[22] == 23 and idx[3] == 3
    assert (idx[idx] == np.arange(24)).all()


def test_bad_joint_set_files_name_the_field(tmp_path):
    good = json.loads(Path(load_joint_set("ap10k").path).read_text())
    for field, value, expect in [("sigmas", [0.1] * 3, "sigmas"), ("flip_pairs", [[0, 99]], "flip_pairs"),
                                 ("lower_body", [0], "lower_body")]:
        bad = dict(good, **{field: value})
        with pytest.raises(JointSetError, match=f"bad.json: field '{expect}'"):
            parse_joint_set(bad, "bad.json")
    overlap = [dict(g) for g in good["part_groups"]]
    overlap[1]["joints"] = [*overlap[1]["joints"], 0]                 # joint 0 is the face's
    for field, value, expect in [
        ("flip_pairs", [[0, 1], [1, 2]], r"'flip_pairs': joint 1 is in \[0, 1\] and in \[1, 2\]"),  # no permutation
        ("flip_pairs", [[3, 3]], r"'flip_pairs': \[3, 3\] pairs a joint with itself"),
        ("sigmas", [0.0] + good["sigmas"][1:], "'sigmas': expected numbers > 0, got 0.0"),   # OKS divides by it
        ("sigmas", [float("nan")] + good["sigmas"][1:], "'sigmas': expected 17 numbers"),
        ("loss_weights", [-1.0] + good["loss_weights"][1:], "'loss_weights': expected numbers >= 0, got -1.0"),
        ("part_groups", [dict(good["part_groups"][0], min_ratio="x")],
         r"'part_groups.face.min_ratio': expected a ratio in \[0, 1\], got 'x'"),
        ("part_groups", [dict(g, min_ratio=7) for g in good["part_groups"]], "'part_groups.face.min_ratio'"),
        ("part_groups", overlap, "'part_groups.front.joints': joint 0 is also in group 'face'")]:
        with pytest.raises(JointSetError, match=f"bad.json: field {expect}"):
            parse_joint_set(dict(good, **{field: value}), "bad.json")
    misspelt = dict(good, logging_group={"head": [0]})
    with pytest.raises(JointSetError, match="bad.json: field 'logging_group': unknown field"):
        parse_joint_set(misspelt, "bad.json")
    union = json.loads(Path(load_joint_set("union21").path).read_text())
    union["sources"]["ap10k"]["weights"] = [1.0] * 17
    with pytest.raises(JointSetError, match=r"u.json: field 'sources.ap10k.weights': unknown field"):
        parse_joint_set(union, "u.json")
    extra = dict(good, part_groups=[dict(good["part_groups"][0], min_conf=0.3)])
    with pytest.raises(JointSetError, match=r"field 'part_groups\.face\.min_conf': unknown field"):
        parse_joint_set(extra, "bad.json")
    missing = {k: v for k, v in good.items() if k != "part_groups"}
    with pytest.raises(JointSetError, match="part_groups"):
        parse_joint_set(missing, "bad.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(JointSetError, match="broken.json: malformed JSON"):
        load_joint_set(broken)
    with pytest.raises(JointSetError, match="broken.json: malformed JSON"):
        load_alias_table(broken)                                      # the joint dictionary, likewise
    with pytest.raises(FileNotFoundError, match="no joint set 'nope'"):
        load_joint_set("nope")
    with pytest.raises(FileNotFoundError, match=r"^\S*gone\.json: joint-set file not found \(or give a bundled "
                                                r"name: animalpose, .*union24\)$"):
        load_joint_set(tmp_path / "gone.json")
    authors = tmp_path / "ap_10k_keypoints_format.json"      # the layout of the authors' info/ files
    authors.write_text(json.dumps({"keypoints": good["joints"], "flip_pairs": good["flip_pairs"],
                                   "kps_weights": [1.0] * 17}))
    with pytest.raises(JointSetError, match="ap_10k_keypoints_format.json: an original FreeNet keypoints-format "
                                            "file .* name a bundled set .*ap10k"):
        load_joint_set(authors)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(JointSetError, match="list.json: expected a JSON object"):
        load_joint_set(listed)


def test_ap10k_joint_set_is_exactly_spec_2_1_and_2_5():
    """Every AP-10K value the SPEC fixes, written out from §2.1 (names, flip pairs, upper/lower body,
    loss weights, both OKS sigma lists of §11.6, skeleton) and §2.5 (part groups and keep ratios)."""
    js = load_joint_set("ap10k")
    # §2.1 joint names in model order
    assert list(js.joints) == ["L_eye", "R_eye", "nose", "neck", "tail", "L_F_hip", "L_F_knee", "L_F_paw",
                               "R_F_hip", "R_F_knee", "R_F_paw", "L_B_hip", "L_B_knee", "L_B_paw", "R_B_hip",
                               "R_B_knee", "R_B_paw"]
    assert js.num_joints == 17
    # §2.1 flip pairs, and the permutation they make (§4 flip)
    assert [list(p) for p in js.flip_pairs] == [[0, 1], [5, 8], [6, 9], [7, 10], [11, 14], [12, 15], [13, 16]]
    assert js.flip_index.tolist() == [1, 0, 2, 3, 4, 8, 9, 10, 5, 6, 7, 14, 15, 16, 11, 12, 13]
    # §2.1 upper / lower body (the half-body rule of §4)
    assert list(js.upper_body) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert list(js.lower_body) == [4, 11, 12, 13, 14, 15, 16]
    # §2.1 per-joint loss weights (§5.4)
    assert list(js.loss_weights) == [1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 1.5, 1.2, 1.2, 1.5, 1.5, 1.2, 1.5, 1.5,
                                     1.2, 1.5]
    # §2.1 / §11.6 OKS sigmas: standard (aligned) and the FreeNet paper's list (pairwise order)
    assert js.sigmas_for("standard").tolist() == [.025, .025, .026, .035, .035, .079, .072, .062, .079, .072,
                                                  .062, .107, .087, .089, .107, .087, .089]
    assert list(js.sigmas) == js.sigmas_for("standard").tolist()
    assert js.sigmas_for("freenet").tolist() == [.025, .025, .026, .035, .035, .079, .079, .072, .072, .062,
                                                 .062, .107, .107, .087, .087, .089, .089]
    # §2.1 drawing skeleton (the official AP-10K one, 0-based)
    assert [list(p) for p in js.skeleton] == [[0, 1], [0, 2], [1, 2], [2, 3], [3, 4], [3, 5], [5, 6], [6, 7],
                                              [3, 8], [8, 9], [9, 10], [4, 11], [11, 12], [12, 13], [4, 14],
                                              [14, 15], [15, 16]]
    # §2.5 part groups for 17 joints: order face, front, back, exclusive; ratios [0.5, 0.6, 0.65, 0.65]
    assert [(g.name, list(g.joints), g.min_ratio) for g in js.part_groups] == [
        ("face", [0, 1, 2], 0.5),
        ("front", [5, 6, 7, 8, 9, 10], 0.6),
        ("back", [4, 11, 12, 13, 14, 15, 16], 0.65),
        ("exclusive", [3], 0.65),
    ]
