import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO
from freenet.config import load_config
from freenet.data.dataset import KeypointDataset, StreamSampler, collate, read_image, stream_loader
from freenet.data.records import Record
from freenet.data.transforms import (AugmentConfig, TwoViewTransform, apply_matrix, crop_matrix, half_body_box,
                                     normalize_images)
from freenet.errors import DataError
from freenet.joints import load_joint_set
from freenet.training import augment_config

GEOMETRY_ONLY = AugmentConfig(photometric=False)


def test_crop_matrix_hand_values():
    box = np.array([0.0, 0.0, 100.0, 50.0])          # square side 100 about centre (50, 25)
    m = crop_matrix(box, scale=1.0, angle_deg=0, input_size=256)
    pts = apply_matrix(m, np.array([[50.0, 25.0], [0.0, 25.0], [100.0, 75.0]]))
    np.testing.assert_allclose(pts, [[127.5, 127.5], [0.0, 127.5], [255.0, 255.0]], atol=1e-9)
    m2 = crop_matrix(box, scale=2.0, angle_deg=90, input_size=64)   # k = 63 / 200
    pts = apply_matrix(m2, np.array([[60.0, 25.0], [50.0, 35.0]]))
    # R = [[0, 1], [-1, 0]]: a point right of the centre goes up, a point below goes right
    np.testing.assert_allclose(pts, [[31.5, 31.5 - 10 * 63 / 200], [31.5 + 10 * 63 / 200, 31.5]], atol=1e-9)


def test_half_body_box():
    js = load_joint_set("ap10k")
    kps = np.zeros((17, 2))
    kps[[0, 1, 2]] = [[10, 10], [20, 12], [14, 30]]      # upper-body joints
    kps[[4, 11, 12]] = [[100, 100], [120, 110], [110, 140]]  # lower-body joints
    visible = np.zeros(17, bool)
    visible[[0, 1, 2, 4, 11, 12]] = True

    class Coin:  # forces the upper (< 0.5) or lower half
        def __init__(self, v): self.v = v
        def random(self): return self.v

    up = half_body_box(kps, visible, js.upper_body, Coin(0.1))
    np.testing.assert_allclose(up, [7.5, 5, 15, 30])  # bbox x 10..20, y 10..30 enlarged 1.5x about (15, 20)
    low = half_body_box(kps, visible, js.upper_body, Coin(0.9))
    np.testing.assert_allclose(low, [110 - 15, 120 - 30, 30, 60])
    np.testing.assert_allclose(half_body_box(kps, visible, js.upper_body, Coin(0.4999)), up)   # p 0.5 each
    np.testing.assert_allclose(half_body_box(kps, visible, js.upper_body, Coin(0.5)), low)
    thin = kps.copy()
    thin[[0, 1, 2]] = [[10, 10], [11, 20], [10.5, 30]]     # a box exactly 1 wide is too thin
    assert half_body_box(thin, visible, js.upper_body, Coin(0.1)) is None
    thin[1, 0] = 11.01
    assert half_body_box(thin, visible, js.upper_body, Coin(0.1)) is not None
    visible[2] = False                                      # only two upper joints left
    assert half_body_box(kps, visible, js.upper_body, Coin(0.1)) is None


class ScriptedRng:
    """Stands in for the sample's Generator: ``random()`` returns the scripted draws in turn; scale 1,
    no rotation."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0)

    def uniform(self, low, high):
        return 1.0

    def integers(self, low, high):
        return 0


@pytest.mark.parametrize("draws, half", [((0.29, 0.1, 0.9), True), ((0.3, 0.9), False), ((0.5, 0.9), False)])
def test_half_body_crop_with_p_0_3_boxes_the_visible_joints_only(draws, half):
    """The half-body crop comes with p 0.3 (draw < 0.3) and boxes the half's *visible* joints: the
    unannotated joints at (0, 0) do not stretch the box (SPEC §4)."""
    js = load_joint_set("ap10k")
    kps = np.zeros((17, 2))
    kps[[0, 1, 2]] = [[10, 10], [20, 12], [14, 30]]      # the only annotated joints: upper body
    vis = np.zeros(17)
    vis[[0, 1, 2]] = 2
    box = np.array([0.0, 0.0, 200.0, 100.0])
    cfg = AugmentConfig(input_size=64, heatmap_size=16, photometric=False, half_body_prob=0.3, flip_prob=0.5)
    rng = ScriptedRng(*draws)
    out = TwoViewTransform(js, cfg, with_aug=False)(np.zeros((120, 220, 3), np.uint8), box, kps, vis, rng)
    expected_box = np.array([7.5, 5, 15, 30]) if half else box
    expected = apply_matrix(crop_matrix(expected_box, 1.0, 0, 64), kps)
    np.testing.assert_allclose(out["joints"].numpy(), expected, atol=1e-4)
    assert not rng.draws                                    # every scripted draw was taken, no more


def painted_sample(shared_data):
    """A real AP-10K image with a uniquely coloured 7x7 square painted on every annotated joint."""
    ann = json.loads((shared_data / "mmpose_samples/ap10k/test_ap10k.json").read_text())
    a = next(x for x in ann["annotations"] if x["image_id"] == 4)
    image = read_image(str(shared_data / "mmpose_samples/ap10k/000000000004.jpg"))
    kps = np.array(a["keypoints"], dtype=np.float32).reshape(17, 3)
    colours = {}
    for j, (x, y, v) in enumerate(kps):
        if v > 0:
            colour = (40 + 12 * j, 255 - 11 * j, (97 * j) % 256)
            colours[j] = np.array(colour)
            image[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4] = colour
    return image, np.array(a["bbox"], dtype=np.float32), kps[:, :2], kps[:, 2], colours


@pytest.mark.parametrize("seed", range(6))
def test_warped_joints_land_on_their_painted_pixels(shared_data, seed):
    image, box, kps, vis, colours = painted_sample(shared_data)
    js = load_joint_set("ap10k")
    cfg = AugmentConfig(input_size=256, photometric=False, half_body_prob=0.5)
    out = TwoViewTransform(js, cfg)(image, box, kps, vis, np.random.default_rng(seed))
    crop = out["ori"].permute(1, 2, 0).numpy().astype(int)
    joints = out["joints"].numpy()
    flipped = None
    checked = 0
    for j in range(17):
        x, y = np.round(joints[j]).astype(int)
        if not (2 <= x < 254 and 2 <= y < 254) or out["target_weight"][j] == 0:
            continue
        # after a flip, output slot j holds the joint that was painted as its mirror partner
        pixel = crop[y, x]
        same = min(abs(pixel - colours[j]).max() if j in colours else 999, 999)
        mirror_j = js.flip_index[j]
        mirror = abs(pixel - colours[mirror_j]).max() if mirror_j in colours else 999
        is_flipped = mirror < 30 and same >= 30 if mirror_j != j else None
        if is_flipped is not None:
            flipped = is_flipped if flipped is None else flipped
            assert flipped == is_flipped
        assert min(same, mirror) < 30, f"joint {j}: crop pixel {pixel} is not its marker colour"
        checked += 1
    assert checked >= 5
    # the GT heatmap peaks where the joint is: int(x / 4 + 0.5)
    hm = out["target"].numpy()
    for j in np.flatnonzero(out["target_weight"].numpy()):
        cx, cy = np.trunc(joints[j] / 4 + 0.5).astype(int)
        if 0 <= cx < 64 and 0 <= cy < 64:
            assert hm[j, cy, cx] == pytest.approx(1.0)


def test_flip_swaps_pairs_and_mirrors_x():
    js = load_joint_set("ap10k")
    image = np.zeros((100, 100, 3), np.uint8)
    kps = np.stack([np.linspace(20, 80, 17), np.linspace(30, 70, 17)], axis=1).astype(np.float32)
    vis = np.ones(17, np.float32)
    vis[1] = 0                                             # R_eye unannotated
    box = np.array([0, 0, 99, 99], np.float32)
    cfg = AugmentConfig(input_size=64, heatmap_size=16, photometric=False, half_body_prob=0, flip_prob=0,
                        scale_range=(1, 1), max_rotation=0)
    plain = TwoViewTransform(js, cfg)(image, box, kps, vis, np.random.default_rng(0))
    flip = TwoViewTransform(js, AugmentConfig(**{**cfg.__dict__, "flip_prob": 1.0}))(image, box, kps, vis,
                                                                                          np.random.default_rng(0))
    p, f = plain["joints"].numpy(), flip["joints"].numpy()
    perm = js.flip_index
    np.testing.assert_allclose(f[:, 0], 63 - p[perm, 0], atol=1e-4)
    np.testing.assert_allclose(f[:, 1], p[perm, 1], atol=1e-4)
    # the missing R_eye moved to the L_eye slot, with its mask
    assert flip["target_weight"][0] == 0 and flip["target_weight"][1] == 1 and plain["target_weight"][1] == 0


def test_photometric_view_shares_geometry(shared_data):
    image, box, kps, vis, _ = painted_sample(shared_data)
    js = load_joint_set("ap10k")
    with_photo = TwoViewTransform(js, AugmentConfig(input_size=64, heatmap_size=16))
    without = TwoViewTransform(js, AugmentConfig(input_size=64, heatmap_size=16, photometric=False))
    a = with_photo(image, box, kps, vis, np.random.default_rng(3))
    b = without(image, box, kps, vis, np.random.default_rng(3))
    # the photometric draw happens after every geometric draw: same crop, same target
    assert torch.equal(a["ori"], b["ori"]) and torch.equal(a["target"], b["target"])
    assert b["aug"] is b["ori"] or torch.equal(b["aug"], b["ori"])
    assert a["ori"].dtype == torch.uint8 and a["aug"].shape == (3, 64, 64)


def test_normalize_images():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    y = normalize_images(x)
    expect = [(0 / 255 - .485) / .229, (128 / 255 - .456) / .224, (255 / 255 - .406) / .225]
    np.testing.assert_allclose(y.flatten().numpy(), expect, rtol=1e-5)


def record(path, ann_id=7):
    return Record(str(path), 1, ann_id, 1, np.array([0, 0, 20, 20], np.float32), np.full((17, 2), 10, np.float32),
                  np.ones(17, np.float32))


def test_dataset_errors_name_file_and_id(tmp_path):
    js = load_joint_set("ap10k")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    ds = KeypointDataset([record(tmp_path / "missing.jpg", 11), record(broken, 12)], TwoViewTransform(js))
    with pytest.raises(DataError, match=r"missing.jpg \(id 11\): cannot read image \(file not found\)"):
        ds[0]
    with pytest.raises(DataError, match=r"broken.jpg \(id 12\): cannot read image \(unreadable"):
        ds[1]


def test_dataset_sample_is_a_function_of_its_key(tmp_path):
    js = load_joint_set("ap10k")
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    transform = TwoViewTransform(js, AugmentConfig(input_size=64, heatmap_size=16))
    ds = KeypointDataset([record(tmp_path / "a.png")], transform, seed=5, stream=1)
    a, b, c = ds[(0, 3)], ds[(0, 3)], ds[(0, 4)]
    assert torch.equal(a["aug"], b["aug"]) and torch.equal(a["target"], b["target"])
    assert not torch.equal(a["ori"], c["ori"])
    batch = collate([a, c])
    assert batch["ori"].shape == (2, 3, 64, 64) and batch["index"].tolist() == [0, 0]


def test_the_stream_loads_the_same_batches_in_spawned_workers(tmp_path):
    """macOS and Windows start DataLoader workers by spawning (Python 3.14 on Linux: forkserver), which
    pickles the dataset, its transform and the collate and worker functions: all must survive that,
    and a worker's batches must equal the main process's."""
    js = load_joint_set("ap10k")
    for i in range(3):
        img = np.random.default_rng(i).integers(0, 255, (48, 40, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
    transform = TwoViewTransform(js, AugmentConfig(input_size=64, heatmap_size=16))
    ds = KeypointDataset([record(tmp_path / f"{i}.png") for i in range(3)], transform, seed=5, stream=0)
    spawned = stream_loader(ds, 2, start_batch=1, workers=1)
    spawned.multiprocessing_context = "spawn"
    batches = [batch for batch, _ in zip(spawned, range(2))]
    assert [b["ori"].shape for b in batches] == [(2, 3, 64, 64)] * 2
    for got, want in zip(batches, stream_loader(ds, 2, start_batch=1)):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_stream_sampler_resume_ranks_and_epochs():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(StreamSampler(5, 2, seed=1, stream=0), 12)          # 6 batches over a 5-record stream
    assert [p for _, p in full] == list(range(12))
    assert sorted(i for i, _ in full[:5]) == list(range(5))          # each epoch is a permutation
    assert sorted(i for i, _ in full[5:10]) == list(range(5))
    assert take(StreamSampler(5, 2, seed=1, stream=0, start_batch=3), 6) == full[6:12]   # resume
    r0 = take(StreamSampler(5, 2, seed=1, stream=0, rank=0, world_size=2), 4)
    r1 = take(StreamSampler(5, 2, seed=1, stream=0, rank=1, world_size=2), 4)
    assert r0 == full[0:2] + full[4:6] and r1 == full[2:4] + full[6:8]   # ranks split each global batch
    assert take(StreamSampler(5, 2, seed=2, stream=0), 10) != full[:10]


EXPERIMENT_YAMLS = sorted((REPO / "experiments").rglob("*.yaml"))


def test_experiment_yamls_are_found():
    """The --cfg yamls under experiments/ (SPEC §10): the parametrisation below must not be empty."""
    assert len(EXPERIMENT_YAMLS) >= 3


@pytest.mark.parametrize("yaml_file", [None] + EXPERIMENT_YAMLS,
                         ids=lambda p: "defaults" if p is None else str(p.relative_to(REPO)))
def test_training_augmentation_is_spec_4(yaml_file):
    """The AugmentConfig training builds from each experiment yaml (and from the defaults) carries the
    SPEC §4 values: 256 crop / 64 heatmap (SPEC preamble, §5.1), sigma 2 (§4, §5.1), half body p 0.3, scale
    U(0.65, 1.35), integer rotation U{-45..45}, flip p 0.5, and the photometric aug view (§4)."""
    aug = augment_config(load_config(None if yaml_file is None else str(yaml_file)))
    expected = {"input_size": 256, "heatmap_size": 64, "sigma": 2.0, "half_body_prob": 0.3,
                "scale_range": (0.65, 1.35), "max_rotation": 45, "flip_prob": 0.5, "photometric": True}
    assert {f.name for f in dataclasses.fields(AugmentConfig)} == set(expected), "a new setting: add its §4 value"
    got = dataclasses.asdict(aug)
    assert tuple(got.pop("scale_range")) == pytest.approx(expected.pop("scale_range"), abs=1e-12)
    assert got == expected
    assert isinstance(aug.max_rotation, int) and not isinstance(aug.max_rotation, bool)   # integer degrees
