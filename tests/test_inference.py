"""Single-image inference: geometry of predict(), checkpoint inference, drawing, the example script."""
from __future__ import annotations

import errno
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from freenet.checkpoint import CheckpointError, extract_state_dict
from freenet.device import DeviceError, resolve_device
from freenet.evaluation import box_centre_scale
from freenet.inference import (PART_COLOURS, describe_weights, draw_pose, load_pose_model, pose_to_dict, predict,
                               training_record, whole_image_box)
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet

REPO = Path(__file__).resolve().parents[1]
TEST_JPG = REPO.parent / "shared" / "data" / "freenet" / "images" / "test.jpg"
needs_image = pytest.mark.skipif(not TEST_JPG.is_file(), reason=f"shared example image not found at {TEST_JPG}")


class BrightnessOracle(nn.Module):
    """Every channel = the crop's brightness sampled at pixels (4k, 4k): heatmap cell k <-> crop
    pixel 4k, the convention the back-projection assumes. A single bright blob is then found by
    every joint channel exactly where it is."""

    def __init__(self, num_joints: int):
        super().__init__()
        self.num_joints = num_joints
        self.anchor = nn.Parameter(torch.zeros(()))  # gives predict() a device to read

    def forward(self, x):
        grey = x.mean(dim=1, keepdim=True)[..., ::4, ::4]  # (B, 1, S/4, S/4)
        return grey.expand(-1, self.num_joints, -1, -1) + self.anchor


def _blob_image(width, height, centre, sigma):
    yy, xx = np.mgrid[0:height, 0:width]
    blob = 255 * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma ** 2))
    return np.repeat(blob[..., None], 3, axis=2).round().astype(np.uint8)


@pytest.mark.parametrize("box,sigma", [(None, 8.0), ([280, 90, 60, 40], 6.0)])
@pytest.mark.parametrize("flip", [False, True])
def test_predict_finds_a_blob_within_the_decoding_resolution(box, sigma, flip):
    centre = np.array([311.4, 107.8])
    image = _blob_image(480, 320, centre, sigma)
    joint_set = load_joint_set("ap10k")
    keypoints, scores = predict(BrightnessOracle(17), image, box, flip=flip, joint_set=joint_set, input_size=256)
    assert keypoints.shape == (17, 2) and scores.shape == (17,)
    _, scale, _ = box_centre_scale(np.asarray(box or whole_image_box(image))[None], np.array([[480, 320]]))
    cell = 200.0 * float(scale[0]) / 64  # image px per heatmap cell
    # Quarter-cell decoding; the flip test's one-column shift adds up to 1/8 cell more.
    tolerance = (0.375 if flip else 0.25) * cell + 0.05
    assert np.abs(keypoints - centre).max() <= tolerance
    assert (scores > 0).all()


def test_predict_with_flip_gives_the_keypoints_the_evaluation_scores():
    """The module's promise: the same box, flip test on -> the evaluation's keypoints and scores."""
    from freenet.data.dataset import read_image
    from freenet.evaluation import EvalSettings, Evaluator
    ann_file = REPO.parent / "shared" / "data" / "mmpose_samples" / "ap10k" / "test_ap10k.json"
    if not ann_file.is_file():
        pytest.skip(f"shared test data not found at {ann_file}")
    torch.manual_seed(0)
    model = PoseHighResolutionNet(17, width=8).eval()
    joint_set = load_joint_set("ap10k")
    evaluator = Evaluator(ann_file, ann_file.parent, joint_set, EvalSettings(input_size=128, heatmap_size=32))
    expected, maxvals, _ = evaluator.predict(model, "cpu", fold=False)
    boxes = {a["id"]: a["bbox"] for a in json.loads(ann_file.read_text())["annotations"]}
    for i, (path, ann_id) in enumerate(zip(evaluator.records.image_paths, evaluator.records.ann_ids.tolist())):
        keypoints, scores = predict(model, read_image(path), boxes[ann_id], flip=True, joint_set=joint_set,
                                    input_size=128)
        np.testing.assert_allclose(keypoints, expected[i], atol=1e-4)
        np.testing.assert_allclose(scores, maxvals[i], atol=1e-6)


def test_whole_image_box_keeps_the_aspect_ratio():
    image = np.zeros((300, 500, 3), np.uint8)
    centre, scale, usable = box_centre_scale(whole_image_box(image)[None], np.array([[500, 300]]))
    np.testing.assert_allclose(centre[0], [249.5, 149.5])
    np.testing.assert_allclose(scale[0], 499 / 200 * 1.25, rtol=1e-6)  # square on the longer side
    assert usable[0]


def test_predict_rejects_flip_without_joint_set_and_boxes_off_the_image():
    model = BrightnessOracle(17)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="flip test needs the joint set"):
        predict(model, image, flip=True)
    with pytest.raises(ValueError, match="does not overlap"):
        predict(model, image, box=[100, 100, 10, 10])
    with pytest.raises(ValueError, match="under 2 pixels wide or high"):
        predict(model, image, box=[10, 10, 0, 0])
    with pytest.raises(ValueError, match="under 2 pixels wide or high"):
        predict(model, image, box=[10, 10, 1, 20])  # x2 = x1 + max(0, w - 1) = x1


def _save(path, num_joints=17, width=8, key="state_dict"):
    torch.manual_seed(0)
    model = PoseHighResolutionNet(num_joints=num_joints, width=width)
    torch.save({key: model.state_dict()} if key else model.state_dict(), path)
    return model


@pytest.mark.parametrize("num_joints,expected", [(17, "ap10k"), (21, "union21"), (24, "union24")])
def test_load_pose_model_reads_joints_and_width_off_the_checkpoint(tmp_path, num_joints, expected):
    saved = _save(tmp_path / "m.pth", num_joints, width=8, key="teacher_model")
    model, joint_set, where = load_pose_model(tmp_path / "m.pth", fold=False)
    assert joint_set.name == expected and where == "teacher_model"
    assert model.width == 8 and model.num_joints == num_joints and not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.state_dict().items())
    # By default the BatchNorm is folded into the convolutions: no BN layer, the same heatmaps.
    folded, _, _ = load_pose_model(tmp_path / "m.pth")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) and not folded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = saved.eval()(x)
        assert torch.allclose(folded(x), ref, rtol=0, atol=1e-5 * ref.abs().max())


def test_load_pose_model_takes_the_joint_set_a_training_checkpoint_records(tmp_path):
    """A custom joint set (here a renamed copy of ap10k) is found through the stored config; when its
    file has gone, the bundled set of that size stands in; with no set of that size, the error names it."""
    from yacs.config import CfgNode

    custom = json.loads(Path(load_joint_set("ap10k").path).read_text())
    custom["name"] = "my_animals"
    (tmp_path / "my_animals.json").write_text(json.dumps(custom))
    cfg = CfgNode({"DATASET": CfgNode({"JOINTS": str(tmp_path / "my_animals.json")}),
                   "MODEL": CfgNode({"IMAGE_SIZE": [64, 64]})})
    model = PoseHighResolutionNet(num_joints=17, width=8)
    torch.save({"teacher_model": model.state_dict(), "config": cfg.dump()}, tmp_path / "checkpoint.pth")
    assert load_pose_model(tmp_path / "checkpoint.pth")[1].name == "my_animals"
    assert load_pose_model(tmp_path / "checkpoint.pth", joints="ap10k")[1].name == "ap10k"   # --joints wins
    cfg.DATASET.JOINTS = str(tmp_path / "moved.json")
    torch.save({"teacher_model": model.state_dict(), "config": cfg.dump()}, tmp_path / "checkpoint.pth")
    assert load_pose_model(tmp_path / "checkpoint.pth")[1].name == "ap10k"

    torch.save({"state_dict": PoseHighResolutionNet(num_joints=5, width=8).state_dict(), "config": cfg.dump()},
               tmp_path / "five.pth")
    with pytest.raises(CheckpointError, match=r"predicts 5 joints .*the run's joint set .*moved\.json does not load"):
        load_pose_model(tmp_path / "five.pth")


def test_load_pose_model_wrong_joint_set_is_a_one_line_error(tmp_path):
    _save(tmp_path / "m.pth", 21, key="")
    message = r"m\.pth: checkpoint predicts 21 joints but joint set 'ap10k' has 17"
    with pytest.raises(CheckpointError, match=message) as e:
        load_pose_model(tmp_path / "m.pth", joints="ap10k")
    assert "\n" not in str(e.value)
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an HRNet pose checkpoint"):
        load_pose_model(tmp_path / "other.pth")


def test_draw_pose_scales_markers_with_confidence_and_skips_weak_joints():
    joint_set = load_joint_set("ap10k")
    image = np.zeros((400, 400, 3), np.uint8)
    keypoints = np.tile([[-50.0, -50.0]], (17, 1))  # off the picture unless placed below
    keypoints[2] = [100, 100]    # nose (face)
    keypoints[3] = [300, 100]    # neck (exclusive)
    keypoints[4] = [300, 300]    # tail (back)
    scores = np.zeros(17)
    scores[[2, 3, 4]] = [1.0, 0.3, 0.45]  # neck below the threshold: no limb at all
    out = draw_pose(image, keypoints, scores, joint_set, threshold=0.4)
    assert image.sum() == 0  # the input is not modified
    assert tuple(out[100, 100]) == PART_COLOURS["face"]
    assert tuple(out[300, 300]) == PART_COLOURS["back"]
    assert out[90:111, 290:311].sum() == 0  # neck not drawn
    assert out[100, 200].sum() == 0 and out[200, 300].sum() == 0  # nor the nose-neck, neck-tail limbs

    def marker_area(x, y, colour):
        patch = out[y - 12:y + 13, x - 12:x + 13].reshape(-1, 3)
        return int((np.abs(patch.astype(int) - colour).sum(1) < 30).sum())

    assert marker_area(100, 100, PART_COLOURS["face"]) > 2 * marker_area(300, 300, PART_COLOURS["back"]) > 0

    scores[3] = 0.5
    out = draw_pose(image, keypoints, scores, joint_set, threshold=0.4)
    assert out[100, 200].any() and out[200, 300].any()  # [2, 3] and [3, 4] are skeleton limbs


def test_pose_to_dict_names_every_joint():
    joint_set = load_joint_set("union21")
    d = pose_to_dict(np.arange(42.0).reshape(21, 2), np.linspace(0, 1, 21), joint_set, 0.5, "a.jpg", [1, 2, 3, 4])
    assert d["num_joints"] == 21 and [k["name"] for k in d["keypoints"]] == list(joint_set.joints)
    assert d["keypoints"][3] == {"name": "neck", "x": 6.0, "y": 7.0, "score": pytest.approx(0.15), "visible": False}
    json.dumps(d)


def _example_module():
    spec = importlib.util.spec_from_file_location("inference_example", REPO / "inference_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _example_main():
    return _example_module().main


@needs_image
@pytest.mark.parametrize("extra", [[], ["--flip", "--box", "200", "50", "650", "650"]])
def test_inference_example_writes_png_and_json(tmp_path, extra, capsys):
    _save(tmp_path / "w8.pth", 17, key="student_model")
    out, js = tmp_path / "out.png", tmp_path / "out.json"
    code = _example_main()(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--out", str(out),
                            "--json", str(js), "--device", "cpu", "--threshold", "0.0"] + extra)
    assert code == 0
    out_lines = capsys.readouterr().out
    assert f"weights: {tmp_path / 'w8.pth'}: the student (adaptation network) of a FreeNet checkpoint\n" in out_lines
    assert (f"joint set ap10k, input 256 px (the default: neither the checkpoint nor {tmp_path / 'config.yaml'} "
            "records a training size; --size sets it)\n") in out_lines
    picture = cv2.imread(str(out))
    assert picture.shape == cv2.imread(str(TEST_JPG)).shape  # drawn on the original image
    result = json.loads(js.read_text())
    assert result["joint_set"] == "ap10k" and len(result["keypoints"]) == 17
    assert all(np.isfinite([k["x"], k["y"], k["score"]]).all() for k in result["keypoints"])


@needs_image
def test_inference_example_wrong_joints_is_a_one_line_error(tmp_path, capsys):
    _save(tmp_path / "w8.pth", 21, key="")
    code = _example_main()(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--joints", "ap10k",
                            "--out", str(tmp_path / "o.png")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "21 joints" in err
    assert not (tmp_path / "o.png").exists()


def _run_folder(tmp_path, size=64):
    """A training run's folder: best-oks.pth (the student's state_dict alone) beside config.yaml, whose
    joint set is a renamed copy of ap10k (so where the set came from shows in its name)."""
    from yacs.config import CfgNode

    custom = json.loads(Path(load_joint_set("ap10k").path).read_text())
    custom["name"] = "my_animals"
    (tmp_path / "my_animals.json").write_text(json.dumps(custom))
    run = tmp_path / "run"
    run.mkdir()
    _save(run / "best-oks.pth", 17, key="")
    cfg = CfgNode({"DATASET": CfgNode({"JOINTS": str(tmp_path / "my_animals.json")}),
                   "MODEL": CfgNode({"IMAGE_SIZE": [size, size], "WIDTH": 8})})
    (run / "config.yaml").write_text(cfg.dump())
    image = np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    return run, image


def test_inference_example_takes_size_and_joint_set_from_the_runs_config_yaml(tmp_path, capsys):
    """best-oks.pth holds weights only: the run's config.yaml beside it gives the input size and joint
    set (a 64-px model run at 256 px predicts nonsense); --size and --joints win over it."""
    run, image = _run_folder(tmp_path)
    args = ["--image", str(tmp_path / "a.png"), "--weights", str(run / "best-oks.pth"),
            "--out", str(tmp_path / "o.png"), "--json", str(tmp_path / "k.json")]
    assert _example_main()(args) == 0
    out = capsys.readouterr().out
    assert f"weights: {run / 'best-oks.pth'}: a state_dict (the weights alone)\n" in out
    assert f"joint set my_animals, input 64 px (from {run / 'config.yaml'})\n" in out
    model, _, _ = load_pose_model(run / "best-oks.pth", joints="ap10k")
    expected, _ = predict(model, image, input_size=64)
    got = json.loads((tmp_path / "k.json").read_text())
    assert got["joint_set"] == "my_animals"
    np.testing.assert_allclose([[k["x"], k["y"]] for k in got["keypoints"]], expected, atol=1e-4)

    assert _example_main()(args + ["--size", "128", "--joints", "ap10k"]) == 0
    assert "joint set ap10k, input 128 px\n" in capsys.readouterr().out
    expected, _ = predict(model, image, input_size=128)
    got = json.loads((tmp_path / "k.json").read_text())
    np.testing.assert_allclose([[k["x"], k["y"]] for k in got["keypoints"]], expected, atol=1e-4)


def test_a_config_yaml_that_does_not_parse_is_passed_over_with_a_warning(tmp_path, caplog):
    run, _ = _run_folder(tmp_path)
    checkpoint = torch.load(run / "best-oks.pth")
    record = training_record(checkpoint, run / "best-oks.pth")
    assert (record.input_size, record.joints, record.source) == (64, str(tmp_path / "my_animals.json"),
                                                                 str(run / "config.yaml"))
    assert training_record(checkpoint).input_size is None   # no file named: nothing beside it to read
    (run / "config.yaml").write_text("MODEL: [64\n")
    record = training_record(checkpoint, run / "best-oks.pth")
    assert record.input_size is None and record.joints is None
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"{run / 'config.yaml'}: not read"]
    assert load_pose_model(run / "best-oks.pth")[1].name == "ap10k"   # the bundled set of 17 joints


def test_describe_weights_says_which_network_and_how_to_pick_the_other():
    both = {"teacher_model": {}, "student_model": {}}
    assert describe_weights(both, "teacher_model", "", "--key") == (
        "the teacher (base network) of a FreeNet checkpoint; --key student_model picks the student")
    assert describe_weights(both, "teacher_model", "teacher_model", "--key") == (
        "the teacher (base network) of a FreeNet checkpoint")                     # asked for: no advice
    assert describe_weights({"teacher_model": {}}, "teacher_model", "", "--key") == (
        "the teacher (base network) of a FreeNet checkpoint")                     # no student to pick
    assert describe_weights(both, "student_model", "student_model", "TEST.MODEL_KEY") == (
        "the student (adaptation network) of a FreeNet checkpoint")
    assert describe_weights({}, "(raw dict)", "", "--key") == "a state_dict (the weights alone)"
    assert describe_weights({}, "state_dict", "", "--key") == "the weights under 'state_dict'"


def test_inference_example_says_a_freenet_checkpoint_gives_the_teacher(tmp_path, capsys):
    model = PoseHighResolutionNet(num_joints=17, width=8)
    torch.save({"teacher_model": model.state_dict(), "student_model": model.state_dict()}, tmp_path / "checkpoint.pth")
    cv2.imwrite(str(tmp_path / "a.png"), np.full((48, 64, 3), 128, np.uint8))
    assert _example_main()(["--image", str(tmp_path / "a.png"), "--weights", str(tmp_path / "checkpoint.pth"),
                            "--size", "64", "--out", str(tmp_path / "o.png")]) == 0
    assert (f"weights: {tmp_path / 'checkpoint.pth'}: the teacher (base network) of a FreeNet checkpoint; "
            "--key student_model picks the student\n") in capsys.readouterr().out


def test_inference_example_help_says_what_visible_means(capsys):
    with pytest.raises(SystemExit):
        _example_main()(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert '"visible" says whether a joint does (false: scored below it' in help_text


def test_inference_example_missing_image_is_one_line(tmp_path, capfd):
    _save(tmp_path / "w8.pth", 17)
    code = _example_main()(["--image", str(tmp_path / "nope.jpg"), "--weights", str(tmp_path / "w8.pth"),
                            "--out", str(tmp_path / "o.png")])
    assert code == 2
    err = capfd.readouterr().err.strip().splitlines()          # OpenCV's own warning would come first
    assert err == [f"error: {tmp_path / 'nope.jpg'}: image file not found"]


def test_a_key_missing_from_a_raw_state_dict_says_to_leave_it_out(tmp_path):
    """A raw state_dict has a key per tensor (hundreds for HRNet): the message says what the file is instead."""
    _save(tmp_path / "best-oks.pth", 17, key="")
    with pytest.raises(CheckpointError) as e:
        load_pose_model(tmp_path / "best-oks.pth", key="student_model")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'best-oks.pth'}: no key 'student_model' in the checkpoint")
    assert "weights alone" in message and "leave out the key" in message
    assert len(message) < 300 and "\n" not in message


def test_a_key_missing_from_a_checkpoint_lists_ten_of_its_other_keys():
    checkpoint = {f"k{i:02d}": i for i in range(15)} | {"loose_tensor": torch.zeros(3)}
    with pytest.raises(CheckpointError) as e:
        extract_state_dict(checkpoint, "model", "c.pth")
    assert str(e.value) == ("c.pth: no key 'model' in the checkpoint "
                            "(it has: k00, k01, k02, k03, k04, k05, k06, k07, k08, k09, ... and 5 more)")


def test_an_unparsable_device_is_a_device_error_naming_it():
    with pytest.raises(DeviceError, match=r"^unknown device 'gpu' \(use cpu, cuda, cuda:N or auto\)$"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match=r"^device 'mps': this project runs on the CPU or CUDA \(use cpu, cuda"):
        resolve_device("mps")   # torch parses it, and a CPU build fails only when a tensor moves there
    assert resolve_device("cpu") == torch.device("cpu")


def test_inference_example_device_typo_is_one_line(tmp_path, capsys):
    _save(tmp_path / "w8.pth", 17)
    code = _example_main()(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--device", "gpu",
                            "--out", str(tmp_path / "o.png")])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == ["error: unknown device 'gpu' (use cpu, cuda, cuda:N or auto)"]


@pytest.mark.parametrize("size", ["200", "-64", "0"])
def test_inference_example_size_must_be_a_positive_multiple_of_32(tmp_path, size, capsys):
    _save(tmp_path / "w8.pth", 17)
    with pytest.raises(SystemExit) as e:
        _example_main()(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--size", size,
                         "--out", str(tmp_path / "o.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"argument --size: must be a positive multiple of 32 (e.g. 64, 256), got {size}" in err[0]
    assert not (tmp_path / "o.png").exists()


@needs_image
def test_inference_example_refuses_an_out_without_an_image_extension_before_any_work(tmp_path, capsys):
    _save(tmp_path / "w8.pth", 17)
    out = tmp_path / "new" / "noext"
    code = _example_main()(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--size", "64",
                            "--out", str(out), "--json", str(tmp_path / "new" / "k.json")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {out}: --out needs an image extension OpenCV can write "
                                         f"(e.g. .png, .jpg)"]
    assert captured.out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["w8.pth"]  # no folder made


@needs_image
def test_inference_example_creates_the_output_folders(tmp_path):
    _save(tmp_path / "w8.pth", 17)
    out, js = tmp_path / "pictures" / "a" / "o.png", tmp_path / "keypoints" / "k.json"
    code = _example_main()(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--size", "64",
                            "--out", str(out), "--json", str(js)])
    assert code == 0
    assert cv2.imread(str(out)).shape == cv2.imread(str(TEST_JPG)).shape
    assert len(json.loads(js.read_text())["keypoints"]) == 17


@needs_image
def test_inference_example_failed_write_is_one_line_and_keeps_the_prediction(tmp_path, capsys, monkeypatch):
    module = _example_module()

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(module, "write_json_atomic", full_disk)
    _save(tmp_path / "w8.pth", 17)
    out, js = tmp_path / "o.png", tmp_path / "k.json"
    code = module.main(["--image", str(TEST_JPG), "--weights", str(tmp_path / "w8.pth"), "--size", "64",
                        "--out", str(out), "--json", str(js)])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {js}: cannot write it (No space left on device)"]
    assert len([line for line in captured.out.splitlines() if " score " in line]) == 17   # printed before
    assert out.is_file() and not js.exists()
