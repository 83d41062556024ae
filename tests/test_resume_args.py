"""--resume continues a run with its own settings (SPEC §9); checkpoints that do not fit fail in one line."""
import json
import os
from pathlib import Path

import pytest
import torch

from freenet.checkpoint import CheckpointError
from freenet.cli import parse_run_args
from freenet.engine import TrainState, checkpoint_state, restore
from freenet.errors import DataError
from freenet.fileio import write_text_atomic
from freenet.models import PoseHighResolutionNet
from freenet.optim import make_optimized
from freenet.supervised import build_parser as supervised_parser
from freenet.training import SCRIPTS, build_parser


def saved_run(tmp_path, argv, parser):
    """A run folder as RunDir.create leaves it: args.json of ``argv`` and a config.yaml."""
    run = tmp_path / "ours_run"
    run.mkdir()
    (run / "args.json").write_text(json.dumps(vars(parser.parse_args(argv)), default=str))
    (run / "config.yaml").write_text("SEED: 2\n")
    (run / "checkpoint.pth").touch()
    return run


def test_resume_takes_the_runs_flags_unless_given_again(tmp_path):
    parser = build_parser(SCRIPTS["train_split_ap10k"])
    run = saved_run(tmp_path, ["--level", "1", "--total-steps", "6", "--batch-size", "2", "--mu", "3",
                               "--student_lr", "0.5", "--stop-step", "3", "--workers", "4", "MODEL.WIDTH", "8"], parser)
    args, notes = parse_run_args(parser, ["--resume", str(run / "checkpoint.pth"), "--mu", "3", "--workers", "0",
                                          "DATASET.ROOT", "/data"])
    assert (args.level, args.total_steps, args.batch_size, args.mu, args.student_lr) == (1, 6, 2, 3, 0.5)
    assert args.stop_step is None and args.workers == 0        # how to execute: this command line's
    assert args.cfg == str(run / "config.yaml")
    assert args.opts == ["MODEL.WIDTH", "8", "DATASET.ROOT", "/data"]  # the run's overrides, then these
    assert notes == []


def test_a_flag_given_to_resume_beats_the_runs_override_of_its_key(tmp_path):
    """A moved data root or another device: ``--data-root`` / ``--device`` given again win over the
    run's trailing DATASET.ROOT / DEVICE overrides; the run's other overrides stay."""
    from freenet.cli import config_from_args

    parser = build_parser(SCRIPTS["train_ap10k_animalpose"])
    run = saved_run(tmp_path, ["DATASET.ROOT", "/old/data", "DEVICE", "cuda", "MODEL.WIDTH", "8"], parser)
    args, _ = parse_run_args(parser, ["--resume", str(run / "checkpoint.pth"), "--data-root", "/new/data",
                                      "--device", "cpu"])
    assert args.opts == ["MODEL.WIDTH", "8"]
    cfg = config_from_args(args)
    assert (cfg.DATASET.ROOT, cfg.DEVICE, cfg.MODEL.WIDTH) == ("/new/data", "cpu", 8)
    args, _ = parse_run_args(parser, ["--resume", str(run / "checkpoint.pth")])
    assert config_from_args(args).DATASET.ROOT == "/old/data"     # not given again: the run's


def test_resume_with_other_settings_warns(tmp_path):
    parser = build_parser(SCRIPTS["train_ap10k_animalpose"])
    run = saved_run(tmp_path, ["--total-steps", "6"], parser)
    args, notes = parse_run_args(parser, ["--resume", str(run / "checkpoint.pth"), "--total-steps", "9"])
    assert args.total_steps == 9
    assert len(notes) == 1 and "total_steps 9 (the run used 6)" in notes[0]


def test_resume_without_args_json_keeps_the_command_line(tmp_path):
    parser = build_parser(SCRIPTS["finetune"])
    (tmp_path / "checkpoint.pth").touch()
    args, notes = parse_run_args(parser, ["--resume", str(tmp_path / "checkpoint.pth"), "--total-steps", "7"])
    assert args.total_steps == 7 and args.mu == 1
    assert len(notes) == 1 and "args.json not found" in notes[0]


def test_resume_of_a_missing_checkpoint_is_refused_before_anything_loads(tmp_path, capsys):
    parser = build_parser(SCRIPTS["train_ap10k_animalpose_tigdog"])
    with pytest.raises(SystemExit) as exit_:
        parse_run_args(parser, ["--resume", str(tmp_path / "nonexist" / "checkpoint.pth")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--resume {tmp_path / 'nonexist' / 'checkpoint.pth'}: checkpoint file not found" in err
    assert "args.json" not in err


def test_level_is_required_unless_the_run_has_it(tmp_path, capsys):
    parser = build_parser(SCRIPTS["train_split_ap10k"])
    with pytest.raises(SystemExit):
        parse_run_args(parser, ["--total-steps", "3"], ("level",))
    assert "--level" in capsys.readouterr().err
    run = saved_run(tmp_path, ["--level", "0"], parser)
    args, _ = parse_run_args(parser, ["--resume", str(run / "checkpoint.pth")], ("level",))
    assert args.level == 0


def test_supervised_resume_keeps_the_epochs_but_not_the_stop(tmp_path):
    parser = supervised_parser()
    run = saved_run(tmp_path, ["--level", "0", "--epochs", "210", "--stop-epoch", "100", "--workers", "4"], parser)
    args, _ = parse_run_args(parser, ["--resume", str(run / "checkpoint.pth"), "--workers", "0"])
    assert (args.level, args.epochs) == (0, 210)
    assert args.stop_epoch is None and args.workers == 0        # a resumed run goes to the end unless told


def test_output_folders_and_files_with_a_file_in_the_way_are_refused_by_flag(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for folder in ("afile", "afile/sub"):
        with pytest.raises(SystemExit):
            supervised_parser().parse_args(["--output-dir", str(tmp_path / folder)])
        assert f"argument --output-dir: {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        supervised_parser().parse_args(["--save-as", str(tmp_path)])       # a folder, not a file name
    assert f"argument --save-as: {tmp_path} is a folder: give a file name in it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        supervised_parser().parse_args(["--save-as", str(tmp_path / "afile" / "w.pth")])
    assert f"argument --save-as: {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    args = supervised_parser().parse_args(["--output-dir", str(tmp_path / "new" / "runs"),
                                           "--save-as", str(tmp_path / "new" / "w.pth")])
    assert args.output_dir == str(tmp_path / "new" / "runs") and args.save_as == str(tmp_path / "new" / "w.pth")


def test_output_folders_that_cannot_be_written_are_refused_by_flag(tmp_path, capsys, monkeypatch):
    import freenet.cli

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    access = os.access   # the tests may run as root, whom permissions do not stop: os.access stands in
    monkeypatch.setattr(freenet.cli.os, "access", lambda path, mode: Path(path) != read_only and access(path, mode))
    for flag, value in (("--output-dir", read_only / "runs"), ("--save-as", read_only / "w.pth")):
        with pytest.raises(SystemExit):
            supervised_parser().parse_args([flag, str(value)])
        assert f"argument {flag}: cannot write in {read_only} (permission denied)" in capsys.readouterr().err
    assert supervised_parser().parse_args(["--output-dir", str(tmp_path / "runs")]).output_dir == str(tmp_path / "runs")


def test_a_corrupt_args_json_names_the_file(tmp_path):
    parser = supervised_parser()
    (tmp_path / "args.json").write_text("{not json")
    (tmp_path / "checkpoint.pth").touch()
    with pytest.raises(ValueError, match="args.json"):
        parse_run_args(parser, ["--resume", str(tmp_path / "checkpoint.pth")])


def test_restore_refuses_another_width_in_one_line(tmp_path):
    def pair(width):
        nets = [PoseHighResolutionNet(17, width=width) for _ in range(2)]
        return [make_optimized(n, 1e-3, 1e-4, 1, 10, 0, 1e9, torch.device("cpu"), False) for n in nets]

    teacher, student = pair(8)
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint_state(TrainState(step=3), teacher, student, 2, {}), path)
    with pytest.raises(CheckpointError) as err:
        restore(str(path), *pair(16))
    message = str(err.value)
    assert str(path) in message and "teacher_model" in message and "MODEL.WIDTH" in message
    assert "\n" not in message


def test_resume_restores_the_loss_window(tmp_path):
    nets = [make_optimized(PoseHighResolutionNet(17, width=8), 1e-3, 1e-4, 1, 10, 0, 1e9, torch.device("cpu"), False)
            for _ in range(2)]
    state = TrainState(step=4, window={"s_loss": torch.tensor(1.5), "t_loss": torch.tensor(2.5)}, window_steps=3)
    torch.save(checkpoint_state(state, *nets, 2, {}), tmp_path / "checkpoint.pth")
    back = restore(str(tmp_path / "checkpoint.pth"), *nets)
    assert back.step == 4 and back.window_steps == 3
    assert {k: float(v) for k, v in back.window.items()} == {"s_loss": 1.5, "t_loss": 2.5}
    # the loss window is saved as its mean over the ranks (what a one-process stand-in returns)
    import freenet.engine

    with pytest.MonkeyPatch.context() as m:
        m.setattr(freenet.engine.distributed, "mean_over_ranks", lambda v: v * 0 + 7)
        saved = checkpoint_state(state, *nets, 2, {})["loss_window"]
    assert {k: float(v) for k, v in saved.items()} == {"s_loss": 7.0, "t_loss": 7.0}
    # best.json: per-metric steps; one from before them (a single "step") still reads; a broken one is named
    (tmp_path / "best.json").write_text('{"best_oks": 0.5, "best_pck": 0.25, "step": 3, "evaluated_step": 4}')
    back = restore(str(tmp_path / "checkpoint.pth"), *nets)
    assert (back.best_oks, back.best_oks_step, back.best_pck, back.best_pck_step) == (0.5, 3, 0.25, 3)
    (tmp_path / "best.json").write_text('{"best_oks": 0.5, "best_oks_step": 1, "best_pck": 0.25, "best_pck_step": 2}')
    back = restore(str(tmp_path / "checkpoint.pth"), *nets)
    assert (back.best_oks_step, back.best_pck_step) == (1, 2)
    (tmp_path / "best.json").write_text('{"best_oks": 0.5,')
    with pytest.raises(DataError, match=r"best.json: cannot read the run's best scores \(JSONDecodeError"):
        restore(str(tmp_path / "checkpoint.pth"), *nets)


def test_atomic_files_get_the_normal_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "best.json", "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "best.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("argv, cores, expected", [([], 2, 2), ([], 16, 8), (["--workers", "5"], 2, 5),
                                                   (["--workers", "0"], 16, 0), (["WORKERS", "3"], 16, 3)])
def test_loader_workers_default_to_at_most_the_usable_cores(monkeypatch, argv, cores, expected):
    import freenet.cli
    from freenet.cli import config_from_args

    monkeypatch.setattr(freenet.cli, "usable_cpus", lambda: cores)
    args = build_parser(SCRIPTS["train_ap10k_animalpose"]).parse_args(argv)
    assert config_from_args(args).WORKERS == expected


def test_a_split_yaml_without_level_asks_for_it():
    from freenet.cli import config_from_args
    from freenet.config import ConfigError

    args = supervised_parser().parse_args(["--cfg", "experiments/ap10k/freenet_split.yaml"])
    needs_level = r"freenet_split.yaml: DATASET.SPLIT_FILE .*level_\{level\}.json needs --level"
    with pytest.raises(ConfigError, match=needs_level):
        config_from_args(args)
    level_1 = config_from_args(supervised_parser().parse_args(["--level", "1"]))
    assert level_1.DATASET.SPLIT_FILE.endswith("level_1.json")


@pytest.mark.parametrize("script, argv, shared", [
    ("train_split_ap10k", ["--level", "0"], [0, 1, 2, 3, 4]),               # eyes, nose, neck, tail
    ("train_split_ap10k", ["--level", "1"], [0, 1, 2, 3, 4, 7, 10, 13, 16]),  # and the paws
    ("train_split_ap10k", ["--level", "1", "TEST.SHARED_JOINTS", "[3, 4]"], [3, 4]),  # the user's list wins
    ("train_synthetic_ap10k", [], [3, 4]),                                    # 25 -> 5: neck and tail
    ("finetune", [], [3, 4]),
    ("train_ap10k_animalpose", [], []),                                       # [] = the sources' shared joints
])
def test_a_split_setting_scores_pck_per_part_over_its_shared_joints(script, argv, shared):
    """PCK per part (§11.8) of a split setting counts the joints its split shares, as the original's
    ``level`` argument chose them; a user's TEST.SHARED_JOINTS wins."""
    from freenet.cli import config_from_args

    assert config_from_args(build_parser(SCRIPTS[script]).parse_args(argv)).TEST.SHARED_JOINTS == shared


@pytest.mark.parametrize("flag, value, message", [("--eval-step", "0", "must be at least 1, got 0"),
                                                  ("--down-step", "-3", "must be at least 1, got -3"),
                                                  ("--mu", "-1", "must be at least 0, got -1"),
                                                  ("--batch-size", "two", "expected an integer, got 'two'"),
                                                  ("--grad-clip", "-1", "must be >= 0, got -1"),
                                                  ("--teacher_lr=", "-1e-5", "must be >= 0, got -1e-5"),
                                                  ("--student_lr", "nan", "must be >= 0, got nan"),
                                                  ("--feedback-weight", "two", "expected a number, got 'two'"),
                                                  ("--seed", "-1", "must be at least 0, got -1")])
def test_numbers_out_of_range_are_refused_by_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        build_parser(SCRIPTS["train_split_ap10k"]).parse_args(["--level", "0"] + (
            [flag + value] if flag.endswith("=") else [flag, value]))
    err = capsys.readouterr().err.splitlines()
    flag = flag.rstrip("=")
    assert len(err) == 1 and err[0].endswith(f"error: argument {flag}: {message} (--help lists the flags)"), err
    assert build_parser(SCRIPTS["train_split_ap10k"]).parse_args(["--mu", "0"]).mu == 0
    ratio = build_parser(SCRIPTS["train_ap10k_animalpose"])
    assert ratio.parse_args(["--sample-ratio", "1", "--grad-clip", "0.5"]).grad_clip == 0.5
    assert ratio.parse_args(["--grad-clip", "0"]).grad_clip == 0      # no clipping, as in the original
    with pytest.raises(SystemExit):
        ratio.parse_args(["--sample-ratio", "1.5"])
    assert capsys.readouterr().err.splitlines()[0].endswith("--sample-ratio: must be in [0, 1], got 1.5 "
                                                             "(--help lists the flags)")


@pytest.mark.parametrize("text, message", [("SEED: [1\n", "not valid YAML"),
                                           ("- 1\n- 2\n", "expected a mapping of config keys"),
                                           ("TRAIN:\n  OPTIMIZER: sgd\n", "TRAIN.OPTIMIZER 'sgd' is not supported"),
                                           ("TRAIN:\n  SHUFFLE: false\n", "TRAIN.SHUFFLE False is not supported"),
                                           ("FREENET:\n  EVAL_SCHEDULE: [[100]]\n", "FREENET.EVAL_SCHEDULE"),
                                           ("FREENET:\n  EVAL_SCHEDULE: [[100, 0]]\n", "integers >= 1"),
                                           ("MODEL:\n", "MODEL is a section of keys, got nothing"),
                                           ("MODEL:\n  WIDTH: abc\n", "MODEL.WIDTH must be of type int, got 'abc'"),
                                           ("DATASET:\n  SOURCES: [ap10k, atrw]\n",
                                            "DATASET.SOURCES 'atrw' is not a dataset of the data layout (one of "),
                                           ("DATASET:\n  DATASET: atrw\n", "DATASET.DATASET 'atrw' is not a dataset"),
                                           ("MODEL:\n  SIGMA: 0.0\n", "MODEL.SIGMA 0.0 must be > 0"),
                                           ("MODEL:\n  WIDTH: 0\n", "MODEL.WIDTH 0 must be >= 1"),
                                           ("TRAIN:\n  LR: .nan\n", "TRAIN.LR nan must be > 0"),
                                           ("DATASET:\n  SCALE_FACTOR: 1.0\n",
                                            "DATASET.SCALE_FACTOR 1.0 must be in [0, 1)"),
                                           ("DATASET:\n  LABELED: some\n",
                                            "DATASET.LABELED 'some' must be one of split, label_list_split, ratio, "),
                                           ("FREENET:\n  FEEDBACK_BAND: [0.6, 0.6]\n",
                                            "FREENET.FEEDBACK_BAND [0.6, 0.6] must be [top, bottom]: two fractions"),
                                           ("FREENET:\n  PL_MIN_CONFIDENCE: -0.1\n",
                                            "FREENET.PL_MIN_CONFIDENCE -0.1 must be >= 0"),
                                           ("TEST:\n  PROTOCOL: mmpose\n",
                                            "TEST.PROTOCOL 'mmpose' must be one of standard, freenet")])
def test_a_yaml_that_cannot_be_honoured_is_a_config_error_naming_the_file(tmp_path, text, message):
    from freenet.config import ConfigError, load_config

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as e:
        load_config(str(path))
    assert message in str(e.value) and "\n" not in str(e.value)   # one line, not the section's defaults
    assert load_config(None, ["FREENET.EVAL_SCHEDULE", "[[100, 5]]"]).FREENET.EVAL_SCHEDULE == [[100, 5]]
    with pytest.raises(ConfigError, match="^command-line override: MODEL is a section of keys, got a single value$"):
        load_config(None, ["MODEL", "3"])
    # an integer where the key holds a float is that number, in a yaml as in an override
    path.write_text("TRAIN:\n  LR: 1\n")
    assert load_config(str(path)).TRAIN.LR == 1.0 and load_config(None, ["TRAIN.LR", "2"]).TRAIN.LR == 2.0
    with pytest.raises(ConfigError, match="is a folder: give the yaml in it"):
        load_config(str(tmp_path))
    path.write_bytes(b"PK\x03\x04\xff\xfe")
    with pytest.raises(ConfigError, match="bad.yaml: not a text file"):
        load_config(str(path))
    # a dataset name the layout does not know is fine where a file replaces the layout
    own = load_config(None, ["DATASET.SOURCES", "['atrw']", "DATASET.TRAIN_FILE", "a.json",
                             "DATASET.DATASET", "atrw", "DATASET.VAL_ANN_FILE", "b.json"])
    assert own.DATASET.SOURCES == ["atrw"]


def test_text_keys_keep_text_that_reads_as_a_number():
    """yacs evaluates overrides as Python literals; a path key keeps the text given (a data root named
    2024, a split file named 1e5), by flag and by KEY VALUE, and other keys still take literals."""
    from freenet.cli import config_from_args
    from freenet.config import load_config

    cfg = load_config(None, ["DATASET.ROOT", "2024", "DATASET.SPLIT_FILE", "1e5", "DEVICE", "'cpu'",
                             "MODEL.WIDTH", "8", "DATASET.SOURCES", "['ap10k']"])
    assert (cfg.DATASET.ROOT, cfg.DATASET.SPLIT_FILE, cfg.DEVICE) == ("2024", "1e5", "cpu")
    assert cfg.MODEL.WIDTH == 8 and cfg.DATASET.SOURCES == ["ap10k"]
    args = build_parser(SCRIPTS["train_ap10k_animalpose"]).parse_args(["--data-root", "2024", "--seed", "5"])
    cfg = config_from_args(args)
    assert cfg.DATASET.ROOT == "2024" and cfg.SEED == 5


def test_cudnn_keys_reach_the_backend():
    from freenet.device import configure_backends

    cudnn = torch.backends.cudnn
    saved = cudnn.enabled, cudnn.deterministic, cudnn.benchmark
    try:
        configure_backends(torch.device("cuda"), cudnn_benchmark=True, cudnn_deterministic=True, cudnn_enabled=False)
        assert (cudnn.enabled, cudnn.deterministic, cudnn.benchmark) == (False, True, False)
        configure_backends(torch.device("cuda"), cudnn_benchmark=True)
        assert (cudnn.enabled, cudnn.deterministic, cudnn.benchmark) == (True, False, True)
    finally:
        cudnn.enabled, cudnn.deterministic, cudnn.benchmark = saved


def test_a_weights_name_with_an_unknown_field_is_one_line(tmp_path, capsys):
    from freenet.training import run

    code = run("train_split_ap10k", ["--level", "0", "--device", "cpu", "--pretrained-weights-name", "x{y}.pth",
                                     "--output-dir", str(tmp_path)])
    assert code == 2
    assert "--pretrained-weights-name 'x{y}.pth': the only fields are {level} and {ratio}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                       # refused before a run folder exists


def test_supervised_epoch_is_one_pass_over_the_records_on_all_ranks():
    from freenet.supervised import epoch_length

    assert epoch_length(1000, 32) == 31                      # 992 records seen, as the original's drop_last
    assert epoch_length(1000, 32, world_size=2) == 15        # 2 x 32 records per iteration
    assert epoch_length(10, 32, world_size=4) == 1


def test_copy_atomic_copies_and_leaves_no_partial_file(tmp_path):
    from freenet.fileio import copy_atomic

    (tmp_path / "best.pth").write_bytes(b"weights" * 1000)
    copy_atomic(tmp_path / "best.pth", tmp_path / "out" / "base.pth")
    assert (tmp_path / "out" / "base.pth").read_bytes() == b"weights" * 1000
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "missing.pth", tmp_path / "out" / "other.pth")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["base.pth"]


def test_the_original_codes_dropped_flags_say_what_to_use_instead(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser(SCRIPTS["train_ap10k_animalpose"]).parse_args(["--best-oks=0.3", "--bogus", "--gpus", "0,1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith(
        "error: unrecognized arguments: --best-oks=0.3 --bogus --gpus; --best-oks: run state, kept in RUN/best.json; "
        "--gpus: use --device, CUDA_VISIBLE_DEVICES, or torchrun for several GPUs (--help lists the flags)"), err


def test_a_flag_after_the_overrides_is_named():
    from freenet.cli import config_from_args
    from freenet.config import ConfigError

    args = build_parser(SCRIPTS["finetune"]).parse_args(["MODEL.WIDTH", "8", "--device", "cpu"])
    with pytest.raises(ConfigError, match=r"^--device after the KEY VALUE overrides: flags go before them"):
        config_from_args(args)


@pytest.mark.parametrize("size, heat", [([80, 80], [20, 20]), ([64, 96], [16, 24]), ([64, 64], [32, 32]),
                                        ([0, 0], [0, 0])])
def test_input_sizes_the_network_cannot_take_are_refused_before_the_run(size, heat):
    from freenet.config import ConfigError, configured_joint_set, load_config

    cfg = load_config(None, ["MODEL.IMAGE_SIZE", str(size), "MODEL.HEATMAP_SIZE", str(heat)])
    with pytest.raises(ConfigError, match=r"must be square, a multiple of 32 .* and 4x MODEL.HEATMAP_SIZE"):
        configured_joint_set(cfg)
    assert configured_joint_set(load_config(None, ["MODEL.IMAGE_SIZE", "[128,128]", "MODEL.HEATMAP_SIZE",
                                                   "[32,32]"])).num_joints == 17


def test_a_resumed_run_folder_is_rid_of_unfinished_writes(tmp_path):
    """A process killed inside an atomic write (SIGKILL: no cleanup runs) leaves its temporary file."""
    from freenet.engine import RunDir

    (tmp_path / "checkpoint.pth").write_bytes(b"kept")
    (tmp_path / ".checkpoint.pth.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("a user's file")
    run = RunDir.of_checkpoint(tmp_path / "checkpoint.pth")
    assert run.path == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "notes.tmp"]


def test_a_torn_last_metrics_line_is_dropped_with_an_unfinished_evaluation(tmp_path):
    """Recorder.forget_from: the lines of evaluations at the step and later go, and so does a line a
    killed process left half-written; val_log.txt keeps as many lines as metrics.jsonl."""
    from freenet.engine import Recorder, RunDir

    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n{"ste')
    (tmp_path / "val_log.txt").write_text("epoch:0 a\nepoch:1 b\n")
    recorder = Recorder(RunDir(tmp_path))
    recorder.forget_from(1)
    recorder.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (tmp_path / "val_log.txt").read_text() == "epoch:0 a\n"


def test_evaluation_runs_in_eval_mode_and_restores_the_mode():
    from freenet.engine import evaluate_in_eval_mode

    model = torch.nn.BatchNorm2d(3)
    assert evaluate_in_eval_mode(lambda m: {"training": m.training}, model) == {"training": False}
    assert model.training

    def failing(m):
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError):
        evaluate_in_eval_mode(failing, model)
    assert model.training
