"""Split files, id lists, seeded ratio sampling and split generation (SPEC §3.3–§3.5)."""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from freenet.data.coco import load_coco_records
from freenet.data.records import Record
from freenet.data.splits import (SPLIT_PRESETS, apply_split, filter_by_image_ids,
                                 generate_missing_joint_split, load_id_list, load_split_file,
                                 sample_by_ratio, write_split_file)
from freenet.errors import DataError
from freenet.joints import load_joint_set

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
INFO = SHARED / "freenet" / "info"
ANN = SHARED / "freenet" / "annotation_files"

needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared test data not found at {SHARED}")

# Id offsets of the authors' random-subset files (SPEC §3.5).
ANIMALPOSE_IMG, ANIMALPOSE_ANN = 58632, 16561
TIGDOG_IMG = 63240


def rec(image_id, box, ann_id=0, num_joints=17, vis=2.0, source="ap10k"):
    kps = np.stack([np.arange(num_joints), 10 + np.arange(num_joints)], axis=1).astype(np.float32)
    return Record("img.jpg", image_id, ann_id, 1, np.asarray(box, np.float32), kps,
                  np.full(num_joints, vis, np.float32), source)


def entry(image_id, box, vis):
    return {"image_id": image_id, "vis": list(vis), "box": list(box)}


# ----------------------------------------------------------------------------------------------
# Applying split files
# ----------------------------------------------------------------------------------------------

def test_apply_split_box_tolerance_first_match_and_report(caplog):
    records = [rec(1, [10, 10, 50, 50], ann_id=0),
               rec(1, [11, 11, 50, 50], ann_id=1),
               rec(2, [0, 0, 20, 20], ann_id=2),
               rec(3, [5, 5, 5, 5], ann_id=3)]
    originals = [(r.keypoints.copy(), r.visibility.copy()) for r in records]
    vis_a, vis_b, vis_c = [1] * 5 + [0] * 12, [0] * 5 + [1] * 12, [1, 0] * 8 + [1]
    entries = [
        entry(1, [12, 12, 50, 50], vis_a),    # within 2 px of both image-1 records: the first wins
        entry(1, [13, 10, 50, 50], vis_b),    # 3 px from record 0, 2 px from record 1
        entry(2, [3, 0, 20, 20], vis_c),      # 3 px off: no match
        entry(2, [0, 0, 22.5, 20], vis_c),    # 2.5 px off: no match
        entry(9, [10, 10, 50, 50], vis_c),    # unknown image
    ]
    with caplog.at_level(logging.WARNING, logger="freenet.data.splits"):
        out, report = apply_split(records, entries, path="my_split.json")

    np.testing.assert_array_equal(out[0].visibility, vis_a)
    np.testing.assert_array_equal(out[1].visibility, vis_b)
    np.testing.assert_array_equal(out[2].visibility, np.full(17, 2))  # untouched: full annotation kept
    np.testing.assert_array_equal(out[3].visibility, np.full(17, 2))
    for r, (k, v) in zip(out, originals):
        np.testing.assert_array_equal(r.keypoints, k)                 # coordinates untouched
    for r, (k, v) in zip(records, originals):
        np.testing.assert_array_equal(r.visibility, v)                # inputs not mutated
    assert [r.ann_id for r in out] == [0, 1, 2, 3]
    out[0].keypoints[0, 0] = -1
    assert records[0].keypoints[0, 0] == 0                            # copies, not views

    assert (report.entries, report.matched, report.unmatched) == (5, 2, 3)
    assert report.unmatched_image_ids == (2, 2, 9)
    assert (report.records, report.untouched, report.rematched) == (4, 2, 0)
    warnings = [m for m in caplog.messages if "my_split.json" in m]
    assert len(warnings) == 1 and "3 of 5" in warnings[0]


def test_apply_split_exact_tolerance_and_later_entry_wins_on_same_record():
    records = [rec(1, [10, 10, 50, 50])]
    first, second = [1] * 17, [0] * 16 + [1]
    out, report = apply_split(records, [entry(1, [12, 8, 52, 48], first), entry(1, [10, 10, 50, 50], second)])
    np.testing.assert_array_equal(out[0].visibility, second)
    assert (report.matched, report.rematched, report.untouched) == (2, 1, 0)
    _, tight = apply_split(records, [entry(1, [11, 10, 50, 50], first), entry(1, [10, 10, 50, 50.5], first)], tol=0.5)
    assert (tight.matched, tight.unmatched) == (1, 1)


def test_split_file_that_matches_no_record_is_an_error(tmp_path, caplog):
    """A split file of which no entry matches (another dataset's, another split's) would leave every
    record fully labeled: the missing-joint setting silently not applied. An error naming the file
    and the matching rule instead; a partial match stays a warning."""
    records = [rec(1, [10, 10, 50, 50], ann_id=0), rec(2, [0, 0, 20, 20], ann_id=1)]
    path = tmp_path / "wrong_split.json"
    write_split_file(path, [entry(1, [20, 10, 50, 50], [1] * 17),     # its image, box 10 px off
                            entry(1, [30, 10, 50, 50], [1] * 17),     # the same image, 20 px off
                            entry(7, [10, 10, 50, 50], [1] * 17),     # an image with no record
                            entry(8, [0, 0, 20, 20], [1] * 17)])
    with pytest.raises(DataError) as e:
        apply_split(records, load_split_file(path), path=path)
    assert str(e.value) == (f"{path}: none of its 4 entries matches any of the 2 records (an entry matches a record "
                            "of its image id whose box [x, y, w, h] is within 2 px on every coordinate; 1 of the "
                            "entries' 3 image ids have a record at all): is it the split file of this dataset and "
                            "split?")
    # One entry matching: a warning about the others, the match applied.
    with caplog.at_level(logging.WARNING, logger="freenet.data.splits"):
        out, report = apply_split(records, [entry(2, [1, 1, 20, 20], [0] * 17)] + load_split_file(path), path=path)
    assert (report.matched, report.unmatched) == (1, 4) and out[1].visibility.sum() == 0
    assert f"{path}: 4 of 5 split entries matched no record" in caplog.text
    # Nothing to match on either side: no error.
    assert apply_split([], load_split_file(path), path=path)[1].matched == 0
    assert apply_split(records, [], path=path)[1].untouched == 2


def test_apply_split_rejects_wrong_joint_count():
    with pytest.raises(DataError, match="s.json.*3 visibility values"):
        apply_split([rec(1, [0, 0, 1, 1])], [entry(1, [0, 0, 1, 1], [1, 1, 1])], path="s.json")


@needs_data
def test_real_level0_entries_on_synthetic_records():
    entries = load_split_file(INFO / "missing_keypoints_anns_info_level_0.json")
    assert len(entries) == 9122
    head = entries[:40]
    rng = np.random.default_rng(0)
    records = []
    for i, e in enumerate(head):
        box = np.asarray(e["box"], float)
        records.append(rec(e["image_id"], box + [9, 0, 0, 0], ann_id=1000 + i))        # decoy, 9 px off
        records.append(rec(e["image_id"], box + rng.uniform(-1.9, 1.9, 4), ann_id=i))  # the instance
    out, report = apply_split(records, head, path="level0")
    assert report.matched == 40 and report.unmatched == 0 and report.untouched == 40
    by_ann = {r.ann_id: r for r in out}
    for i, e in enumerate(head):
        np.testing.assert_array_equal(by_ann[i].visibility, e["vis"])
        np.testing.assert_array_equal(by_ann[1000 + i].visibility, np.full(17, 2))
    # The file's first entry: front family, left eye unannotated.
    assert head[0] == {"image_id": 371, "vis": [0] + [1] * 10 + [0] * 6, "box": [255.0, 209.0, 482.0, 386.0]}


def test_load_split_file_validation(tmp_path):
    good = [entry(5, [1, 2, 3, 4], [1] * 17)]
    p = tmp_path / "split.json"
    p.write_text(json.dumps(good + [entry(7, [1, 2, 3, 4], [1] * 16)]))
    with pytest.raises(DataError, match=r"split.json \(id 7\): entry 1 \(image id 7\).*17 integers"):
        load_split_file(p)
    p.write_text(json.dumps(good + [{"image_id": 8, "vis": [1] * 17, "box": [1, 2, 3]}]))
    with pytest.raises(DataError, match=r"entry 1 \(image id 8\).*'box'"):
        load_split_file(p)
    p.write_text(json.dumps({"entries": good}))
    with pytest.raises(DataError, match="JSON list"):
        load_split_file(p)
    p.write_text("[{")
    with pytest.raises(DataError, match="split.json.*malformed JSON"):
        load_split_file(p)
    p.write_text(json.dumps(good))
    assert load_split_file(p) == [{"image_id": 5, "vis": [1] * 17, "box": [1.0, 2.0, 3.0, 4.0]}]


@needs_data
@pytest.mark.parametrize("preset, split_file", [
    ("level0", "missing_keypoints_anns_info_level_0.json"),
    ("level1", "missing_keypoints_anns_info_level_1.json"),
    ("25_5", "25_5_imgs_keypoints_anns_info.json"),
])
def test_presets_describe_the_authors_files(preset, split_file):
    """Every entry of the authors' file keeps a subset of one family plus the shared joints."""
    spec = SPLIT_PRESETS[preset]
    allowed = [set(f) | set(spec["shared"]) for f in spec["families"].values()]
    entries = load_split_file(INFO / split_file)
    kept = [{j for j, v in enumerate(e["vis"]) if v} for e in entries]
    assert all(any(k <= a for a in allowed) for k in kept)
    # No looser preset would do: each family is used by some entry that fits no other family.
    for f, a in enumerate(allowed):
        assert any(k <= a and not any(k <= b for g, b in enumerate(allowed) if g != f) for k in kept)


@needs_data
def test_level1_is_level0_plus_shared_paws():
    l0 = load_split_file(INFO / "missing_keypoints_anns_info_level_0.json")
    l1 = load_split_file(INFO / "missing_keypoints_anns_info_level_1.json")
    v0 = np.array([e["vis"] for e in l0])
    v1 = np.array([e["vis"] for e in l1])
    assert np.all(v1 >= v0)
    extra = sorted(set(np.nonzero(v1 - v0)[1]))
    assert extra == sorted(set(SPLIT_PRESETS["level1"]["shared"]) - set(SPLIT_PRESETS["level0"]["shared"]))


# ----------------------------------------------------------------------------------------------
# Id lists
# ----------------------------------------------------------------------------------------------

@needs_data
def test_id_list_filter_keeps_listed_images_in_order():
    ids = load_id_list(INFO / "label_list" / "annotation_list_25.json")
    assert len(ids) == 1247 and ids[:3] == [48752, 48839, 48787]
    records = [rec(48787, [0, 0, 1, 1], ann_id=1), rec(1, [0, 0, 1, 1], ann_id=2),
               rec(48752, [0, 0, 1, 1], ann_id=3), rec(48787, [0, 0, 1, 1], ann_id=4)]
    assert [r.ann_id for r in filter_by_image_ids(records, ids)] == [1, 3, 4]


def test_label_list_ids_without_records_are_reported_with_the_file(tmp_path, caplog):
    path = tmp_path / "annotation_list_25.json"
    path.write_text(json.dumps([2, 99, 1, 98]))
    records = [rec(1, [0, 0, 1, 1], ann_id=1), rec(3, [0, 0, 1, 1], ann_id=2), rec(2, [0, 0, 1, 1], ann_id=3)]
    with caplog.at_level(logging.WARNING, logger="freenet.data.splits"):
        kept = filter_by_image_ids(records, load_id_list(path), path)
        filter_by_image_ids(records, [1, 5], path="mine.json")
    assert [r.ann_id for r in kept] == [1, 3]
    assert caplog.messages == [f"{path}: 2 of 4 listed image ids have no record (first: 98, 99)",
                               "mine.json: 1 of 2 listed image ids have no record (first: 5)"]


def test_load_id_list_rejects_non_ids(tmp_path):
    p = tmp_path / "ids.json"
    p.write_text(json.dumps([1, 2, "3"]))
    with pytest.raises(DataError, match="ids.json.*entry 2"):
        load_id_list(p)


# ----------------------------------------------------------------------------------------------
# Seeded random-ratio sampling (§3.5)
# ----------------------------------------------------------------------------------------------

def test_private_rng_matches_module_level_draws_and_leaves_global_state():
    random.seed(2)
    expected = random.sample(range(14587), 1458)
    random.seed(12345)
    state = random.getstate()
    assert random.Random(2).sample(range(14587), 1458) == expected
    pool = [rec(i, [0, 0, 1, 1], ann_id=i) for i in range(14587)]
    labeled, unlabeled = sample_by_ratio([pool[:9122], pool[9122:]], 0.1, seed=2)
    assert random.getstate() == state
    assert [r.ann_id for r in labeled] == sorted(expected)
    assert [r.ann_id for r in unlabeled] == sorted(set(range(14587)) - set(expected))


@pytest.fixture(scope="module")
def pools():
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    # Stand-ins for the AP-10K train instances (file not shipped): the level-0 split file lists
    # every one of them (image id + box); loading order is by image id, ties in file order.
    entries = load_split_file(INFO / "missing_keypoints_anns_info_level_0.json")
    ap10k = [rec(e["image_id"], e["box"], source="ap10k") for e in sorted(entries, key=lambda e: e["image_id"])]
    animalpose = load_coco_records(ANN / "animal_pose_train.json", "/unused", load_joint_set("animalpose"),
                                   "animalpose", check_images=False)
    return ap10k, animalpose


def _reference(name):
    data = json.loads((INFO / name).read_text())
    ap10k = Counter({int(k): len(v) for k, v in data.items() if int(k) < ANIMALPOSE_IMG})
    animalpose = sorted(a for k, v in data.items() if ANIMALPOSE_IMG <= int(k) < TIGDOG_IMG for a in v)
    tigdog = sum(len(v) for k, v in data.items() if int(k) >= TIGDOG_IMG)
    return ap10k, animalpose, tigdog


def _split_by_source(labeled):
    ap10k = Counter(r.image_id for r in labeled if r.source == "ap10k")
    animalpose = sorted(r.ann_id + ANIMALPOSE_ANN for r in labeled if r.source == "animalpose")
    tigdog = sum(r.source == "tigdog" for r in labeled)
    return ap10k, animalpose, tigdog


@needs_data
@pytest.mark.parametrize("ratio, total, ap10k_count", [(0.05, 729, 454), (0.1, 1458, 922), (0.2, 2917, 1824)])
def test_sampling_reproduces_authors_ap10k_animalpose_subsets(pools, ratio, total, ap10k_count):
    ap10k, animalpose = pools
    assert (len(ap10k), len(animalpose)) == (9122, 5465)
    labeled, unlabeled = sample_by_ratio([ap10k, animalpose], ratio, seed=2)
    assert len(labeled) == total
    ref_ap10k, ref_animalpose, _ = _reference(f"random_{ratio}_img_ann_ids.json")
    got_ap10k, got_animalpose, _ = _split_by_source(labeled)
    assert sum(got_ap10k.values()) == ap10k_count
    assert got_ap10k == ref_ap10k
    assert got_animalpose == ref_animalpose
    # Unlabeled = exactly the complement, in pool order.
    pooled = ap10k + animalpose
    drawn = {id(r) for r in labeled}
    assert [id(r) for r in unlabeled] == [id(r) for r in pooled if id(r) not in drawn]
    order = {id(r): i for i, r in enumerate(pooled)}
    assert [order[id(r)] for r in labeled] == sorted(order[id(r)] for r in labeled)


@needs_data
@pytest.mark.parametrize("num_tigdog", [14903, 14910, 14912])
def test_sampling_reproduces_authors_union_subset(pools, num_tigdog):
    ap10k, animalpose = pools
    # The TigDog train file is not available; its size only matters (any of 14903-14912 works).
    tigdog = [rec(TIGDOG_IMG + i, [0, 0, 1, 1], ann_id=i, num_joints=19, source="tigdog") for i in range(num_tigdog)]
    labeled, unlabeled = sample_by_ratio([ap10k, animalpose, tigdog], 0.1, seed=2)
    ref_ap10k, ref_animalpose, ref_tigdog = _reference("union_random_0.1_img_ann_ids.json")
    got_ap10k, got_animalpose, got_tigdog = _split_by_source(labeled)
    assert (sum(got_ap10k.values()), len(got_animalpose), got_tigdog) == (931, 515, 1503)
    assert got_ap10k == ref_ap10k and got_animalpose == ref_animalpose and got_tigdog == ref_tigdog
    assert len(labeled) + len(unlabeled) == 9122 + 5465 + num_tigdog
    assert not {id(r) for r in labeled} & {id(r) for r in unlabeled}


def test_sample_ratio_bounds():
    with pytest.raises(ValueError, match="ratio"):
        sample_by_ratio([[rec(1, [0, 0, 1, 1])]], 1.5)
    labeled, unlabeled = sample_by_ratio([[rec(i, [0, 0, 1, 1]) for i in range(7)]], 0.0)
    assert labeled == [] and len(unlabeled) == 7


# ----------------------------------------------------------------------------------------------
# Generating missing-joint splits (§3.3)
# ----------------------------------------------------------------------------------------------

def _records_with_holes(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = rec(i // 2, [10 * i, 20 * i, 30, 40], ann_id=i)  # two instances per image
        r.visibility = np.where(rng.random(17) < 0.2, 0, rng.integers(1, 3, 17)).astype(np.float32)
        out.append(r)
    return out


def test_generated_split_is_seeded_and_keeps_family_or_shared_annotated_joints():
    records = _records_with_holes(400)
    spec = SPLIT_PRESETS["level1"]
    a = generate_missing_joint_split(records, **spec, seed=7)
    assert a == generate_missing_joint_split(records, **spec, seed=7)
    assert a != generate_missing_joint_split(records, **spec, seed=8)

    front, back, shared = (set(spec["families"]["front"]), set(spec["families"]["back"]), set(spec["shared"]))
    vis = np.array([e["vis"] for e in a])
    annotated = np.stack([r.visibility for r in records]) > 0
    assert set(np.unique(vis)) <= {0, 1}
    assert np.all(vis <= annotated)                                          # never un-hides a joint
    np.testing.assert_array_equal(vis[:, sorted(shared)], annotated[:, sorted(shared)])  # shared kept
    exclusive_front, exclusive_back = sorted(front - shared), sorted(back - shared)
    has_front = vis[:, exclusive_front].any(axis=1)
    has_back = vis[:, exclusive_back].any(axis=1)
    assert not np.any(has_front & has_back)                                  # one family per record
    # Within its family a record keeps every annotated joint.
    np.testing.assert_array_equal(vis[has_front][:, exclusive_front], annotated[has_front][:, exclusive_front])
    np.testing.assert_array_equal(vis[has_back][:, exclusive_back], annotated[has_back][:, exclusive_back])
    assert [(e["image_id"], e["box"]) for e in a] == [(r.image_id, [float(b) for b in r.box]) for r in records]


def test_level0_preset_on_fully_annotated_records():
    records = [rec(i, [0, 0, 10, 10], ann_id=i) for i in range(400)]
    entries = generate_missing_joint_split(records, **SPLIT_PRESETS["level0"], seed=2)
    front = [1] * 5 + [1] * 6 + [0] * 6
    back = [1] * 5 + [0] * 6 + [1] * 6
    patterns = Counter("front" if e["vis"] == front else "back" if e["vis"] == back else "other" for e in entries)
    assert patterns["other"] == 0
    assert 160 < patterns["front"] < 240  # uniform over the two families (binomial sd 10)


def test_generated_split_round_trips_through_file_and_apply(tmp_path):
    records = _records_with_holes(50)
    records[3].box = np.array([10.25, 20.5, 30.125, 40.0], np.float32)
    entries = generate_missing_joint_split(records, **SPLIT_PRESETS["level0"], seed=3)
    path = tmp_path / "sub" / "split.json"
    write_split_file(path, entries)
    raw = json.loads(path.read_text())
    assert raw[0]["box"] == [0, 0, 30, 40] and raw[3]["box"] == [10.25, 20.5, 30.125, 40]  # authors' style
    loaded = load_split_file(path)
    assert loaded == [dict(e, box=[float(b) for b in e["box"]]) for e in entries]
    out, report = apply_split(records, loaded, path=path)
    assert report.matched == 50 and report.untouched == 0 and report.rematched == 0
    np.testing.assert_array_equal(np.stack([r.visibility for r in out]), [e["vis"] for e in entries])
