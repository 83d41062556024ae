"""FreeNet training end to end (SPEC §9, §10) on the tiny synthetic data root, width-8 HRNet, CPU."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_MODEL
from freenet.engine import LoopConfig

pytestmark = pytest.mark.slow

SCRIPTS = {
    "train_split_ap10k.py": ["--level", "0"],
    "train_synthetic_ap10k.py": [],
    "finetune.py": [],
    "train_ap10k_animalpose.py": ["--sample-ratio", "0.3"],
    "train_ap10k_animalpose_tigdog.py": ["--sample-ratio", "0.3"],
}


def tiny_args(root, out, steps=4, eval_step=2, workers=0, extra=()):
    return ["--data-root", str(root), "--output-dir", str(out), "--total-steps", str(steps),
            "--eval-step", str(eval_step), "--workers", str(workers), "--batch-size", "2", "--mu", "2",
            "--warmup-steps", "1", "--feedback-steps-start", "2", "--feedback-steps-complete", "4",
            "--pretrained-weights-name", "", "--pretrained-model-path", str(out / "no_weights"),
            *extra, *TINY_MODEL]


def run_script(script, args, **kw):
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kw)


def only_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("ours_")]
    assert len(runs) == 1, runs
    return runs[0]


def test_eval_cadence_of_the_24_joint_script():
    loop = LoopConfig(total_steps=45000, eval_step=150, eval_schedule=[(15000, 600), (30000, 300)])
    evals = [s for s in range(45000) if loop.is_eval_step(s)]
    assert evals[:2] == [599, 1199]
    assert [s for s in evals if 14000 < s < 16000] == [14399, 14999, 15299, 15599, 15899]
    assert [s for s in evals if 29500 < s < 30400] == [29699, 29999, 30149, 30299]
    assert len(evals) == 25 + 50 + 100
    assert loop.first_eval_step(0) == 599 and loop.first_eval_step(600) == 1199
    assert loop.first_eval_step(44999) == 44999
    # a short run under this schedule, or one cut by --stop-step before step 600, never evaluates
    assert LoopConfig(200, 150, [(15000, 600)]).first_eval_step(0) is None
    assert LoopConfig(45000, 150, [(15000, 600)], stop_step=599).first_eval_step(0) is None
    assert LoopConfig(45000, 150, [(15000, 600)], stop_step=600).first_eval_step(0) == 599


@pytest.mark.parametrize("workers, mu, expected", [(0, 7, (0, 0)), (1, 7, (0, 1)), (2, 7, (1, 1)), (8, 0, (8, 0)),
                                                   (16, 7, (2, 14)), (16, 1, (8, 8)), (5, 2, (2, 3))])
def test_loader_processes_follow_the_streams_batches_and_add_up_to_workers(workers, mu, expected):
    from freenet.training import split_workers

    assert split_workers(workers, mu) == expected


def test_a_run_that_never_evaluates_says_so(synthetic_root, tmp_path, caplog):
    from freenet.training import run

    schedule = ["FREENET.EVAL_SCHEDULE", "[[15000,600]]"]     # the 24-joint yaml's first entry, after TINY_MODEL's
    with caplog.at_level("INFO", logger="freenet"):
        assert run("train_ap10k_animalpose_tigdog", ["--sample-ratio", "0.3",
                                                     *tiny_args(synthetic_root, tmp_path, steps=2), *schedule]) == 0
    assert "no evaluation in steps 1..2 (every 2 steps, FREENET.EVAL_SCHEDULE [[15000, 600]])" in caplog.text
    assert "add FREENET.EVAL_SCHEDULE [] to evaluate every --eval-step, or lower --eval-step" in caplog.text
    assert not (only_run_dir(tmp_path) / "best-oks.pth").exists()
    caplog.clear()
    with caplog.at_level("INFO", logger="freenet"):
        assert run("train_ap10k_animalpose_tigdog", ["--sample-ratio", "0.3",
                                                     *tiny_args(synthetic_root, tmp_path / "b", steps=2)]) == 0
    assert "first evaluation after step 2" in caplog.text and "no evaluation" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="freenet"):   # the schedule is already empty: only --eval-step helps
        assert run("train_ap10k_animalpose_tigdog", ["--sample-ratio", "0.3", "--stop-step", "1",
                                                     *tiny_args(synthetic_root, tmp_path / "c", steps=2)]) == 0
    assert "no evaluation in steps 1..1 (every 2 steps, FREENET.EVAL_SCHEDULE []): no best-*.pth or metrics " \
           "will be written; lower --eval-step" in caplog.text


class _Built(Exception):
    """Raised by the stand-in step once train_freenet has built what the step is given."""


def _built_for(script, argv, monkeypatch):
    """What train_freenet hands the step for ``script`` with ``argv``: its teacher and student
    (model, optimiser, scheduler) and hyper-parameters. Nothing trains and no run folder is made."""
    import freenet.training as training
    from freenet.cli import parse_run_args

    built = {}

    def capture(teacher, student, joint_set, hyper, *rest):
        built.update(teacher=teacher, student=student, hyper=hyper)
        raise _Built

    monkeypatch.setattr(training, "FreeNetStep", capture)
    parser = training.build_parser(training.SCRIPTS[script])
    with pytest.raises(_Built):
        training.train_freenet(*parse_run_args(parser, argv))
    return built


def _adamw_group(optimized):
    """The one parameter group of an AdamW over every parameter of the network (SPEC §8)."""
    assert type(optimized.optimizer) is torch.optim.AdamW
    (group,) = optimized.optimizer.param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in optimized.model.parameters()]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    return group


@pytest.mark.parametrize("script", [name.removesuffix(".py") for name in SCRIPTS])
def test_default_flags_reach_the_optimisers_and_the_step(script, synthetic_root, tmp_path, monkeypatch):
    from freenet.freenet_step import FreeNetHyper

    built = _built_for(script, ["--data-root", str(synthetic_root), "--output-dir", str(tmp_path), "--workers", "0",
                                "--pretrained-weights-name", "", *SCRIPTS[script + ".py"], *TINY_MODEL], monkeypatch)
    # SPEC §10 defaults: down-step 9000, feedback 3000 -> 6000 with weight 2; §8: AdamW, teacher lr 1e-5,
    # student 1e-3, weight decay 1e-4, 900 warm-up steps of 120000, no student wait.
    assert built["hyper"] == FreeNetHyper(down_step=9000, feedback_start=3000, feedback_complete=6000,
                                          feedback_weight=2.0)
    for name, lr in (("teacher", 1e-5), ("student", 1e-3)):
        group = _adamw_group(built[name])
        assert group["initial_lr"] == lr and group["weight_decay"] == 1e-4
        multiplier = built[name].scheduler.lr_lambdas[0]
        assert (multiplier(0), multiplier(450), multiplier(900)) == (0.0, 0.5, 1.0)
        assert multiplier(900 + (120000 - 900) // 2) == pytest.approx(0.5, abs=1e-4)


def test_given_flags_reach_the_optimisers_and_the_step(synthetic_root, tmp_path, monkeypatch):
    from freenet.freenet_step import FreeNetHyper

    built = _built_for("train_ap10k_animalpose", [
        "--data-root", str(synthetic_root), "--output-dir", str(tmp_path), "--workers", "0",
        "--pretrained-weights-name", "", "--total-steps", "100", "--warmup-steps", "10", "--student-wait-steps", "20",
        "--teacher_lr", "2e-5", "--student_lr", "3e-3", "--wd", "5e-4", "--down-step", "70",
        "--feedback-steps-start", "30", "--feedback-steps-complete", "60", "--feedback-weight", "1.5",
        *TINY_MODEL, "FREENET.PL_MIN_CONFIDENCE", "0.3", "FREENET.FEEDBACK_BAND", "[0.1, 0.25]"], monkeypatch)
    assert built["hyper"] == FreeNetHyper(down_step=70, feedback_start=30, feedback_complete=60, feedback_weight=1.5,
                                          pl_min_confidence=0.3, feedback_band=(0.1, 0.25))
    teacher, student = _adamw_group(built["teacher"]), _adamw_group(built["student"])
    assert (teacher["initial_lr"], student["initial_lr"]) == (2e-5, 3e-3)
    assert teacher["weight_decay"] == student["weight_decay"] == 5e-4
    # §8: the teacher warms up over 10 steps; the student waits 20 steps, then warms up to step 30.
    assert built["teacher"].scheduler.lr_lambdas[0](5) == 0.5
    student_multiplier = built["student"].scheduler.lr_lambdas[0]
    assert (student_multiplier(19), student_multiplier(20), student_multiplier(30)) == (0.0, 20 / 30, 1.0)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_end_to_end(script, synthetic_root, tmp_path):
    proc = run_script(script, tiny_args(synthetic_root, tmp_path, extra=SCRIPTS[script]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path)
    ckpt = torch.load(run / "checkpoint.pth", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["epoch"] == 1
    assert {"teacher_model", "student_model", "teacher_optimizer", "student_optimizer", "teacher_scheduler",
            "student_scheduler"} <= set(ckpt)
    evaluations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in evaluations] == [0, 1]
    # val_log.txt: the original's line (SPEC §9), the student's numbers first
    assert (run / "val_log.txt").read_text().splitlines() == [
        f"epoch:{e['epoch']} student_oks:{e['student']['AP']:.6f}  student_pck:{e['student']['PCK']:.6f}  "
        f"teacher_oks:{e['teacher']['AP']:.6f}  teacher_pck:{e['teacher']['PCK']:.6f}" for e in evaluations]
    best = torch.load(run / "best-oks.pth", weights_only=True)
    assert set(best) == set(ckpt["student_model"])                 # the student's weights alone
    assert (run / "best-pck.pth").is_file()
    cfg_text = (run / "config.yaml").read_text()
    assert "WIDTH: 8" in cfg_text and json.loads((run / "args.json").read_text())["total_steps"] == 4
    assert (run / "git_commit.txt").read_text().strip()


def test_tensorboard_scalar_names(synthetic_root, tmp_path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    proc = run_script("train_ap10k_animalpose_tigdog.py", tiny_args(synthetic_root, tmp_path, steps=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mux = EventMultiplexer().AddRunsFromDirectory(str(only_run_dir(tmp_path) / "tensorboard"))
    mux.Reload()
    runs = {Path(name).name for name in mux.Runs()}
    # add_scalars writes one sub-run per "<tag>_<name>"
    assert {"Train_Loss_Stu_Loss", "Train_Loss_Tea_Loss", "Val_OKS_Stu_OKS", "Val_OKS_Tea_OKS", "Val_PCK_Stu_PCK",
            "Val_PCK_Tea_PCK", "PL_kp_num_Head_PL", "PL_kp_num_Front_PL", "PL_kp_num_Back_PL"} <= runs


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(synthetic_root, tmp_path, capsys):
    from freenet.training import run

    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert run("train_split_ap10k", ["--level", "1", *tiny_args(synthetic_root, straight, steps=6, eval_step=3)]) == 0
    # stop between evaluations, so the resumed run also needs the losses summed since the last one
    halves_args = tiny_args(synthetic_root, halves, steps=6, eval_step=3)
    assert run("train_split_ap10k", ["--level", "1", "--stop-step", "2", *halves_args]) == 0
    first = only_run_dir(halves) / "checkpoint.pth"
    assert torch.load(first, weights_only=False)["step"] == 1
    assert f"Stopped after step 2 (--stop-step 2). Resume with --resume {first}" in capsys.readouterr().out
    # nothing but --resume (and how to execute): the flags and overrides come from the run itself
    assert run("train_split_ap10k", ["--resume", str(first), "--workers", "0"]) == 0
    a = torch.load(only_run_dir(straight) / "checkpoint.pth", weights_only=False)
    b = torch.load(first, weights_only=False)
    assert a["step"] == b["step"] == 5
    for key in ("teacher_model", "student_model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert a["student_optimizer"]["state"][0]["exp_avg"].equal(b["student_optimizer"]["state"][0]["exp_avg"])
    assert a["teacher_scheduler"] == b["teacher_scheduler"]
    logged = [[json.loads(line)["train"] for line in (only_run_dir(d) / "metrics.jsonl").read_text().splitlines()]
              for d in (straight, halves)]
    assert len(logged[0]) == 2 and logged[0] == logged[1]       # the same training losses logged

    # A finished run has nothing left to train; a longer --total-steps goes on, and the next bare
    # --resume (the command the run prints) reads it: args.json holds the last command's flags.
    assert run("train_split_ap10k", ["--resume", str(first), "--workers", "0"]) == 2
    assert "nothing to train: the run has done 6 steps and ends at step 6 (--total-steps 6)" in capsys.readouterr().err
    assert run("train_split_ap10k", ["--resume", str(first), "--workers", "0", "--total-steps", "8",
                                     "--stop-step", "7"]) == 0
    assert torch.load(first, weights_only=False)["step"] == 6
    assert json.loads((first.parent / "args.json").read_text())["total_steps"] == 8
    assert run("train_split_ap10k", ["--resume", str(first), "--workers", "0"]) == 0
    assert torch.load(first, weights_only=False)["step"] == 7


@pytest.mark.parametrize("where, at", [("evaluation", 1), ("logged", 1), ("evaluation", 2)])
def test_a_run_stopped_inside_an_evaluation_evaluates_that_step_when_resumed(synthetic_root, tmp_path, monkeypatch,
                                                                             caplog, where, at):
    """checkpoint.pth is written before each evaluation (SPEC §9); one that did not finish (a second
    Ctrl-C, out of memory, a killed job) runs again on resume, so the logs and best-oks.pth are an
    uninterrupted run's — also when it stopped after logging the evaluation, before best.json said
    it had finished, and also inside the last evaluation, when no step is left to train. The
    stand-in evaluator scores AP 0.1, 0.9, 0.2 at steps 0, 1, 2."""
    import freenet.engine
    import freenet.training
    from freenet.training import run

    scores, crash = {0: 0.1, 1: 0.9, 2: 0.2}, {"at": None}

    def build_evaluator(cfg, joint_set, device):
        def evaluate(model):
            step = torch.load(only_run_dir(out) / "checkpoint.pth", weights_only=False)["step"]
            if step == crash["at"] and where == "evaluation":
                crash["at"] = None
                raise KeyboardInterrupt   # inside the student's evaluation
            return {"AP": scores[step], "PCK": scores[step]}
        return evaluate

    def write_json_atomic(path, data):
        if data.get("evaluated_step") == crash["at"] and where == "logged":
            crash["at"] = None
            raise KeyboardInterrupt       # val_log.txt and metrics.jsonl have the step's lines
        write_json(path, data)

    write_json = freenet.engine.write_json_atomic
    monkeypatch.setattr(freenet.training, "build_evaluator", build_evaluator)
    monkeypatch.setattr(freenet.engine, "write_json_atomic", write_json_atomic)
    out = tmp_path / "straight"
    assert run("train_split_ap10k", ["--level", "1", *tiny_args(synthetic_root, out, steps=3, eval_step=1)]) == 0
    out, crash["at"] = tmp_path / "halves", at
    with pytest.raises(KeyboardInterrupt):
        run("train_split_ap10k", ["--level", "1", *tiny_args(synthetic_root, out, steps=3, eval_step=1)])
    ckpt = only_run_dir(out) / "checkpoint.pth"
    assert torch.load(ckpt, weights_only=False)["step"] == at
    assert json.loads((ckpt.parent / "best.json").read_text())["evaluated_step"] == at - 1
    with caplog.at_level("WARNING", logger="freenet.engine"):
        assert run("train_split_ap10k", ["--resume", str(ckpt), "--workers", "0"]) == 0
    assert f"the evaluation after step {at + 1} did not finish" in caplog.text
    assert "no evaluation in steps" not in caplog.text              # also with no step left to train

    straight, halves = (only_run_dir(tmp_path / d) for d in ("straight", "halves"))
    for name in ("val_log.txt", "metrics.jsonl", "best.json"):
        assert (straight / name).read_text() == (halves / name).read_text(), name
    assert json.loads((halves / "best.json").read_text()) == {"best_oks": 0.9, "best_oks_step": 1, "best_pck": 0.9,
                                                              "best_pck_step": 1, "evaluated_step": 2}
    assert len((halves / "val_log.txt").read_text().splitlines()) == 3
    a, b = (torch.load(d / "best-oks.pth", weights_only=True) for d in (straight, halves))
    assert all(torch.equal(v, b[k]) for k, v in a.items())      # the step-1 student, in both


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupted_image_stops_the_run_naming_the_file(synthetic_root, tmp_path, workers):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    out = tmp_path / "out"
    first = run_script("train_split_ap10k.py", ["--level", "0", *tiny_args(root, out, steps=2, eval_step=2)])
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt_path = only_run_dir(out) / "checkpoint.pth"
    before = ckpt_path.read_bytes()
    bad = sorted((root / "ap_10k" / "data").glob("*.jpg"))
    for image in bad:
        image.write_bytes(b"\xff\xd8 truncated")
    proc = run_script("train_split_ap10k.py", ["--level", "0", "--resume", str(ckpt_path),
                                               *tiny_args(root, out, steps=40, eval_step=20, workers=workers)])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "cannot read image" in last
    assert any(str(image) in last for image in bad), last
    assert "Traceback" not in proc.stderr
    assert ckpt_path.read_bytes() == before                      # the checkpoint is untouched and loads
    assert torch.load(ckpt_path, weights_only=False)["step"] == 1


def test_a_feedback_ramp_that_ends_before_it_starts_or_a_run_with_no_step_is_refused(synthetic_root, tmp_path, capsys):
    from freenet.training import run

    args = tiny_args(synthetic_root, tmp_path, extra=["--feedback-steps-start", "5", "--feedback-steps-complete", "3"])
    assert run("finetune", args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: --feedback-steps-complete 3 is before --feedback-steps-start 5"
    assert not any(tmp_path.iterdir()), "refused before a run directory is made"
    assert run("finetune", tiny_args(synthetic_root, tmp_path, extra=["--start-step", "4"])) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: nothing to train: --start-step 4 and the run ends at step 4 (--total-steps 4)"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, overrides, ratio", [([], [], "0.1"), (["--sample-ratio", "0.3"], [], "0.3"),
                                                     ([], ["DATASET.SAMPLE_RATIO", "0.2"], "0.2")])
def test_the_teacher_file_is_that_of_the_labeled_ratio_trained_with(synthetic_root, tmp_path, capsys, flags, overrides,
                                                                     ratio):
    """The default teacher name's {ratio} is the config's labeled fraction, by flag or by override."""
    from freenet.training import run

    args = tiny_args(synthetic_root, tmp_path, extra=flags)
    at = args.index("--pretrained-weights-name")
    del args[at:at + 2]                                               # the script's default name
    assert run("train_ap10k_animalpose", [*args, *overrides]) == 2
    missing = tmp_path / "no_weights" / f"ap_10k_animal_pose_mix_SL_{ratio}_hrnet.pth"
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: {missing}: base-network (teacher) weights not found")


@pytest.mark.parametrize("override, named", [(["MODEL.EXTRA.WIDTH", "8"], "MODEL.EXTRA.WIDTH"),
                                              (["MODEL.WIDTH", "eight"], "MODEL.WIDTH"),
                                              (["MODEL.HEATMAP_SIZE", "[32,32]"], "MODEL.HEATMAP_SIZE")])
def test_a_bad_override_is_one_line_naming_the_key(synthetic_root, tmp_path, override, named):
    proc = run_script("train_split_ap10k.py", ["--level", "0", *tiny_args(synthetic_root, tmp_path), *override])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and named in last, last


def test_compile_regions_trains_evaluates_and_saves_the_plain_layout(synthetic_root, tmp_path, monkeypatch, dynamo):
    """``--compile-regions`` compiles both networks' blocks in place (here with dynamo's eager backend:
    the tracing without minutes of code generation); evaluation and the checkpoint see plain networks."""
    import freenet.training
    from freenet.models import compile_regions
    from freenet.training import run

    compiled = []

    def traced_only(net):
        compiled.append(net)
        return compile_regions(net, backend="eager")

    monkeypatch.setattr(freenet.training, "compile_regions", traced_only)
    assert run("finetune", ["--compile-regions", *tiny_args(synthetic_root, tmp_path, steps=2)]) == 0
    assert len(compiled) == 2 and compiled[0] is not compiled[1]
    assert all(n.stage3[0]._compiled_call_impl is not None for n in compiled)
    ckpt = torch.load(only_run_dir(tmp_path) / "checkpoint.pth", weights_only=False)
    for name, net in zip(("teacher_model", "student_model"), compiled):
        assert ckpt[name].keys() == net.state_dict().keys() and "stage3.0.branches.0.0.conv1.weight" in ckpt[name]
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in ckpt[name].items())
    evaluated = [json.loads(line) for line in (only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evaluated] == [1] and "teacher" in evaluated[0]     # (steps count from 0)


def test_cuda_graphs_without_cuda_is_one_line(synthetic_root, tmp_path):
    proc = run_script("finetune.py", tiny_args(synthetic_root, tmp_path, extra=("--cuda-graphs", "--device", "cpu")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --cuda-graphs needs one CUDA process")
    assert not any(tmp_path.glob("ours_*"))                      # refused before anything was made


def _dead_workers():
    raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")


def _out_of_memory():
    raise RuntimeError("CUDA out of memory")


def test_after_a_signal_dead_loader_workers_mean_stop_and_other_errors_still_raise():
    from freenet.engine import Interrupt

    before = [signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGTERM)]
    with Interrupt() as interrupt:
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            interrupt.next(_dead_workers)                    # no signal came: a real failure
        assert interrupt.next(lambda: "batch") == "batch"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)                                     # (the handler runs between two bytecodes)
        assert interrupt.requested and not interrupt.stopping
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL   # torch's handler would raise mid-step
        with pytest.raises(RuntimeError, match="out of memory"):
            interrupt.next(_out_of_memory)
        assert interrupt.next(_dead_workers) is None and interrupt.stopping
    assert [signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGTERM)] == before    # restored


class _WorkerSignals(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return torch.tensor([signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGTERM) == signal.SIG_DFL])


def test_a_loader_worker_forked_during_training_leaves_signals_to_the_main_process():
    """Forked inside :class:`Interrupt` (an evaluation's loader), a worker ignores Ctrl-C and dies
    of SIGTERM (the DataLoader stops a stuck worker with it) instead of inheriting the handler."""
    from freenet.data.dataset import init_worker
    from freenet.engine import Interrupt

    def first(**kwargs):    # (forked, as the DataLoader's workers are on Linux)
        return next(iter(torch.utils.data.DataLoader(_WorkerSignals(), num_workers=1, multiprocessing_context="fork",
                                                     **kwargs)))

    with Interrupt():
        inherited, reset = first(), first(worker_init_fn=init_worker)
    assert inherited.tolist() == [[False, False]] and reset.tolist() == [[True, True]]


@pytest.mark.parametrize("signame, group", [("SIGINT", True), ("SIGTERM", False), ("SIGTERM", True)])
def test_a_signal_saves_and_the_run_resumes(synthetic_root, tmp_path, signame, group):
    """Ctrl-C in a terminal (to the main process and its loader workers), SIGTERM to the main
    process (``kill PID``; what torchrun forwards to each rank), or SIGTERM to every process (a
    scheduler's time limit: the loader worker dies of it)."""
    args = ["--level", "0", *tiny_args(synthetic_root, tmp_path, steps=100000, eval_step=100000, workers=1)]
    proc = subprocess.Popen([sys.executable, str(REPO / "train_split_ap10k.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("ours_*/tensorboard")):
        time.sleep(0.2)
    time.sleep(3.0)                               # a few steps
    if group:
        os.killpg(proc.pid, getattr(signal, signame))   # the whole process group: main process and workers
    else:
        os.kill(proc.pid, getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "Resume with --resume" in out + err
    ckpt_path = only_run_dir(tmp_path) / "checkpoint.pth"
    step = torch.load(ckpt_path, weights_only=False)["step"]
    assert step >= 0 and f"Stopped after step {step + 1}. Resume with --resume" in out + err
    resumed = run_script("train_split_ap10k.py", ["--level", "0", "--resume", str(ckpt_path),
                                                  *tiny_args(synthetic_root, tmp_path, steps=step + 3,
                                                             eval_step=100000)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(ckpt_path, weights_only=False)["step"] == step + 2


def test_weights_that_are_no_longer_numbers_stop_the_run_before_they_are_saved(synthetic_root, tmp_path, monkeypatch,
                                                                               capsys):
    """A diverged network is not checkpointed: the run stops with the last good checkpoint on disk."""
    import freenet.training
    from freenet.freenet_step import FreeNetStep

    class Diverging(FreeNetStep):
        def __call__(self, step, labeled, unlabeled):
            out = super().__call__(step, labeled, unlabeled)
            if step == 3:       # the last step: the teacher, which learns from the student, is not hit yet
                with torch.no_grad():
                    next(self.student.model.parameters()).fill_(float("nan"))
            return out

    monkeypatch.setattr(freenet.training, "FreeNetStep", Diverging)
    assert freenet.training.run("finetune", tiny_args(synthetic_root, tmp_path, steps=4, eval_step=2)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: the student's weights are not finite numbers after step 4 (diverged: lower its learning rate")
    run_dir = only_run_dir(tmp_path)
    ckpt = torch.load(run_dir / "checkpoint.pth", weights_only=False)
    assert ckpt["step"] == 1 and all(v.isfinite().all() for v in ckpt["student_model"].values()
                                     if v.is_floating_point())
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_resume_that_changes_what_the_run_computes_says_so(synthetic_root, tmp_path, caplog):
    from freenet.training import run

    assert run("finetune", tiny_args(synthetic_root, tmp_path, steps=2, eval_step=2, extra=["--stop-step", "1"])) == 0
    ckpt = only_run_dir(tmp_path) / "checkpoint.pth"
    torn = ckpt.parent / ".checkpoint.pth.k1ll3d.tmp"    # what a process killed inside a save leaves
    torn.write_bytes(b"half a checkpoint")
    overrides = ["MODEL.SIGMA", "3.0", "DATASET.ROT_FACTOR", "45", "PRINT_FREQ", "7"]
    with caplog.at_level("WARNING", logger="freenet"):   # only MODEL.SIGMA changes what the run computes
        assert run("finetune", ["--resume", str(ckpt), "--workers", "0", *overrides,
                                "DATASET.ROOT", str(tmp_path)]) == 2
        assert run("finetune", ["--resume", str(ckpt), "--workers", "0", *overrides,
                                "DATASET.ROOT", str(synthetic_root)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert ("--resume with other settings than the run: MODEL.SIGMA 3.0 (the run used 2.0); the result will differ "
            "from an uninterrupted run") in warnings, warnings
    assert not torn.exists()
