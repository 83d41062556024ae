"""yacs configuration: defaults (every key commented), experiment yamls, ``KEY VALUE`` overrides.

The convention is HRNet's: ``--cfg experiments/<setting>.yaml`` plus trailing ``KEY VALUE``
pairs on the command line (e.g. ``MODEL.WIDTH 8 MODEL.IMAGE_SIZE [64,64]``). The yaml holds what
differs between settings (data, joint set, model size, evaluation); the FreeNet optimisation
hyper-parameters are command-line flags (SPEC §10).
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Sequence

import yaml
from yacs.config import CfgNode as CN

REPO_ROOT = Path(__file__).resolve().parents[2]

_C = CN()
_C.OUTPUT_DIR = "output"          # evaluation / supervised-training outputs go under here
_C.LOG_DIR = "log"                # kept for compatibility with HRNet-style yamls (unused)
_C.GPUS = (0,)                    # accepted for compatibility; the device is chosen by DEVICE
_C.DEVICE = "auto"                # "auto" (CUDA if available), "cpu", "cuda" or "cuda:N"
_C.WORKERS = 8                    # data-loader worker processes
_C.PRINT_FREQ = 20                # accepted for compatibility (unused: progress bars and one line per evaluation)
_C.SEED = 2

_C.CUDNN = CN()
_C.CUDNN.BENCHMARK = True         # fixed input sizes: let cuDNN pick the fastest kernels
_C.CUDNN.DETERMINISTIC = False    # deterministic cuDNN kernels (slower; also turns BENCHMARK off)
_C.CUDNN.ENABLED = True           # False: PyTorch's own convolution kernels instead of cuDNN

_C.DATASET = CN()
_C.DATASET.ROOT = "data"          # data root with the layout of SPEC §3.1
_C.DATASET.DATASET = "ap10k"      # validation dataset key of the layout (ap10k, ap10k_animalpose, ...)
_C.DATASET.JOINTS = "ap10k"       # joint set: bundled name (resources/joints/) or a JSON file
_C.DATASET.TRAIN_SET = "train"
_C.DATASET.TRAIN_FILE = ""        # one COCO file already in DATASET.JOINTS order (e.g. tools/build_union.py's
                                  # annotations/train.json): replaces SOURCES/TRAIN_SET; records pooled per 'from'
_C.DATASET.TRAIN_IMAGE_DIR = ""   # ... folder its image file names are relative to (default: the file's folder)
_C.DATASET.VAL_SET = "val"
_C.DATASET.TEST_SET = "test"
_C.DATASET.VAL_ANN_FILE = ""      # explicit validation annotation file (overrides the layout)
_C.DATASET.VAL_IMAGE_DIR = ""     # ... and its image folder
_C.DATASET.FLIP = True            # random horizontal flip, p 0.5 (SPEC §4)
_C.DATASET.PROB_HALF_BODY = 0.3   # half-body crop probability (SPEC §4)
_C.DATASET.SCALE_FACTOR = 0.35    # crop scale s ~ U(1 - f, 1 + f) (SPEC §4: 0.65 .. 1.35)
_C.DATASET.ROT_FACTOR = 45        # integer rotation ~ U{-f .. f} degrees (SPEC §4)
_C.DATASET.SOURCES = ["ap10k"]    # training sources pooled in this order (SPEC §3.5); unused with TRAIN_FILE
_C.DATASET.LABELED = "all"        # labeled set: all | split | label_list_split | ratio (SPEC §3.4)
_C.DATASET.SPLIT_FILE = ""        # missing-joint split file (split / label_list_split)
_C.DATASET.LABEL_LIST = ""        # image-id list file (label_list_split)
_C.DATASET.SAMPLE_RATIO = 0.1     # labeled fraction (ratio)

_C.MODEL = CN()
_C.MODEL.NAME = "pose_hrnet"      # the only model (SPEC §13); another name is refused
_C.MODEL.NUM_JOINTS = 17          # must equal the joint set's size
_C.MODEL.WIDTH = 32               # HRNet width C (32 = HRNet-W32; tests use 8)
_C.MODEL.IMAGE_SIZE = [256, 256]  # input crop (w, h)
_C.MODEL.HEATMAP_SIZE = [64, 64]  # output heatmaps (w, h) = input / 4
_C.MODEL.SIGMA = 2.0              # Gaussian sigma of GT heatmaps, in heatmap pixels
_C.MODEL.PRETRAINED = ""          # ImageNet HRNet backbone file for train_supervised.py (optional)

_C.LOSS = CN()
_C.LOSS.USE_TARGET_WEIGHT = True  # mask unannotated joints (always on in FreeNet; False is refused)

_C.TRAIN = CN()                   # supervised base-network training (SPEC §12)
_C.TRAIN.BATCH_SIZE_PER_GPU = 32
_C.TRAIN.OPTIMIZER = "adam"       # the only optimiser of the base-network training (SPEC §12)
_C.TRAIN.LR = 0.001
_C.TRAIN.LR_FACTOR = 0.1          # multiply the LR by this at every LR_STEP epoch
_C.TRAIN.LR_STEP = [170, 200]
_C.TRAIN.WD = 0.0
_C.TRAIN.BEGIN_EPOCH = 0          # must be 0: a run continues with --resume RUN/checkpoint.pth
_C.TRAIN.END_EPOCH = 210
_C.TRAIN.SHUFFLE = True           # must be True: the data stream is the seeded shuffle of SPEC §3.5

_C.FREENET = CN()                 # FreeNet training loop (the optimisation numbers are command-line flags)
_C.FREENET.EVAL_SCHEDULE = []     # [[until_step, every], ...]: denser evaluation early on (SPEC §9)
_C.FREENET.PL_MIN_CONFIDENCE = 0.2  # floor of every part group's pseudo-label threshold (SPEC §7.1)
_C.FREENET.FEEDBACK_BAND = [0.2, 0.2]  # feedback band (SPEC §7.2): [top fraction above it, bottom fraction below]

_C.TEST = CN()                    # evaluation (SPEC §11)
_C.TEST.BATCH_SIZE_PER_GPU = 32
_C.TEST.MODEL_FILE = ""           # checkpoint to evaluate
_C.TEST.MODEL_KEY = ""            # key inside the checkpoint ('' = search, SPEC §11.9)
_C.TEST.FLIP_TEST = True          # average with the flipped input (SPEC §11.3)
_C.TEST.SHIFT_HEATMAP = True      # shift the flipped output one column right (SPEC §11.3)
_C.TEST.POST_PROCESS = True       # quarter-offset refinement (SPEC §11.4)
_C.TEST.USE_GT_BBOX = True        # FreeNet evaluates on GT boxes
_C.TEST.IN_VIS_THRE = 0.2         # joints above this count in the instance score (SPEC §11.5)
_C.TEST.OKS_THRE = 0.9            # OKS-NMS threshold (SPEC §11.5)
_C.TEST.PROTOCOL = "standard"     # "standard" (aligned sigmas) or "freenet" (paper's AP-10K list)
_C.TEST.SHARED_JOINTS = []        # "shared" joints of PCK per part (SPEC §11.8); [] = those every source
                                  # dataset of the joint set annotates (all of a single dataset's);
                                  # --level sets its split's (freenet.cli.config_from_args)
_C.TEST.RESULTS_FILE = ""         # score an existing COCO results JSON instead of running a model


def default_config() -> CN:
    return _C.clone()


class ConfigError(ValueError):
    """A yaml or ``KEY VALUE`` override that does not fit the configuration (unknown key, wrong type)."""


def resolve_path(path: str) -> str:
    """Relative yaml paths are tried as given, then against the repository root."""
    if not path or os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def configured_joint_set(cfg):
    """DATASET.JOINTS, checked against MODEL.NUM_JOINTS and the input/heatmap sizes (clear errors)."""
    from freenet.joints import JointSetError, load_joint_set

    joint_set = load_joint_set(cfg.DATASET.JOINTS)
    if cfg.MODEL.NUM_JOINTS != joint_set.num_joints:
        raise JointSetError(f"--num-joints / MODEL.NUM_JOINTS is {cfg.MODEL.NUM_JOINTS} but the joint set "
                            f"'{joint_set.name}' ({joint_set.path}) has {joint_set.num_joints} joints")
    size, heat = list(cfg.MODEL.IMAGE_SIZE), list(cfg.MODEL.HEATMAP_SIZE)
    if size[0] != size[1] or size[0] != 4 * heat[0] or heat[0] != heat[1] or size[0] % 32 or size[0] <= 0:
        raise ConfigError(f"MODEL.IMAGE_SIZE {size} must be square, a multiple of 32 (HRNet's four resolutions) "
                          f"and 4x MODEL.HEATMAP_SIZE {heat}")
    return joint_set


# HRNet keys this project has no other behaviour for: a value that would be silently ignored is refused.
FIXED_VALUES = {
    "MODEL.NAME": ("pose_hrnet", "the only model is HRNet"),
    "LOSS.USE_TARGET_WEIGHT": (True, "FreeNet always masks unannotated joints"),
    "TRAIN.OPTIMIZER": ("adam", "the base network trains with Adam"),
    "TRAIN.BEGIN_EPOCH": (0, "continue a run with --resume RUN/checkpoint.pth"),
    "TRAIN.SHUFFLE": (True, "the data stream is always the seeded shuffle of the records"),
}


def _at_least_0(v):
    return v >= 0


def _positive(v):
    return v > 0


def _fraction(v):
    return 0 <= v <= 1


def _band(v):
    return len(v) == 2 and all(isinstance(x, (int, float)) and x >= 0 for x in v) and sum(v) <= 1


# Numeric keys and the values they can take (NaN fails every test): a value outside would fail deep
# inside a run, or worse, train without a word (a negative sigma, a scale factor of 1 or more).
VALUE_RANGES = {
    "SEED": (_at_least_0, ">= 0"), "WORKERS": (_at_least_0, ">= 0"),
    "MODEL.WIDTH": (_positive, ">= 1"), "MODEL.SIGMA": (_positive, "> 0"),
    "DATASET.SAMPLE_RATIO": (_fraction, "in [0, 1]"), "DATASET.PROB_HALF_BODY": (_fraction, "in [0, 1]"),
    "DATASET.SCALE_FACTOR": (lambda v: 0 <= v < 1, "in [0, 1)"), "DATASET.ROT_FACTOR": (_at_least_0, ">= 0"),
    "TRAIN.BATCH_SIZE_PER_GPU": (_positive, ">= 1"), "TRAIN.LR": (_positive, "> 0"),
    "TRAIN.LR_FACTOR": (_positive, "> 0"), "TRAIN.WD": (_at_least_0, ">= 0"), "TRAIN.END_EPOCH": (_positive, ">= 1"),
    "TEST.BATCH_SIZE_PER_GPU": (_positive, ">= 1"), "TEST.IN_VIS_THRE": (_fraction, "in [0, 1]"),
    "TEST.OKS_THRE": (_fraction, "in [0, 1]"), "FREENET.PL_MIN_CONFIDENCE": (_at_least_0, ">= 0"),
    "FREENET.FEEDBACK_BAND": (_band, "[top, bottom]: two fractions >= 0 that sum to at most 1"),
}


def value_of(cfg: CN, key: str):
    """The value of a dotted config key (``MODEL.WIDTH``)."""
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _choices():
    from freenet.data.settings import LABELED_MODES

    return {"DATASET.LABELED": LABELED_MODES, "TEST.PROTOCOL": ("standard", "freenet")}


def check_config(cfg: CN, source: str) -> None:
    """Values the code cannot honour (:data:`FIXED_VALUES`), numbers out of range
    (:data:`VALUE_RANGES`), unknown names (modes, protocols, datasets of the data layout) and a
    malformed FREENET.EVAL_SCHEDULE raise :class:`ConfigError` naming the key and
    ``source`` (the yaml and/or the overrides)."""
    for key, (value, why) in FIXED_VALUES.items():
        if value_of(cfg, key) != value:
            raise ConfigError(f"{source}: {key} {value_of(cfg, key)!r} is not supported ({value!r}: {why})")
    for key, (valid, text) in VALUE_RANGES.items():
        if not valid(value_of(cfg, key)):
            raise ConfigError(f"{source}: {key} {value_of(cfg, key)!r} must be {text}")
    for key, choices in _choices().items():
        if value_of(cfg, key) not in choices:
            raise ConfigError(f"{source}: {key} {value_of(cfg, key)!r} must be one of {', '.join(choices)}")
    from freenet.data.coco import DATASETS

    named = [("DATASET.DATASET", cfg.DATASET.DATASET)] if not cfg.DATASET.VAL_ANN_FILE else []
    if not cfg.DATASET.TRAIN_FILE:
        named += [("DATASET.SOURCES", name) for name in cfg.DATASET.SOURCES]
    for key, name in named:
        if name not in DATASETS:
            raise ConfigError(f"{source}: {key} {name!r} is not a dataset of the data layout (one of "
                              f"{', '.join(DATASETS)}); other COCO files come in through DATASET.TRAIN_FILE and "
                              "DATASET.VAL_ANN_FILE (README, 'Your own data')")
    schedule = cfg.FREENET.EVAL_SCHEDULE
    if not all(isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(v, int) and v >= 1 for v in e)
               for e in schedule):
        raise ConfigError(f"{source}: FREENET.EVAL_SCHEDULE {schedule!r} must be [[until_step, every], ...] "
                          "with integers >= 1")


def _yacs_message(error: Exception) -> str:
    """yacs's error in one line: a type mismatch on a whole section (``MODEL:`` left empty) would
    otherwise print the section's every default."""
    match = re.match(r"Type mismatch \((.*?) vs\. (.*?)\) with values .* for config key: (\S+)$", str(error), re.S)
    if not match:
        return " ".join(str(error).split())
    expected, got, key = match.groups()
    if "CfgNode" in expected:
        return f"{key} is a section of keys, got {'nothing' if 'NoneType' in got else 'a single value'}"
    name = re.sub(r"<class '(.*)'>", r"\1", expected)
    value = str(error).rsplit(" vs. ", 1)[1].split(") for config key:")[0]
    return f"{key} must be of type {name}, got {value!r}"


def _as_typed(cfg: CN, opts: Sequence[str]) -> list:
    """``opts`` with each value read as its key's type where yacs would refuse it: yacs evaluates
    every override as Python, so a folder named ``2024`` or ``1e5`` would become a number, and
    ``TRAIN.LR 1`` an int, each failing the key's type check. Such strings stay text; such ints
    become floats."""
    fixed = list(opts)
    for k in range(0, len(fixed) - 1, 2):
        node = cfg
        for part in str(fixed[k]).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        value = fixed[k + 1]
        if isinstance(node, (str, float)) and isinstance(value, str):
            try:
                literal = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue  # yacs keeps it as text
            if isinstance(node, str) and not isinstance(literal, str):
                fixed[k + 1] = repr(value)
            elif isinstance(node, float) and type(literal) is int:
                fixed[k + 1] = repr(float(literal))
    return fixed


def _ints_to_floats(defaults: CN, loaded: CN) -> None:
    """A yaml's ``LR: 1`` where the default is a float: read as 1.0 (yacs would refuse the int)."""
    for key, value in loaded.items():
        default = defaults.get(key)
        if isinstance(value, CN) and isinstance(default, CN):
            _ints_to_floats(default, value)
        elif isinstance(default, float) and type(value) is int:
            loaded[key] = float(value)


def load_config(cfg_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Defaults <- yaml <- ``KEY VALUE`` overrides, checked (:func:`check_config`), then frozen.
    A malformed yaml, an unknown key or a value of the wrong type raises :class:`ConfigError`
    naming the yaml or the override."""
    cfg = default_config()
    sources = []
    if cfg_file:
        path = resolve_path(cfg_file)
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file {cfg_file} not found (also looked under {REPO_ROOT})")
        if os.path.isdir(path):
            raise ConfigError(f"config file {path} is a folder: give the yaml in it")
        try:
            with open(path, encoding="utf-8") as f:
                loaded = CN.load_cfg(f.read())   # YAML whatever the file's extension (yacs would run a .py)
            _ints_to_floats(cfg, loaded)
            cfg.merge_from_other_cfg(loaded)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a text file (a yaml config is expected)") from e
        except (AssertionError, KeyError, ValueError) as e:  # how yacs reports unknown keys / wrong types
            raise ConfigError(f"{path}: {_yacs_message(e)}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
        except (AttributeError, TypeError) as e:  # a top level that is a list or a scalar
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level ({e})") from e
        sources.append(str(path))
    if opts:
        flags = [o for o in opts[::2] if str(o).startswith("-")]
        if flags:
            raise ConfigError(f"{flags[0]} after the KEY VALUE overrides: flags go before them "
                              f"(e.g. --device cpu MODEL.WIDTH 8)")
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got {list(opts)}")
        try:
            cfg.merge_from_list(_as_typed(cfg, opts))
        except (AssertionError, KeyError, ValueError) as e:
            raise ConfigError(f"command-line override: {_yacs_message(e)}") from e
        sources.append("the command-line overrides")
    check_config(cfg, " + ".join(sources) or "defaults")
    cfg.freeze()
    return cfg
