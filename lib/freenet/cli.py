"""Command-line pieces shared by the training scripts: common flags, flags -> config, clean errors."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from freenet import distributed
from freenet.checkpoint import CheckpointError
from freenet.config import ConfigError, configured_joint_set, load_config
from freenet.device import DeviceError, autocast_dtype, configure_backends, resolve_device
from freenet.errors import DataError, EvaluationError
from freenet.joints import JointSet, JointSetError

log = logging.getLogger("freenet")

# Errors a user can fix (bad data, missing file, wrong checkpoint): one line, no traceback.
USER_ERRORS = (DataError, CheckpointError, ConfigError, JointSetError, EvaluationError, DeviceError,
               FileNotFoundError)


def add_run_args(p: argparse.ArgumentParser, cfg: str, *, needs_level=False, has_split_file=False,
                 sample_ratio: float | None = None) -> None:
    """Flags every training script has (SPEC §10), the setting flags, and trailing KEY VALUE overrides."""
    a = p.add_argument
    a("--cfg", default=cfg, help="experiment yaml (data, joint set, model, evaluation)")
    a("--name", default="ours", help="run name: the run directory is <output-dir>/<name>_<date_time>")
    a("--data-root", default=None, help="data root (layout: README, Data); default: DATASET.ROOT of the yaml")
    a("--output-dir", default="./experiment")
    a("--resume", default=None, help="checkpoint.pth of a run to continue")
    a("--workers", type=int, default=8, help="data-loader processes (0 = load in the main process)")
    a("--seed", type=int, default=2)
    a("--keypoints-path", default=None, help="joint-set name or JSON file; default: DATASET.JOINTS of the yaml")
    a("--num-joints", type=int, default=None, help="must match the joint set (17, 21 or 24)")
    a("--device", default=None, help="auto, cpu, cuda, cuda:N (default: DEVICE of the yaml)")
    a("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    a("--amp-dtype", choices=("fp16", "bf16"), default="fp16")
    if needs_level:
        a("--level", type=int, required=True, choices=(0, 1), help="0: 5 shared joints, 1: 9 shared joints")
    if needs_level or has_split_file:
        a("--anns-info-path", default=None, help="split file; default: DATASET.SPLIT_FILE of the yaml")
    if sample_ratio is not None:
        a("--sample-ratio", type=float, default=sample_ratio, help="labeled fraction of the pooled train records")
    a("opts", nargs=argparse.REMAINDER, help="yacs KEY VALUE overrides, e.g. MODEL.WIDTH 8")


def config_from_args(args):
    """yaml <- flags that name config keys <- trailing KEY VALUE overrides; frozen."""
    flag_keys = [("data_root", "DATASET.ROOT"), ("keypoints_path", "DATASET.JOINTS"),
                 ("num_joints", "MODEL.NUM_JOINTS"), ("device", "DEVICE"), ("sample_ratio", "DATASET.SAMPLE_RATIO"),
                 ("anns_info_path", "DATASET.SPLIT_FILE"), ("workers", "WORKERS"), ("seed", "SEED")]
    opts = []
    for attr, key in flag_keys:
        value = getattr(args, attr, None)
        if value is not None:
            opts += [key, str(value)]
    cfg = load_config(args.cfg, opts + list(args.opts or []))
    level = getattr(args, "level", None)
    if level is not None and "{level}" in cfg.DATASET.SPLIT_FILE:
        cfg.defrost()
        cfg.DATASET.SPLIT_FILE = cfg.DATASET.SPLIT_FILE.format(level=level)
        cfg.freeze()
    return cfg


@dataclass(frozen=True)
class RunSetup:
    cfg: object                      # the frozen yacs config
    device: torch.device
    joint_set: JointSet
    amp_dtype: torch.dtype | None    # autocast dtype, None = fp32


def setup_run(args) -> RunSetup:
    """Config from the flags, the one device decision, backend settings, joint set and precision."""
    cfg = config_from_args(args)
    device = setup_device(cfg)
    configure_backends(device, cfg.CUDNN.BENCHMARK)
    return RunSetup(cfg, device, configured_joint_set(cfg), autocast_dtype(device, args.amp, args.amp_dtype))


def setup_device(cfg) -> torch.device:
    """Join torchrun's process group if launched by it, then decide the device once."""
    wants_cuda = cfg.DEVICE.startswith("cuda") or (cfg.DEVICE == "auto" and torch.cuda.is_available())
    local_rank = distributed.init_from_env("cuda" if wants_cuda else "cpu")
    logging.basicConfig(level=logging.INFO if distributed.is_main() else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return resolve_device(cfg.DEVICE, local_rank)


def run_main(fn: Callable[[], object]) -> int:
    """Run ``fn``; a user error prints one line and exits 1 (no traceback)."""
    try:
        fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0
