"""Command-line pieces shared by the training scripts: common flags, flags -> config, clean errors."""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import torch

from freenet import distributed
from freenet.checkpoint import CheckpointError
from freenet.config import ConfigError, configured_joint_set, load_config, value_of
from freenet.data.splits import SPLIT_PRESETS
from freenet.device import DeviceError, autocast_dtype, configure_backends, resolve_device, usable_cpus
from freenet.errors import USER_ERROR_EXIT, DataError, EvaluationError, TrainingError
from freenet.fileio import why_unwritable
from freenet.joints import JointSet, JointSetError

log = logging.getLogger("freenet")

# Errors a user can fix (bad data, missing file, wrong checkpoint): one line, no traceback, USER_ERROR_EXIT.
USER_ERRORS = (DataError, CheckpointError, ConfigError, JointSetError, EvaluationError, DeviceError, TrainingError,
               FileNotFoundError)


def at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (``--eval-step 0`` is refused by name, not by a ZeroDivisionError)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE, NON_NEGATIVE = at_least(1), at_least(0)


def real(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``): a negative
    ``--grad-clip`` would reverse the gradients without a word."""
    text_range = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high < math.inf else \
        f"{'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"must be {'in ' if high < math.inf else ''}{text_range}, got {text}")
        return value
    parse.__name__ = f"number {text_range}"
    return parse


def folder_path(text: str) -> str:
    """argparse type of a folder to be made (``--output-dir``): refused at once where a file stands in
    its way or the folder cannot be written, instead of a traceback after the data has loaded."""
    problem = why_unwritable(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def file_path(text: str) -> str:
    """argparse type of a file to be written (``--save-as``): a file name whose folder can be made."""
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name in it")
    folder_path(str(Path(text).parent))
    return text


def crop_size(text: str) -> int:
    """argparse type of --size: the network halves its input five times, so a positive multiple of 32."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32 (e.g. 64, 256), got {value}")
    return value


def prepare_outputs(picture: str, data: str | None) -> None:
    """Refuse, before any work, an --out OpenCV cannot encode and an output path no file can be
    written at (a folder, or a file where its folder would be); the files' folders are made when
    they are written."""
    if not cv2.haveImageWriter(picture):
        raise DataError(picture, "--out needs an image extension OpenCV can write (e.g. .png, .jpg)")
    for flag, path in (("--out", picture), ("--json", data)):
        try:
            if path:
                file_path(path)
        except argparse.ArgumentTypeError as e:
            raise DataError(path, f"{flag}: {e}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each flag's default, except where there is none (None, '', or a switch that is off)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every other user error (the usage block of some thirty
    flags would bury the reason). ``hints`` map a flag the script does not take to what to use."""

    def __init__(self, *args, hints: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hints = hints or {}

    def error(self, message: str):
        _, _, unknown = message.partition("unrecognized arguments: ")
        flags = [token.split("=")[0] for token in unknown.split()]
        advice = [f"{flag}: {hint}" for flag in flags for prefix, hint in self.hints.items() if flag.startswith(prefix)]
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {'; '.join([message, *advice])} (--help lists the flags)\n")


# The original code's training flags not taken over, and what to use instead (README, Training).
ORIGINAL_FLAGS = {"--gpus": "use --device, CUDA_VISIBLE_DEVICES, or torchrun for several GPUs",
                  "--fixed-size": "set MODEL.IMAGE_SIZE", "--info": "use --name",
                  "--uda-steps": "read by nothing in the method", "--best-": "run state, kept in RUN/best.json"}


def add_run_args(p: argparse.ArgumentParser, cfg: str, *, needs_level=False, has_split_file=False,
                 sample_ratio: float | None = None) -> None:
    """Flags every training script has (SPEC §10), the setting flags, and trailing KEY VALUE overrides."""
    a = p.add_argument
    a("--cfg", default=cfg, help="experiment yaml (data, joint set, model, evaluation)")
    a("--name", default="ours", help="run name: the run directory is <output-dir>/<name>_<date_time>")
    a("--data-root", default=None, help="data root (layout: README, Data); default: DATASET.ROOT of the yaml")
    a("--output-dir", type=folder_path, default="./experiment", help="parent folder of the run directories")
    a("--resume", default=None, help="RUN/checkpoint.pth: continue that run with its own flags and config "
                                      "(RUN/args.json, RUN/config.yaml); flags given again win")
    a("--workers", type=NON_NEGATIVE, default=None,
      help="data-loader processes (0 = load in the main process; default: WORKERS of the yaml, 8, at most the "
           "CPU cores this process may use)")
    a("--seed", type=NON_NEGATIVE, default=2, help="seed of the weights' init, the labeled subset and the data stream")
    a("--keypoints-path", default=None, help="joint-set name or JSON file; default: DATASET.JOINTS of the yaml")
    a("--num-joints", type=POSITIVE, default=None, help="must match the joint set's joint count (a check)")
    a("--device", default=None, help="auto, cpu, cuda, cuda:N; default: DEVICE of the yaml")
    a("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    a("--amp-dtype", choices=("fp16", "bf16"), default="fp16", help="autocast dtype of --amp")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=True,
      help="NHWC activations (faster convolutions on CUDA and on the CPU)")
    if needs_level:  # required, but a --resume reads it from the run (see parse_run_args)
        a("--level", type=int, default=None, choices=(0, 1), help="0: 5 shared joints, 1: 9 shared joints (required)")
    if needs_level or has_split_file:
        a("--anns-info-path", default=None, help="split file; default: DATASET.SPLIT_FILE of the yaml")
    if sample_ratio is not None:
        a("--sample-ratio", type=real(0, 1), default=sample_ratio, help="labeled fraction of the pooled train records")
    a("opts", nargs=argparse.REMAINDER, help="yacs KEY VALUE overrides, e.g. MODEL.WIDTH 8")


# Flags that set a config key, and the key each sets.
FLAG_KEYS = {"data_root": "DATASET.ROOT", "keypoints_path": "DATASET.JOINTS", "num_joints": "MODEL.NUM_JOINTS",
             "device": "DEVICE", "sample_ratio": "DATASET.SAMPLE_RATIO", "anns_info_path": "DATASET.SPLIT_FILE",
             "workers": "WORKERS", "seed": "SEED"}


def config_from_args(args):
    """yaml <- flags that name config keys <- trailing KEY VALUE overrides; frozen."""
    opts = []
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            opts += [key, str(value)]
    cfg = load_config(args.cfg, opts + list(args.opts or []))
    if getattr(args, "workers", None) is None:  # more loader processes than cores only adds switching
        cfg.defrost()
        cfg.WORKERS = min(cfg.WORKERS, usable_cpus())
        cfg.freeze()
    level = getattr(args, "level", None)
    if level is None and "{level}" in cfg.DATASET.SPLIT_FILE:
        raise ConfigError(f"{args.cfg}: DATASET.SPLIT_FILE {cfg.DATASET.SPLIT_FILE} needs --level 0 or 1")
    if level is not None:
        cfg.defrost()
        cfg.DATASET.SPLIT_FILE = cfg.DATASET.SPLIT_FILE.format(level=level)
        if not cfg.TEST.SHARED_JOINTS:  # PCK per part counts the split's shared joints (§11.8), as the
            cfg.TEST.SHARED_JOINTS = list(SPLIT_PRESETS[f"level{level}"]["shared"])  # original's level did
        cfg.freeze()
    return cfg


# Flags that say how a run executes, not what it computes: a --resume takes them from its own
# command line. Every other flag comes from the run's args.json unless given again.
EXECUTION_FLAGS = frozenset({"resume", "workers", "device", "stop_step", "stop_epoch", "start_step", "compile",
                             "compile_regions", "cuda_graphs", "channels_last", "sync_bn", "data_root", "output_dir",
                             "name", "cfg", "opts"})
_NOT_GIVEN = object()


def given_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The dests the command line sets (defaults excluded; trailing overrides count when present)."""
    probe = argparse.Namespace(**{dest: _NOT_GIVEN for dest in vars(parser.parse_args(argv))})
    parser.parse_args(argv, namespace=probe)  # argparse fills in defaults only where an attribute is missing
    return {dest for dest, value in vars(probe).items() if value is not _NOT_GIVEN and value != []}


def parse_run_args(parser: argparse.ArgumentParser, argv=None,
                   required: tuple[str, ...] = ()) -> tuple[argparse.Namespace, list[str]]:
    """Parse a training command line. With ``--resume RUN/checkpoint.pth`` the run continues with its
    own settings (SPEC §9: a resumed run equals an uninterrupted one): every flag not given again comes
    from ``RUN/args.json``, the config from ``RUN/config.yaml``, and the trailing overrides add to the
    run's (a flag given again, such as ``--data-root``, also beats the run's override of its key).
    Returns the arguments and warnings for the log (flags given with other values than the run's).
    """
    args = parser.parse_args(argv)
    notes = []
    if args.resume:
        if not Path(args.resume).is_file():  # before anything loads: a typo costs no data loading
            parser.error(f"--resume {args.resume}: checkpoint file not found")
        run = Path(args.resume).parent
        saved_file = run / "args.json"
        if saved_file.is_file():
            try:
                saved = json.loads(saved_file.read_text())
            except (OSError, ValueError) as e:
                raise DataError(saved_file, f"cannot read the run's arguments ({e})") from e
            given = given_flags(parser, argv)
            new_opts = list(args.opts or [])
            merged = vars(args)
            for dest, value in saved.items():
                if dest not in merged or dest in EXECUTION_FLAGS:
                    continue
                if dest not in given:
                    merged[dest] = value
                elif json.dumps(merged[dest], default=str) != json.dumps(value, default=str):
                    notes.append(f"{dest} {merged[dest]} (the run used {value})")
            # the run's overrides, but not of a key a flag given again sets: that flag wins
            flagged = {FLAG_KEYS[dest] for dest in given if dest in FLAG_KEYS}
            saved_opts = list(saved.get("opts") or [])
            merged["opts"] = [x for key, value in zip(saved_opts[::2], saved_opts[1::2]) if key not in flagged
                              for x in (key, value)] + new_opts
            if "cfg" not in given:
                saved_cfg = run / "config.yaml"
                merged["cfg"] = str(saved_cfg) if saved_cfg.is_file() else saved.get("cfg", args.cfg)
                notes += _changed_keys(merged["cfg"], new_opts)
            args = argparse.Namespace(**merged)
            if notes:
                notes = ["--resume with other settings than the run: " + ", ".join(notes) +
                         "; the result will differ from an uninterrupted run"]
        else:
            notes.append(f"{saved_file} not found: the run continues with this command line's settings")
    missing = [dest for dest in required if getattr(args, dest, None) is None]
    if missing:
        parser.error("the following arguments are required: " + ", ".join(f"--{d.replace('_', '-')}" for d in missing))
    return args, notes


# Config keys that say how a run executes, not what it computes (a moved data root, another device).
EXECUTION_KEYS = ("DEVICE", "WORKERS", "DATASET.ROOT", "CUDNN.", "GPUS", "PRINT_FREQ", "LOG_DIR", "OUTPUT_DIR")


def _changed_keys(run_cfg: str, opts: list[str]) -> list[str]:
    """``KEY VALUE`` overrides of a --resume that change what the run computes: 'KEY new (the run
    used old)' for each."""
    keys = [k for k in opts[::2] if not str(k).startswith(EXECUTION_KEYS)]
    if not keys:
        return []
    before, after = load_config(run_cfg), load_config(run_cfg, opts)
    return [f"{k} {value_of(after, k)} (the run used {value_of(before, k)})" for k in keys
            if value_of(after, k) != value_of(before, k)]


@dataclass(frozen=True)
class RunSetup:
    cfg: object                      # the frozen yacs config
    device: torch.device
    joint_set: JointSet
    amp_dtype: torch.dtype | None    # autocast dtype, None = fp32


def setup_run(args, notes: Sequence[str] = ()) -> RunSetup:
    """Config from the flags, the one device decision, backend settings, joint set and precision;
    ``notes`` (from :func:`parse_run_args`) are logged once logging is set up."""
    cfg = config_from_args(args)
    device = setup_device(cfg)
    for note in notes:
        log.warning(note)
    configure_backends(device, cfg.CUDNN.BENCHMARK, cfg.CUDNN.DETERMINISTIC, cfg.CUDNN.ENABLED)
    return RunSetup(cfg, device, configured_joint_set(cfg), autocast_dtype(device, args.amp, args.amp_dtype))


def setup_device(cfg) -> torch.device:
    """Join torchrun's process group if launched by it, then decide the device once."""
    wants_cuda = cfg.DEVICE.startswith("cuda") or (cfg.DEVICE == "auto" and torch.cuda.is_available())
    local_rank = distributed.init_from_env("cuda" if wants_cuda else "cpu")
    logging.basicConfig(level=logging.INFO if distributed.is_main() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return resolve_device(cfg.DEVICE, local_rank)


def run_main(fn: Callable[[], object]) -> int:
    """Run ``fn``; a user error prints one line and exits USER_ERROR_EXIT (no traceback)."""
    try:
        fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT
    finally:
        distributed.shutdown()
        # A failed run's data loaders can outlive it in reference cycles through the traceback (a
        # worker's error, re-raised, refers to itself). Collected here, they stop their workers
        # cleanly; left to the interpreter's exit, the workers are terminated first, which the
        # DataLoader reports as a crash after the one-line error.
        gc.collect()
    return 0
