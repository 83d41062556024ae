"""Synthetic quadrupeds and the synthetic data root (freenet.data.synthetic; SPEC §2, §3)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import tool_error
from freenet.data import synthetic as syn
from freenet.data.coco import DATASETS, DataLayout, load_coco_records, to_union
from freenet.data.dataset import read_image
from freenet.data.splits import SPLIT_PRESETS, apply_split, filter_by_image_ids, load_id_list, load_split_file
from freenet.joints import load_joint_set, map_by_name

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
UNION = load_joint_set("union24")
J = {name: i for i, name in enumerate(UNION.joints)}
SEED = 0

JOINT_COUNTS = {"ap10k": 17, "animalpose": 20, "tigdog": 19, "ap10k_animalpose": 21, "ap10k_animalpose_tigdog": 24}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    syn.generate(out, seed=SEED, sizes="tiny", image_size=96)
    return out


def _annotation_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.json"))}


# ----------------------------------------------------------------------------------------------
# Determinism and the written files
# ----------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files_and_another_seed_different_ones(root, tmp_path):
    syn.generate(tmp_path / "again", seed=SEED, sizes="tiny", image_size=96)
    syn.generate(tmp_path / "other", seed=SEED + 1, sizes="tiny", image_size=96)
    first, again, other = _annotation_files(root), _annotation_files(tmp_path / "again"), \
        _annotation_files(tmp_path / "other")
    assert len(first) == 17 and first == again
    assert set(other) == set(first)
    assert all(other[k] != first[k] for k in first if "annotations" in k)
    digest = lambda d: sorted(hashlib.md5(p.read_bytes()).hexdigest() for p in d.rglob("*.jpg"))  # noqa: E731
    assert digest(root) == digest(tmp_path / "again") != digest(tmp_path / "other")

    a = syn.draw_animal(np.random.default_rng(7), 64, "horse")
    b = syn.draw_animal(np.random.default_rng(7), 64, "horse")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dataset,split", [(d, s) for d, spec in DATASETS.items() for s in spec.splits])
def test_every_file_loads_through_the_layout_with_its_joint_count(root, dataset, split):
    layout = DataLayout(root)
    records = layout.load(dataset, split, check_images=True)
    raw = json.loads(layout.annotation_file(dataset, split).read_text())
    sizes = syn.SIZE_PRESETS["tiny"]
    expected_images = {"ap10k_animalpose": ["ap10k", "animalpose"], "ap10k_animalpose_tigdog": (
        ["ap10k", "animalpose", "tigdog"] if split == "train" else ["union24"])}.get(dataset, [dataset])
    assert len(raw["images"]) == sum(sizes[f"{d}_{split}"] for d in expected_images)
    assert len(records) == len(raw["annotations"]) >= len(raw["images"])
    assert {r.num_joints for r in records} == {JOINT_COUNTS[dataset]}
    assert len({r.ann_id for r in records}) == len(records)
    # Union files without their own images find them in the source folders; the union-24 val
    # set has its own images.
    folders = {Path(r.image_path).relative_to(root).parts[0] for r in records}
    if dataset == "ap10k_animalpose_tigdog" and split == "val":
        assert folders == {"ap10k_animalpose_tigdog"}
    else:
        assert folders == {DATASETS[s].folder for s in (DATASETS[dataset].sources or (dataset,))}
    for path in sorted({r.image_path for r in records})[:4]:
        assert read_image(path).shape == (96, 96, 3)
    if dataset == "tigdog":
        assert {Path(r.image_path).parent.name for r in records} == {"horse", "tiger"}
        assert {c["name"] for c in raw["categories"]} == {"horse", "tiger"}


def test_file_contents_are_the_drawn_scenes(root):
    """Each written annotation is the drawn animal's union-24 joints in the file's order, and the
    union-24 val set annotates every joint that is in the image and not occluded."""
    layout = DataLayout(root)
    for dataset, split, key, code in (("ap10k", "train", "ap10k_train", 2), ("tigdog", "val", "tigdog_val", 1),
                                      ("ap10k_animalpose_tigdog", "val", "union24_val", 2)):
        raw = json.loads(layout.annotation_file(dataset, split).read_text())
        index = syn.source_to_union_index(DATASETS[dataset].joint_set)
        anns = iter(raw["annotations"])
        for i, img in enumerate(raw["images"]):
            image, instances = syn.dataset_scene(SEED, key, i, 96)
            decoded = read_image(str(layout.image_dir(dataset) / img["file_name"])).astype(np.float32)
            assert np.abs(decoded - image).mean() < 10.0  # the JPEG of this very scene (another: > 50)
            for inst in instances:
                ann = next(anns)
                assert ann["category_id"] == inst.species.id
                values = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
                annotated = inst.visibility[index] > 0
                np.testing.assert_array_equal(values[:, 2], np.where(annotated, code, 0))
                np.testing.assert_allclose(values[annotated, :2], inst.keypoints[index][annotated], atol=0.006)
                assert not values[~annotated].any()
        assert next(anns, None) is None

    # Annotated exactly where the joint is inside the image and not covered (union-24 val).
    raw = json.loads(layout.annotation_file("ap10k_animalpose_tigdog", "val").read_text())
    counts = [a["num_keypoints"] for a in raw["annotations"]]
    assert max(counts) == 24
    for i in range(len(raw["images"])):
        _, instances = syn.dataset_scene(SEED, "union24_val", i, 96)
        for inst in instances:
            inside = np.all((inst.keypoints >= 0) & (inst.keypoints <= 95), axis=1)
            assert np.all(inst.visibility[~inside] == 0)


def test_sources_draw_disjoint_animals_and_annotate_only_their_own_joints(root):
    layout = DataLayout(root)
    hashes = {}
    for dataset in ("ap10k", "animalpose", "tigdog", "ap10k_animalpose_tigdog"):
        for p in layout.image_dir(dataset).rglob("*.jpg"):
            hashes.setdefault(hashlib.md5(p.read_bytes()).hexdigest(), []).append(p)
    assert all(len(v) == 1 for v in hashes.values())

    records = layout.load("ap10k_animalpose_tigdog", "train", check_images=False)
    annotated = {src: set(np.flatnonzero(np.stack([r.visibility for r in records if r.source == src]).max(0) > 0))
                 for src in ("ap10k", "animalpose", "tigdog")}
    names = {src: {UNION.joints[j] for j in idx} for src, idx in annotated.items()}
    assert names["ap10k"] == set(UNION.joints[:17])
    assert names["animalpose"] == set(UNION.joints) - {"neck", "chin", "L_shoulder", "R_shoulder"}
    assert names["tigdog"] == set(UNION.joints) - {"nose", "L_ear", "R_ear", "throat", "wither"}


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------

def test_one_animal_in_three_formats_maps_back_to_the_same_union_joints(tmp_path):
    _, kps, vis, box = syn.draw_animal(np.random.default_rng(3), 128, "dog", occlusion=True)
    assert 0 < (vis > 0).sum() < 24  # some joints hidden, so visibility handling is exercised
    # SPEC §2.2 by hand: AnimalPose joint 5 (left_front_elbow) is union L_F_hip (5), joint 9 (left_front_knee)
    # is union L_F_knee (6); SPEC §2.3: TigDog joint 2 (chin) is union 21, joint 12 (L_shoulder) union 22.
    ap = np.asarray(syn.coco_keypoints(kps, np.full(24, 2), "animalpose")).reshape(-1, 3)
    td = np.asarray(syn.coco_keypoints(kps, np.full(24, 2), "tigdog")).reshape(-1, 3)
    np.testing.assert_allclose(ap[[5, 9], :2], kps[[5, 6]], atol=0.006)
    np.testing.assert_allclose(td[[2, 12], :2], kps[[21, 22]], atol=0.006)

    for source, joint_set in (("ap10k", "ap10k"), ("animalpose", "animalpose"), ("tigdog", "tigdog")):
        coco = {"images": [{"id": 1, "file_name": "x.jpg", "width": 128, "height": 128}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": box.tolist(),
                                 "keypoints": syn.coco_keypoints(kps, vis, joint_set)}],
                "categories": [syn._category(syn.get_species("dog"), joint_set)]}
        path = tmp_path / f"{source}.json"
        path.write_text(json.dumps(coco))
        (rec,) = load_coco_records(path, tmp_path, load_joint_set(joint_set), source, check_images=False)
        (u,) = to_union([rec], UNION)
        has = np.zeros(24, bool)
        has[UNION.source_index(source)] = True
        np.testing.assert_array_equal(u.visibility > 0, has & (vis > 0))
        both = has & (vis > 0)
        np.testing.assert_allclose(u.keypoints[both], kps[both], atol=0.006)
        assert not u.keypoints[~both].any()


def test_category_keypoint_names_are_the_datasets_own_and_match_the_joint_order():
    for joint_set in ("ap10k", "animalpose", "tigdog", "union21", "union24"):
        names = syn._category(syn.SPECIES[0], joint_set)["keypoints"]
        js = load_joint_set(joint_set)
        np.testing.assert_array_equal(map_by_name(names, js.joints), np.arange(js.num_joints))
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    ap10k = json.loads((SHARED / "mmpose_samples" / "ap10k" / "test_ap10k.json").read_text())["categories"][0]
    animalpose = json.loads((SHARED / "freenet" / "annotation_files" / "animal_pose_val.json").read_text())
    assert syn._category(syn.SPECIES[0], "ap10k")["keypoints"] == ap10k["keypoints"]
    assert syn._category(syn.SPECIES[0], "ap10k")["skeleton"] == ap10k["skeleton"]
    assert syn._category(syn.SPECIES[0], "animalpose")["keypoints"] == animalpose["categories"][0]["keypoints"]


# ----------------------------------------------------------------------------------------------
# The drawing
# ----------------------------------------------------------------------------------------------

def test_joint_semantics_of_upright_animals():
    for seed in range(30):
        for sp in syn.SPECIES:
            mirror = bool(seed % 2)
            a = syn.sample_animal(np.random.default_rng(seed), sp, 128, rotation=0.0, mirror=mirror)
            k = {n: a.keypoints[i] for n, i in J.items()}
            near, far = ("L", "R") if mirror else ("R", "L")
            assert a.near_side == near
            for side in "LR":
                for end in "FB":
                    hip, knee, paw = k[f"{side}_{end}_hip"], k[f"{side}_{end}_knee"], k[f"{side}_{end}_paw"]
                    assert hip[1] < knee[1] < paw[1]          # y grows downwards
                assert k["wither"][1] < k[f"{side}_shoulder"][1] < k[f"{side}_F_hip"][1]
            # Depth cue: the near side is drawn lower than the far side.
            assert k[f"{near}_F_hip"][1] > k[f"{far}_F_hip"][1] and k[f"{near}_B_hip"][1] > k[f"{far}_B_hip"][1]
            # Facing: head in front, tail behind.
            facing = -1.0 if mirror else 1.0
            assert facing * (k["nose"][0] - k["neck"][0]) > 0 and facing * (k["L_B_hip"][0] - k["tail"][0]) > 0
            centre = np.mean([k[f"{s}_{e}_hip"] for s in "LR" for e in "FB"], axis=0)
            dist = lambda p: float(np.hypot(*(p - centre)))  # noqa: E731
            assert dist(k["nose"]) > max(dist(k["L_eye"]), dist(k["R_eye"]))
            assert np.hypot(*(k["chin"] - k["throat"])) < np.hypot(*(k["nose"] - k["throat"]))


def test_mirrored_drawing_is_the_reflection_with_left_and_right_swapped():
    size, centre = 128, (63.5, 63.5)  # reflection about x = 63.5 maps pixel column c to 127 - c
    for seed, species in ((5, "dog"), (6, "horse"), (8, "tiger")):
        a = syn.sample_animal(np.random.default_rng(seed), species, size, mirror=False, rotation=20.0, center=centre,
                              extent=0.7)
        b = syn.sample_animal(np.random.default_rng(seed), species, size, mirror=True, rotation=-20.0, center=centre,
                              extent=0.7)
        expected = a.keypoints[UNION.flip_index].copy()
        expected[:, 0] = size - 1 - expected[:, 0]
        np.testing.assert_allclose(b.keypoints, expected, atol=1e-3)
        img_a, img_b = np.full((2, size, size, 3), 128.0, np.float32)
        syn.render_animal(img_a, a, texture=True)
        syn.render_animal(img_b, b, texture=True)
        assert np.abs(img_b - img_a[:, ::-1]).mean() < 0.1       # the same picture, reflected
        assert np.abs(img_b - img_a).mean() > 3.0                # ... and not the same picture


@pytest.mark.parametrize("texture", [False, True])
def test_markers_have_their_colours_at_the_joints(texture):
    for seed in range(8):
        for sp in syn.SPECIES:
            image, kps, vis, _ = syn.draw_animal(np.random.default_rng(seed), 128, sp, occlusion=False,
                                                 truncation=False, mirror=False, texture=texture)
            assert vis.min() == 2
            at = lambda name: tuple(int(v) for v in image[tuple(np.round(kps[J[name]][::-1]).astype(int))])  # noqa
            assert at("nose") == sp.nose
            assert at("R_F_paw") == sp.paw   # facing right: the right legs are the near ones
            assert at("R_eye") == (20, 18, 18)


def test_occluded_and_outside_joints_are_unannotated():
    seen_occluder = seen_outside = False
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image, kps, vis, box = syn.draw_animal(rng, 96, "cat", occlusion=True, truncation=True, background=False)
        inside = np.all((kps >= 0) & (kps <= 95), axis=1)
        assert np.all(vis[~inside] == 0)
        seen_outside |= bool((~inside).any())
        seen_occluder |= bool((inside & (vis == 0)).any())
        x, y, w, h = box
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
        shown = kps[vis > 0]
        assert np.all((shown >= [x - 1, y - 1]) & (shown <= [x + w, y + h]))  # visible joints lie in the box
    assert seen_occluder and seen_outside


# ----------------------------------------------------------------------------------------------
# Split files and label lists
# ----------------------------------------------------------------------------------------------

def test_split_files_apply_to_the_ap10k_train_records_without_unmatched_entries(root):
    train = DataLayout(root).load("ap10k", "train", check_images=False)
    info = root / "info"
    for level in (0, 1):
        preset = SPLIT_PRESETS[f"level{level}"]
        entries = load_split_file(info / f"missing_keypoints_anns_info_level_{level}.json")
        out, report = apply_split(train, entries)
        assert report.unmatched == 0 and report.untouched == 0 and len(entries) == len(train)
        vis = np.stack([r.visibility for r in out]) > 0        # (N, 17)
        before = np.stack([r.visibility for r in train]) > 0   # (N, 17)
        legs = {f: [j for j in js if j not in preset["shared"]] for f, js in preset["families"].items()}
        assert not (vis[:, legs["front"]].any(1) & vis[:, legs["back"]].any(1)).any()  # one leg family each
        np.testing.assert_array_equal(vis[:, preset["shared"]], before[:, preset["shared"]])
        assert not (vis & ~before).any()

    lists = {n: load_id_list(info / "label_list" / f"annotation_list_{n}.json") for n in (5, 10, 25)}
    species_of = {r.image_id: r.category_id for r in train}
    available = {c: sum(1 for s in species_of.values() if s == c) for c in set(species_of.values())}
    for n, ids in lists.items():
        assert len(set(ids)) == len(ids) and set(ids) <= set(species_of)
        per = {c: sum(1 for i in ids if species_of[i] == c) for c in available}
        assert per == {c: min(n, m) for c, m in available.items()}
    assert set(lists[5]) <= set(lists[10]) <= set(lists[25])

    labeled = filter_by_image_ids(train, lists[25])
    entries = load_split_file(info / "25_5_imgs_keypoints_anns_info.json")
    _, report = apply_split(labeled, entries)
    assert report.unmatched == 0 and len(entries) == len(labeled)


def test_sizes_and_the_command_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown size preset 'huge'"):
        syn.resolve_sizes("huge")
    with pytest.raises(ValueError, match="unknown size keys"):
        syn.resolve_sizes({"ap10k_tran": 3})
    spec = importlib.util.spec_from_file_location("make_synthetic_data", REPO / "tools" / "make_synthetic_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    summary = cli.main(["--out", str(tmp_path), "--images-per-dataset", "4", "--image-size", "64", "--seed", "3"])
    assert summary["ap_10k/annotations/ap10k-train-split1.json"]["images"] == 4
    assert summary["ap_10k/annotations/ap10k-val-split1.json"]["images"] == 1
    assert summary["ap10k_animalpose_tigdog/annotations/ap10k_animalpose_tigdog_val.json"]["images"] == 2
    assert read_image(str(next((tmp_path / "tigdog" / "data").rglob("*.jpg")))).shape == (64, 64, 3)
    (tmp_path / "a_file").write_text("")
    with tool_error(capsys, re.escape(f"--out {tmp_path / 'a_file'} is a file, not a folder")):
        cli.main(["--out", str(tmp_path / "a_file")])
    # an earlier synthetic root is written again; a folder with other files only with --force
    assert cli.main(["--out", str(tmp_path), "--images-per-dataset", "2", "--image-size", "64"])
    real = tmp_path / "real"
    mine = real / "ap_10k" / "annotations" / "ap10k-train-split1.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("{}")
    with tool_error(capsys, re.escape(f"--out {real} holds files that are not a synthetic data root's (ap_10k)")):
        cli.main(["--out", str(real)])
    assert mine.read_text() == "{}"                                   # the user's file is untouched
    cli.main(["--out", str(real), "--force", "--images-per-dataset", "2", "--image-size", "64"])
    assert json.loads(mine.read_text())["images"]
