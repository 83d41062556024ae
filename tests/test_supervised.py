"""Base-network training (SPEC §12) and the FreeNet networks' initialisation (SPEC §10)."""
import logging

import pytest
import torch

from conftest import TINY_MODEL
from freenet.checkpoint import CheckpointError, load_model_weights
from freenet.models import PoseHighResolutionNet
from freenet.supervised import main as supervised_main, multistep
from freenet.training import load_student_init


def test_multistep_schedule_per_iteration():
    # 10 iterations per epoch, x0.1 at epochs 170 and 200
    assert multistep(0, 10, [170, 200], 0.1) == 1.0
    assert multistep(1699, 10, [170, 200], 0.1) == 1.0
    assert multistep(1700, 10, [170, 200], 0.1) == pytest.approx(0.1)
    assert multistep(2000, 10, [170, 200], 0.1) == pytest.approx(0.01)


@pytest.mark.slow
def test_supervised_weights_initialise_the_freenet_teacher(synthetic_root, tmp_path):
    from freenet.training import run

    weights = tmp_path / "pretrained_weights"
    code = supervised_main(["--cfg", "experiments/ap10k/freenet_split.yaml", "--level", "0",
                            "--data-root", str(synthetic_root), "--output-dir", str(tmp_path / "sl"),
                            "--epochs", "2", "--batch-size", "4", "--workers", "0",
                            "--save-as", str(weights / "ap_10k_split_level_0.pth"), *TINY_MODEL])
    assert code == 0
    run_dir = next((tmp_path / "sl").iterdir())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    best = torch.load(weights / "ap_10k_split_level_0.pth", weights_only=True)
    assert torch.equal(best["final_layer.weight"],
                       torch.load(run_dir / "best.pth", weights_only=True)["final_layer.weight"])
    model = PoseHighResolutionNet(17, width=8)
    assert load_model_weights(model, weights / "ap_10k_split_level_0.pth") == "(raw dict)"
    # and the FreeNet script picks it up by its default name for --level 0
    code = run("train_split_ap10k", ["--level", "0", "--data-root", str(synthetic_root), "--output-dir", str(tmp_path / "fn"),
                          "--pretrained-model-path", str(weights), "--total-steps", "2", "--eval-step", "2",
                          "--workers", "0", "--batch-size", "2", "--mu", "1", *TINY_MODEL])
    assert code == 0


def test_student_init_is_non_strict_but_refuses_shape_mismatches(tmp_path, caplog):
    torch.manual_seed(0)
    source = PoseHighResolutionNet(24, width=8)            # another joint count: only the final layer differs
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ori.pth")
    student = PoseHighResolutionNet(17, width=8)
    final_before = student.final_layer.weight.clone()
    with caplog.at_level(logging.INFO, logger="freenet"):
        load_student_init(student, tmp_path / "ori.pth")
    assert torch.equal(student.conv1.weight, source.conv1.weight)
    assert torch.equal(student.final_layer.weight, final_before)        # kept: shape differs
    assert "student init" in caplog.text

    torch.save(PoseHighResolutionNet(17, width=16).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="wide.pth: .* other shapes"):
        load_student_init(student, tmp_path / "wide.pth")

    with caplog.at_level(logging.WARNING, logger="freenet"):
        load_student_init(student, tmp_path / "absent.pth")
    assert "absent.pth not found" in caplog.text


def test_wrong_teacher_file_is_a_one_line_error(synthetic_root, tmp_path, capsys):
    from freenet.training import run

    weights = tmp_path / "w"
    weights.mkdir()
    torch.save(PoseHighResolutionNet(21, width=8).state_dict(), weights / "ap_10k_split_level_0.pth")
    code = run("train_split_ap10k", ["--level", "0", "--data-root", str(synthetic_root), "--output-dir", str(tmp_path),
                          "--pretrained-model-path", str(weights), "--total-steps", "2", "--workers", "0",
                          *TINY_MODEL])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicts 21 joints but the model has 17" in err[0]
    code = run("train_split_ap10k", ["--level", "0", "--data-root", str(synthetic_root), "--output-dir", str(tmp_path),
                          "--pretrained-model-path", str(tmp_path / "nowhere"), "--total-steps", "2",
                          "--workers", "0", *TINY_MODEL])
    assert code == 1
    err = capsys.readouterr().err
    assert "base-network (teacher) weights not found" in err and "train_supervised.py" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_one_line_error(synthetic_root, tmp_path, capsys):
    from freenet.training import run

    code = run("train_split_ap10k", ["--level", "0", "--device", "cuda", "--data-root", str(synthetic_root),
                                     "--output-dir", str(tmp_path), "--workers", "0", *TINY_MODEL])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
