"""Base-network training (SPEC §12) and the FreeNet networks' initialisation (SPEC §10)."""
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL
from freenet.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from freenet.errors import DataError
from freenet.inference import load_pose_model, training_record
from freenet.models import PoseHighResolutionNet
from freenet.optim import OptimizedModel
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
    # The run's checkpoint tells inference the joint set and the 64-px input it was trained at.
    checkpoint = load_checkpoint(run_dir / "checkpoint.pth")
    assert training_record(checkpoint).input_size == 64
    assert load_pose_model(run_dir / "checkpoint.pth", checkpoint=checkpoint)[1].name == "ap10k"
    assert checkpoint["optimizer"]["param_groups"][0]["fused"] is True     # Adam, one kernel (SPEC §12)
    # and the FreeNet script picks it up by its default name for --level 0 as the teacher (SPEC §10).
    # The student's init file is a backbone without the pose head, as ImageNet weights are.
    torch.manual_seed(5)
    backbone = {k: v for k, v in PoseHighResolutionNet(17, width=8).state_dict().items()
                if not k.startswith("final_layer.")}
    torch.save(backbone, weights / "pretrained_ori.pth")
    # One step: the warm-up's LR multiplier is 0 at step 0 (§8), so AdamW leaves every parameter as it is.
    code = run("train_split_ap10k", ["--level", "0", "--data-root", str(synthetic_root),
                                     "--output-dir", str(tmp_path / "fn"), "--pretrained-model-path", str(weights),
                                     "--total-steps", "1", "--eval-step", "1", "--workers", "0", "--batch-size", "2",
                                     "--mu", "1", *TINY_MODEL])
    assert code == 0
    run_dir = next((tmp_path / "fn").iterdir())
    freenet = torch.load(run_dir / "checkpoint.pth", weights_only=False)
    parameters = [name for name, _ in model.named_parameters()]
    assert all(torch.equal(freenet["teacher_model"][n], best[n]) for n in parameters)
    student = freenet["student_model"]
    assert all(torch.equal(student[n], backbone[n]) for n in parameters if n in backbone)
    # The head the file lacks keeps PyTorch's default init, as in the original code (which never applies the
    # pose init): uniform within 1/sqrt(fan_in) = 1/sqrt(8), std 0.204; the pose init's std is 0.001.
    head = student["final_layer.weight"]
    assert head.abs().max() <= 8 ** -0.5 and 0.15 < head.std() < 0.26
    assert student["final_layer.bias"].abs().max() <= 8 ** -0.5 and student["final_layer.bias"].std() > 0.1
    # best-oks.pth (§9) is the student's state_dict, not the teacher's
    best_oks = torch.load(run_dir / "best-oks.pth", weights_only=True)
    assert best_oks.keys() == freenet["student_model"].keys()
    assert all(torch.equal(t, freenet["student_model"][n]) for n, t in best_oks.items())


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
    # a file the user named (--student-weights) must exist: a typo would train from random weights
    with pytest.raises(CheckpointError, match="absent.pth: --student-weights not found"):
        load_student_init(student, tmp_path / "absent.pth", required=True)
    # a file none of whose tensors the network has would silently leave it at random weights
    torch.save({"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: none of its 2 tensors is a tensor of the network \(e.g. "
                                              r"encoder.weight against conv1.weight\): not HRNet weights"):
        load_student_init(student, tmp_path / "other.pth")


def test_wrong_teacher_file_is_a_one_line_error(synthetic_root, tmp_path, capsys):
    from freenet.training import run

    weights = tmp_path / "w"
    weights.mkdir()
    torch.save(PoseHighResolutionNet(21, width=8).state_dict(), weights / "ap_10k_split_level_0.pth")
    code = run("train_split_ap10k", ["--level", "0", "--data-root", str(synthetic_root), "--output-dir", str(tmp_path),
                          "--pretrained-model-path", str(weights), "--total-steps", "2", "--workers", "0",
                          *TINY_MODEL])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicts 21 joints but the model has 17" in err[0]
    code = run("train_split_ap10k", ["--level", "0", "--data-root", str(synthetic_root), "--output-dir", str(tmp_path),
                          "--pretrained-model-path", str(tmp_path / "nowhere"), "--total-steps", "2",
                          "--workers", "0", *TINY_MODEL])
    assert code == 2
    err = capsys.readouterr().err
    assert "base-network (teacher) weights not found" in err and "train_supervised.py" in err
    assert "download" not in err                       # the authors released no split-level base network
    code = run("train_synthetic_ap10k", ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path),
                                         "--pretrained-model-path", str(tmp_path / "nowhere"), "--total-steps", "2",
                                         "--workers", "0", *TINY_MODEL])
    assert code == 2
    assert "download the authors' 25_5_imgs_SL_hrnet_pretrained.pth (renamed pretrained_25_5.pth)" in \
        capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda_is_a_one_line_error(synthetic_root, tmp_path, capsys):
    from freenet.training import run

    code = run("train_split_ap10k", ["--level", "0", "--device", "cuda", "--data-root", str(synthetic_root),
                                     "--output-dir", str(tmp_path), "--workers", "0", *TINY_MODEL])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]


@pytest.mark.slow
def test_interrupt_inside_an_epoch_or_stop_epoch_resumes_where_it_stopped(synthetic_root, tmp_path,
                                                                          monkeypatch, capsys):
    import freenet.supervised as sup

    def args(out, *extra):
        return ["--cfg", "experiments/ap10k/freenet_split.yaml", "--level", "0", "--data-root", str(synthetic_root),
                "--output-dir", str(out), "--epochs", "2", "--batch-size", "4", "--workers", "0", *extra, *TINY_MODEL]

    assert supervised_main(args(tmp_path / "straight")) == 0

    class CtrlC(sup.Interrupt):  # Ctrl-C arrives during the third iteration of the first epoch
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def stop_now(self):
            self.requested = len(calls) == stop_after[0]
            return super().stop_now()

    calls, stop_after = [], [3]
    loss = sup.weighted_heatmap_mse

    def counting_loss(*a):
        calls.append(1)
        return loss(*a)

    monkeypatch.setattr(sup, "Interrupt", CtrlC)
    monkeypatch.setattr(sup, "weighted_heatmap_mse", counting_loss)
    assert supervised_main(args(tmp_path / "halves")) == 0
    monkeypatch.undo()
    run = next((tmp_path / "halves").iterdir())
    stopped = torch.load(run / "checkpoint.pth", weights_only=False)
    assert (stopped["epoch"], stopped["iteration"]) == (0, 3)
    assert not (run / "metrics.jsonl").exists()                 # an unfinished epoch is not evaluated
    assert supervised_main(["--resume", str(run / "checkpoint.pth"), "--workers", "0"]) == 0

    a = torch.load(next((tmp_path / "straight").iterdir()) / "checkpoint.pth", weights_only=False)
    b = torch.load(run / "checkpoint.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] and a["scheduler"] == b["scheduler"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    lines = [(d / "metrics.jsonl").read_text() for d in (next((tmp_path / "straight").iterdir()), run)]
    assert lines[0] == lines[1]                                  # same losses and scores per epoch

    # Ctrl-C during the last iteration of the first epoch: that epoch is evaluated once, and the run
    # stops before the second epoch's first iteration
    calls.clear()
    stop_after[0] = a["iteration"] // 2
    monkeypatch.setattr(sup, "Interrupt", CtrlC)
    monkeypatch.setattr(sup, "weighted_heatmap_mse", counting_loss)
    assert supervised_main(args(tmp_path / "boundary")) == 0
    monkeypatch.undo()
    edge = next((tmp_path / "boundary").iterdir())
    assert torch.load(edge / "checkpoint.pth", weights_only=False)["iteration"] == a["iteration"] // 2
    assert (edge / "metrics.jsonl").read_text() == lines[0].splitlines(keepends=True)[0]

    # --stop-epoch: the same run cut after its first epoch (job time limits), then resumed
    capsys.readouterr()
    assert supervised_main(args(tmp_path / "epochs", "--stop-epoch", "1")) == 0
    cut = next((tmp_path / "epochs").iterdir())
    stopped = torch.load(cut / "checkpoint.pth", weights_only=False)
    assert (stopped["epoch"], stopped["iteration"]) == (0, a["iteration"] // 2)
    assert f"Stopped after epoch 1 (--stop-epoch 1). Resume with --resume {cut / 'checkpoint.pth'}" in \
        capsys.readouterr().out
    assert supervised_main(["--resume", str(cut / "checkpoint.pth"), "--workers", "0"]) == 0   # not stopped again
    c = torch.load(cut / "checkpoint.pth", weights_only=False)
    assert c["iteration"] == a["iteration"] and all(torch.equal(t, c["model"][n]) for n, t in a["model"].items())
    assert (cut / "metrics.jsonl").read_text() == lines[0]


def test_resume_from_another_kind_of_checkpoint_is_one_line(synthetic_root, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    torch.save({"step": 3, "teacher_model": {}}, tmp_path / "run" / "checkpoint.pth")
    code = supervised_main(["--cfg", "experiments/ap10k/freenet_split.yaml", "--level", "0",
                            "--data-root", str(synthetic_root), "--resume", str(tmp_path / "run" / "checkpoint.pth"),
                            "--workers", "0", *TINY_MODEL])
    assert code == 2
    assert "checkpoint.pth: not a train_supervised.py checkpoint: no 'model'" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_amp_fp16_switched_on_or_off(synthetic_root, tmp_path, monkeypatch):
    """A run saved with a disabled GradScaler (CPU, --no-amp, bf16) resumes with fp16 AMP on (CUDA's
    default) and the reverse. The CPU GradScaler stands in for CUDA's (fp32 compute; only the scaler)."""
    real = torch.amp.GradScaler

    def scaler(enabled):
        monkeypatch.setattr(torch.amp, "GradScaler", lambda device, **_: real(device, enabled=enabled))

    def resume(stop_epoch):
        assert supervised_main(["--resume", str(path), "--workers", "0", "--stop-epoch", str(stop_epoch)]) == 0
        return torch.load(path, weights_only=False)

    assert supervised_main(["--cfg", "experiments/ap10k/freenet_split.yaml", "--level", "0", "--data-root",
                            str(synthetic_root), "--output-dir", str(tmp_path), "--epochs", "4", "--stop-epoch", "1",
                            "--batch-size", "4", "--eval-every", "9", "--workers", "0", *TINY_MODEL]) == 0
    path = next(tmp_path.iterdir()) / "checkpoint.pth"
    first = torch.load(path, weights_only=False)
    assert "scaler" not in first                      # a disabled scaler's state ({}) is not saved
    scaler(enabled=True)
    second = resume(stop_epoch=2)
    assert second["iteration"] == 2 * first["iteration"]
    # a fresh scale, then one growth step per iteration of the resumed epoch (no inf gradients here)
    assert second["scaler"]["scale"] == 2.0 ** 16
    assert second["scaler"]["_growth_tracker"] == first["iteration"]
    scaler(enabled=False)                              # the saved scaler state is ignored
    third = resume(stop_epoch=3)
    assert third["iteration"] == 3 * first["iteration"] and "scaler" not in third


def _optimized(scaler_enabled: bool) -> OptimizedModel:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return OptimizedModel(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.5),
                          torch.amp.GradScaler("cpu", enabled=scaler_enabled))


@pytest.mark.parametrize("prefix", ["", "student"])
def test_scaler_state_moves_only_between_enabled_scalers(prefix):
    key = f"{prefix}_scaler" if prefix else "scaler"
    off, on = _optimized(False), _optimized(True)
    assert key not in off.state_dict(prefix)
    on.load_state_dict(off.state_dict(prefix), prefix)
    on.load_state_dict({**off.state_dict(prefix), key: {}}, prefix)   # as older train_supervised.py files hold
    assert on.scaler.get_scale() == 2.0 ** 16
    on.scaler.load_state_dict({**on.scaler.state_dict(), "scale": 128.0})   # as after some overflows
    saved = on.state_dict(prefix)
    assert saved[key]["scale"] == 128.0
    off.load_state_dict(saved, prefix)                                 # ignored, no error
    assert not off.scaler.is_enabled()
    again = _optimized(True)
    again.load_state_dict(saved, prefix)
    assert again.scaler.get_scale() == 128.0


def supervised_args(root, out, *extra) -> list[str]:
    return ["--cfg", "experiments/ap10k/freenet_split.yaml", "--level", "0", "--data-root", str(root),
            "--output-dir", str(out), "--batch-size", "4", "--workers", "0", *extra, *TINY_MODEL]


def only_run_dir(out: Path) -> Path:
    runs = list(out.iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def done_summary(text: str) -> dict:
    return json.loads(text.split("done: ")[-1].splitlines()[0])


@pytest.mark.slow
def test_the_checkpoint_comes_before_the_evaluation_and_a_resume_does_the_one_owed(synthetic_root, tmp_path,
                                                                                  monkeypatch, caplog):
    """An evaluation that fails (an unreadable val image) loses no training: checkpoint.pth already
    holds the epoch, and --resume evaluates it first; one killed after logging its line (before
    best.json) logs it once. The stand-in evaluator scores (AP, PCK) per epoch of checkpoint.pth."""
    import freenet.supervised as sup

    scores = {0: (0.1, 0.8), 1: (0.9, 0.2)}
    fail = {"evaluation of": None, "best.pth": False}

    def build_evaluator(cfg, joint_set, device):
        def evaluate(model):
            epoch = torch.load(only_run_dir(out) / "checkpoint.pth", weights_only=False)["epoch"]
            if epoch == fail["evaluation of"]:
                fail["evaluation of"] = None
                raise DataError("val/000000000001.jpg", "cannot read image")
            return dict(zip(("AP", "PCK"), scores[epoch]))
        return evaluate

    save = sup.atomic_save

    def atomic_save(obj, path):
        if Path(path).name == "best.pth" and fail["best.pth"]:
            fail["best.pth"] = False
            raise KeyboardInterrupt     # killed between the metrics.jsonl line and best.json
        save(obj, path)

    monkeypatch.setattr(sup, "build_evaluator", build_evaluator)
    monkeypatch.setattr(sup, "atomic_save", atomic_save)
    out = tmp_path / "straight"
    with caplog.at_level(logging.INFO, logger="freenet"):
        assert supervised_main(supervised_args(synthetic_root, out, "--epochs", "2")) == 0
    # best.pth is picked by AP: the summary names the PCK it has, not the highest (0.8 at epoch 1)
    assert done_summary(caplog.text) == {"best_ap": 0.9, "pck_at_best_ap": 0.2, "best_epoch": 2,
                                         "run_dir": str(only_run_dir(out))}

    out, fail["evaluation of"] = tmp_path / "halves", 1
    assert supervised_main(supervised_args(synthetic_root, out, "--epochs", "2")) == 2
    run = only_run_dir(out)
    done = torch.load(only_run_dir(tmp_path / "straight") / "checkpoint.pth", weights_only=False)["iteration"]
    assert torch.load(run / "checkpoint.pth", weights_only=False)["iteration"] == done     # epoch 2 kept
    assert json.loads((run / "best.json").read_text())["evaluated_epoch"] == 0
    fail["best.pth"] = True
    with pytest.raises(KeyboardInterrupt):          # the owed evaluation, killed after its log line
        supervised_main(["--resume", str(run / "checkpoint.pth"), "--workers", "0"])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    caplog.clear()
    torn = run / ".best.pth.k1ll3d.tmp"                      # what a process killed inside a save leaves
    torn.write_bytes(b"half")
    with caplog.at_level(logging.INFO, logger="freenet"):    # all epochs trained, one evaluation owed
        assert supervised_main(["--resume", str(run / "checkpoint.pth"), "--workers", "0"]) == 0
    assert "the evaluation after epoch 2 did not finish: evaluating that checkpoint first" in caplog.text
    assert not torn.exists()
    assert done_summary(caplog.text) == {"best_ap": 0.9, "pck_at_best_ap": 0.2, "best_epoch": 2, "run_dir": str(run)}
    straight = only_run_dir(tmp_path / "straight")
    for name in ("metrics.jsonl", "best.json"):        # one line per epoch, the same losses and scores
        assert (straight / name).read_text() == (run / name).read_text(), name
    a, b = (torch.load(d / "best.pth", weights_only=True) for d in (straight, run))
    assert all(torch.equal(v, b[k]) for k, v in a.items())    # epoch 2's weights in both


def test_weights_that_are_no_longer_numbers_stop_the_run_before_saving_that_epoch(synthetic_root, tmp_path,
                                                                                 monkeypatch, capsys):
    """A NaN loss makes NaN gradients, and AdamW NaN weights (in fp32: no AMP scaler skips them)."""
    import freenet.supervised as sup

    loss = sup.weighted_heatmap_mse
    with monkeypatch.context() as m:                  # diverged from the start: nothing written
        m.setattr(sup, "weighted_heatmap_mse", lambda *a: loss(*a) * float("nan"))
        assert supervised_main(supervised_args(synthetic_root, tmp_path / "a", "--epochs", "2")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "the weights are not finite numbers after epoch 1" in last_line(err)
    assert "no checkpoint was saved" in last_line(err)
    assert sorted(p.name for p in only_run_dir(tmp_path / "a").iterdir()) == \
        ["args.json", "config.yaml", "git_commit.txt", "tensorboard"]

    assert supervised_main(supervised_args(synthetic_root, tmp_path / "b", "--epochs", "2", "--stop-epoch", "1")) == 0
    run = only_run_dir(tmp_path / "b")
    kept = {name: (run / name).read_bytes() for name in ("checkpoint.pth", "best.pth", "metrics.jsonl", "best.json")}
    iteration = torch.load(run / "checkpoint.pth", weights_only=False)["iteration"]
    capsys.readouterr()
    with monkeypatch.context() as m:                  # diverged in the second epoch: the first one's files stay
        m.setattr(sup, "weighted_heatmap_mse", lambda *a: loss(*a) * float("nan"))
        assert supervised_main(["--resume", str(run / "checkpoint.pth"), "--workers", "0"]) == 2
    err = last_line(capsys.readouterr().err)
    assert err.startswith("error: the weights are not finite numbers after epoch 2 (diverged: lower TRAIN.LR)")
    assert f"{run / 'checkpoint.pth'} (iteration {iteration}) holds the last good state" in err
    assert f"Resume with --resume {run / 'checkpoint.pth'}" in err
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_a_save_as_that_cannot_be_written_at_the_end_says_where_the_weights_are(synthetic_root, tmp_path,
                                                                                 monkeypatch, capsys):
    """(A folder that cannot be written at the start is refused by the flag: test_resume_args.)"""
    import freenet.supervised as sup

    out = tmp_path / "out"

    def full_disk(source, path):                      # the folder was writable at start-up, not at the end
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(sup, "copy_atomic", full_disk)
    target = tmp_path / "weights" / "base.pth"
    assert supervised_main(supervised_args(synthetic_root, out, "--epochs", "1", "--save-as", str(target))) == 2
    run = only_run_dir(out)
    assert last_line(capsys.readouterr().err) == (f"error: --save-as {target}: cannot copy the best weights there "
                                                  f"(No space left on device); they are in {run / 'best.pth'}")
    assert load_model_weights(PoseHighResolutionNet(17, width=8), run / "best.pth") == "(raw dict)"


def test_a_bad_image_read_in_a_loader_worker_is_one_line(synthetic_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    bad = sorted((root / "ap_10k" / "data").glob("*.jpg"))
    for image in bad:
        image.write_bytes(b"\xff\xd8 truncated")
    args = supervised_args(root, tmp_path / "out", "--epochs", "1")
    args[args.index("--workers") + 1] = "2"
    assert supervised_main(args) == 2
    err = capsys.readouterr().err
    assert "DataLoader worker" not in err and "Traceback" not in err, err
    assert last_line(err).startswith("error: ") and "cannot read image" in last_line(err)
    assert any(str(image) in last_line(err) for image in bad)


@pytest.mark.parametrize("flag, nhwc", [("--channels-last", True), ("--no-channels-last", False)])
def test_channels_last_reaches_the_training_forward(synthetic_root, tmp_path, monkeypatch, flag, nhwc):
    """--channels-last (the default, as for the FreeNet scripts) trains on NHWC weights and inputs."""
    import freenet.supervised as sup

    seen = []

    def recording_model(cfg, joint_set):
        model = build(cfg, joint_set)

        def record(module, inputs):
            if module.training:   # (the evaluation makes its own NHWC crops)
                seen.append((inputs[0].is_contiguous(memory_format=torch.channels_last),
                             module.conv1.weight.is_contiguous(memory_format=torch.channels_last)))
        model.register_forward_pre_hook(record)
        return model

    build = sup.build_model
    monkeypatch.setattr(sup, "build_model", recording_model)
    assert supervised_main(supervised_args(synthetic_root, tmp_path, "--epochs", "1", flag)) == 0
    assert seen and set(seen) == {(nhwc, nhwc)}
