"""Command line of the FreeNet training scripts (SPEC §10) and the assembly of a run.

Every ``train_*.py`` / ``finetune.py`` script is ``run(ScriptDefaults(...))``: what differs between
them is a yaml under ``experiments/`` and a few flag defaults, never code.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from freenet import distributed
from freenet.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_model_weights
from freenet.cli import (NON_NEGATIVE, ORIGINAL_FLAGS, POSITIVE, HelpFormatter, Parser, add_run_args,
                         parse_run_args, real, run_main, setup_run)
from freenet.config import ConfigError
from freenet.cuda_graphs import GraphedStep
from freenet.data.dataset import KeypointDataset, stream_loader
from freenet.data.settings import build_training_sets
from freenet.data.transforms import AugmentConfig, TwoViewTransform
from freenet.engine import LoopConfig, RunDir, TrainState, restore, train_loop
from freenet.freenet_step import FreeNetHyper, FreeNetStep
from freenet.joints import JointSet
from freenet.models import PoseHighResolutionNet, compile_regions, to_sync_batchnorm
from freenet.optim import make_optimized

log = logging.getLogger("freenet")


@dataclass(frozen=True)
class ScriptDefaults:
    """What one entry script changes (SPEC §10)."""

    cfg: str                        # yaml under experiments/
    batch_size: int                 # 4 for the AP-10K scripts, 8 for the mixed ones
    pretrained_weights_name: str    # teacher file; may use {level} / {ratio}
    description: str = ""
    needs_level: bool = False       # train_split_ap10k.py: --level (and --anns-info-path)
    has_split_file: bool = False    # --anns-info-path overrides DATASET.SPLIT_FILE
    sample_ratio: float | None = None  # mixed scripts: --sample-ratio default


# The five FreeNet entry scripts differ only in these (SPEC §3.4, §10).
SCRIPTS = {
    "train_split_ap10k": ScriptDefaults(
        cfg="experiments/ap10k/freenet_split.yaml", batch_size=4,
        pretrained_weights_name="ap_10k_split_level_{level}.pth", needs_level=True,
        description="FreeNet on AP-10K with synthetic missing-joint splits (--level 0: 5 shared joints, 1: 9)."),
    "train_synthetic_ap10k": ScriptDefaults(
        cfg="experiments/ap10k/freenet_25_5.yaml", batch_size=4, pretrained_weights_name="pretrained_25_5.pth",
        has_split_file=True,
        description="FreeNet on three synthesized non-standard datasets from AP-10K ('25 -> 5' setting)."),
    "finetune": ScriptDefaults(
        cfg="experiments/ap10k/freenet_25_5.yaml", batch_size=4, pretrained_weights_name="pretrained_25_5.pth",
        has_split_file=True,
        description="FreeNet fine-tuning run of the '25 -> 5' AP-10K setting (same data and step; the paper runs "
                    "6000 steps with --down-step 6000)."),
    "train_ap10k_animalpose": ScriptDefaults(
        cfg="experiments/ap10k_animalpose/freenet_ratio.yaml", batch_size=8,
        pretrained_weights_name="ap_10k_animal_pose_mix_SL_{ratio}_hrnet.pth", sample_ratio=0.1,
        description="FreeNet on AP-10K + AnimalPose (21 union joints), a random --sample-ratio of records labeled."),
    "train_ap10k_animalpose_tigdog": ScriptDefaults(
        cfg="experiments/ap10k_animalpose_tigdog/freenet_ratio.yaml", batch_size=8,
        pretrained_weights_name="union_sl_{ratio}.pth", sample_ratio=0.1,
        description="FreeNet on AP-10K + AnimalPose + TigDog (24 union joints), a random --sample-ratio labeled."),
}

# The ImageNet HRNet-W32 the student starts from (README: training); without it, random weights.
STUDENT_INIT = "pretrained_ori.pth"

# Base networks the authors released, by the default file name they stand in for (README: released weights).
RELEASED_BASE_NETWORKS = {
    "pretrained_25_5.pth": "25_5_imgs_SL_hrnet_pretrained.pth (renamed pretrained_25_5.pth)",
    "ap_10k_animal_pose_mix_SL_0.1_hrnet.pth": "ap_10k_animal_pose_mix_SL_0.1_hrnet.pth",
}


def build_parser(d: ScriptDefaults) -> argparse.ArgumentParser:
    p = Parser(description=d.description, formatter_class=HelpFormatter, hints=ORIGINAL_FLAGS,
               epilog="Trailing KEY VALUE pairs override the yaml, e.g. MODEL.WIDTH 8 MODEL.IMAGE_SIZE [64,64] "
                      "MODEL.HEATMAP_SIZE [16,16]; flags go before them")
    a = p.add_argument
    a("--total-steps", type=POSITIVE, default=120000, help="length of the run and of the LR schedule")
    a("--eval-step", type=POSITIVE, default=5, help="evaluate and checkpoint every N steps")
    a("--start-step", type=NON_NEGATIVE, default=0, help="first step of a fresh run (schedules and data start there)")
    a("--stop-step", type=POSITIVE, default=None,
      help="save and stop before this step, keeping the --total-steps schedule (e.g. a job's time limit); "
           "continue later with --resume")
    a("--warmup-steps", type=NON_NEGATIVE, default=900, help="linear LR warmup of both networks")
    a("--student-wait-steps", type=NON_NEGATIVE, default=0, help="steps with the student's LR at 0 before its warmup")
    a("--down-step", type=POSITIVE, default=9000, help="steps over which the pseudo-label keep ratio ramps down")
    a("--feedback-steps-start", type=NON_NEGATIVE, default=3000,
      help="first step with the feedback term in the teacher's loss")
    a("--feedback-steps-complete", type=NON_NEGATIVE, default=6000,
      help="step at which the feedback factor reaches its weight")
    a("--feedback-weight", type=real(0), default=2.0, help="final factor of the feedback term")
    a("--teacher_lr", type=real(0), default=1e-5, help="AdamW learning rate of the teacher (base network)")
    a("--student_lr", type=real(0), default=1e-3, help="AdamW learning rate of the student (adaptation network)")
    a("--wd", "--weight-decay", dest="weight_decay", type=real(0), default=1e-4, help="AdamW weight decay")
    a("--grad-clip", type=real(0), default=1e9,
      help="gradient-norm clip of both networks (0: none, as in the original)")
    a("--batch-size", type=POSITIVE, default=d.batch_size, help="labeled batch size B")
    a("--mu", type=NON_NEGATIVE, default=1,
      help="unlabeled batch = B * mu (0: labeled-only ablation, no pseudo labels)")
    compiling = p.add_mutually_exclusive_group()
    compiling.add_argument("--compile", action="store_true",
                           help="torch.compile both networks (opt-in; minutes of compiling first)")
    compiling.add_argument("--compile-regions", action="store_true",
                           help="torch.compile each residual block and HRNet module of both networks in place "
                                "instead: about half the compiling")
    a("--cuda-graphs", action="store_true",
      help="record the whole step as a CUDA graph and replay it: one launch instead of over 12,000 (one CUDA process)")
    a("--sync-bn", action="store_true", help="SyncBatchNorm across ranks under torchrun (CUDA)")
    a("--pretrained-model-path", default="./pretrained_weights", help="folder of the initial weights")
    a("--pretrained-weights-name", default=d.pretrained_weights_name,
      help="teacher (base network) weights in that folder; '' = random init (not the method)")
    a("--student-weights", default=STUDENT_INIT,
      help=f"adaptation-network init in that folder (non-strict); the default {STUDENT_INIT} absent = random init")
    add_run_args(p, d.cfg, needs_level=d.needs_level, has_split_file=d.has_split_file, sample_ratio=d.sample_ratio)
    return p


def load_student_init(model: torch.nn.Module, path: Path, required: bool = False) -> None:
    """Non-strict init of the adaptation network (SPEC §10): missing/unexpected keys are reported,
    shape mismatches refused except the final layer (another joint count). Without the default
    ImageNet file it starts from random weights; a ``required`` one (named by ``--student-weights``)
    must exist."""
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: --student-weights not found (leave the flag out to start from "
                                  f"{STUDENT_INIT} of --pretrained-model-path if present, else from random weights)")
        log.warning("student init %s not found: the adaptation network starts from random weights", path)
        return
    state, _ = extract_state_dict(load_checkpoint(path), "", str(path))
    own = model.state_dict()
    bad = [k for k in state if k in own and state[k].shape != own[k].shape and not k.startswith("final_layer.")]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors have other shapes than the model (e.g. {bad[0]}: "
                              f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
    state = {k: v for k, v in state.items() if k not in own or v.shape == own[k].shape}
    if not any(k in own for k in state):
        raise CheckpointError(f"{path}: none of its {len(state)} tensors is a tensor of the network (e.g. "
                              f"{next(iter(state), 'none')} against {next(iter(own))}): not HRNet weights")
    result = model.load_state_dict(state, strict=False)
    log.info("student init from %s: %d tensors loaded, %d missing (e.g. %s), %d unexpected (e.g. %s)", path,
             len(state) - len(result.unexpected_keys), len(result.missing_keys),
             result.missing_keys[:2], len(result.unexpected_keys), result.unexpected_keys[:2])


def build_model(cfg, joint_set: JointSet, pose_init: bool = True) -> PoseHighResolutionNet:
    return PoseHighResolutionNet(num_joints=joint_set.num_joints, width=cfg.MODEL.WIDTH, pose_init=pose_init)


def augment_config(cfg) -> AugmentConfig:
    return AugmentConfig(input_size=cfg.MODEL.IMAGE_SIZE[0], heatmap_size=cfg.MODEL.HEATMAP_SIZE[0],
                         sigma=cfg.MODEL.SIGMA, half_body_prob=cfg.DATASET.PROB_HALF_BODY,
                         scale_range=(1 - cfg.DATASET.SCALE_FACTOR, 1 + cfg.DATASET.SCALE_FACTOR),
                         max_rotation=cfg.DATASET.ROT_FACTOR, flip_prob=0.5 if cfg.DATASET.FLIP else 0.0)


def build_evaluator(cfg, joint_set: JointSet, device: torch.device):
    """The validation set, built once; called on each network at every evaluation (SPEC §9, §11)."""
    from freenet.evaluation import Evaluator

    evaluator = Evaluator.from_config(cfg, joint_set)
    return lambda model: evaluator(model, device)


def run(script: str | ScriptDefaults, argv=None) -> int:
    """Parse, build and train (``script``: a key of :data:`SCRIPTS`). Returns the process exit code."""
    defaults = SCRIPTS[script] if isinstance(script, str) else script
    parser = build_parser(defaults)
    return run_main(lambda: train_freenet(*parse_run_args(parser, argv, ("level",) if defaults.needs_level else ())))


def train_freenet(args, notes: list[str] = ()) -> dict:
    """A FreeNet run from parsed flags; ``notes``: warnings of :func:`~freenet.cli.parse_run_args`."""
    setup = setup_run(args, notes)
    cfg, device, joint_set, amp_dtype = setup.cfg, setup.device, setup.joint_set, setup.amp_dtype
    channels_last = args.channels_last
    compiling = args.compile or args.compile_regions
    if args.feedback_steps_complete < args.feedback_steps_start:   # the ramp would turn the feedback negative
        raise ConfigError(f"--feedback-steps-complete {args.feedback_steps_complete} is before "
                          f"--feedback-steps-start {args.feedback_steps_start}")
    loop = LoopConfig(args.total_steps, args.eval_step, [tuple(x) for x in cfg.FREENET.EVAL_SCHEDULE],
                      stop_step=args.stop_step)
    ends = (f"ends at step {loop.end()} (--total-steps {args.total_steps}"
            + (f", --stop-step {args.stop_step}" if args.stop_step else "") + ")")
    if not args.resume and args.start_step >= loop.end():
        raise ConfigError(f"nothing to train: --start-step {args.start_step} and the run {ends}")
    if args.cuda_graphs and (compiling or distributed.world_size() > 1 or device.type != "cuda"):
        raise ConfigError(f"--cuda-graphs needs one CUDA process without --compile/--compile-regions (here: "
                          f"{device}, {distributed.world_size()} process(es), compiling: {compiling})")

    try:
        # the labeled ratio of the config, which a DATASET.SAMPLE_RATIO override may have set
        ratio = cfg.DATASET.SAMPLE_RATIO if getattr(args, "sample_ratio", None) is not None else ""
        teacher_name = args.pretrained_weights_name.format(level=getattr(args, "level", ""), ratio=ratio)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"--pretrained-weights-name {args.pretrained_weights_name!r}: the only fields are "
                          f"{{level}} and {{ratio}} ({type(e).__name__}: {e})") from None

    sets = build_training_sets(cfg.DATASET, joint_set, cfg.SEED)
    for note in sets.notes:
        log.info(note)
    if args.mu > 0 and not sets.unlabeled:
        raise ConfigError(f"no unlabeled training records for --mu {args.mu} (use --mu 0 for labeled-only training): "
                          + "; ".join(sets.notes))
    evaluate = build_evaluator(cfg, joint_set, device) if distributed.is_main() else None  # rank 0 evaluates

    torch.manual_seed(cfg.SEED)
    # the student keeps PyTorch's default init where --student-weights has no tensor (the head, with
    # ImageNet weights), as in the original, which never applies HRNet's pose init to its networks
    teacher_net, student_net = build_model(cfg, joint_set), build_model(cfg, joint_set, pose_init=False)
    weights_dir = Path(args.pretrained_model_path)
    if not args.resume:
        if teacher_name:
            if not (weights_dir / teacher_name).is_file():
                released = RELEASED_BASE_NETWORKS.get(teacher_name)
                download = f", download the authors' {released} (README: released weights)" if released else ""
                raise CheckpointError(
                    f"{weights_dir / teacher_name}: base-network (teacher) weights not found. Train them with "
                    f"train_supervised.py --cfg {args.cfg} ... --save-as {weights_dir / teacher_name}{download}, "
                    f"or pass --pretrained-weights-name '' for random init")
            where = load_model_weights(teacher_net, weights_dir / teacher_name)
            log.info("teacher (base network) from %s [%s]", weights_dir / teacher_name, where)
        else:
            log.warning("no --pretrained-weights-name: the base network starts from random weights")
        load_student_init(student_net, weights_dir / args.student_weights, args.student_weights != STUDENT_INIT)
    if args.sync_bn and distributed.is_enabled():
        teacher_net, student_net = (to_sync_batchnorm(n) for n in (teacher_net, student_net))
    for net in (teacher_net, student_net):
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        distributed.broadcast_model(net)

    fp16 = amp_dtype == torch.float16
    teacher = make_optimized(teacher_net, args.teacher_lr, args.weight_decay, args.warmup_steps, args.total_steps, 0,
                             args.grad_clip, device, fp16)
    student = make_optimized(student_net, args.student_lr, args.weight_decay, args.warmup_steps, args.total_steps,
                             args.student_wait_steps, args.grad_clip, device, fp16)
    if args.compile:
        teacher.model, student.model = torch.compile(teacher_net), torch.compile(student_net)
    elif args.compile_regions:      # in place: the networks and their state_dicts stay the plain ones
        for net in (teacher_net, student_net):
            compile_regions(net)
    hyper = FreeNetHyper(down_step=args.down_step, feedback_start=args.feedback_steps_start,
                         feedback_complete=args.feedback_steps_complete, feedback_weight=args.feedback_weight,
                         pl_min_confidence=cfg.FREENET.PL_MIN_CONFIDENCE,
                         feedback_band=tuple(cfg.FREENET.FEEDBACK_BAND))
    step_fn = FreeNetStep(teacher, student, joint_set, hyper, device, amp_dtype, channels_last)
    if args.cuda_graphs:
        step_fn = GraphedStep(step_fn)

    if args.resume:
        run_dir = RunDir.of_checkpoint(args.resume)
        state = restore(args.resume, teacher, student)
        if state.step + 1 >= loop.end() and state.pending_eval is None:  # else the last evaluation is owed
            raise ConfigError(f"{args.resume}: nothing to train: the run has done {state.step + 1} steps and {ends}; "
                              "give a larger --total-steps (or --stop-step) to train on")
        run_dir.write_settings(cfg.dump(), vars(args))   # the next --resume reads this command's flags
        log.info("resumed %s at step %d", args.resume, state.step + 1)
    else:
        run_dir = RunDir.create(args.output_dir, args.name, cfg.dump(), vars(args))
        state = TrainState(step=args.start_step - 1)
        if args.start_step:
            for net in (teacher, student):  # the LR schedule starts where the run starts
                net.scheduler.last_epoch = args.start_step - 1
                net.scheduler.step()
    log.info("run directory %s", run_dir.path)

    aug = augment_config(cfg)
    rank, world = distributed.rank(), distributed.world_size()
    labeled_workers, unlabeled_workers = split_workers(cfg.WORKERS, args.mu)
    pin = device.type == "cuda"
    labeled = stream_loader(KeypointDataset(sets.labeled, TwoViewTransform(joint_set, aug), cfg.SEED, stream=0),
                            args.batch_size, state.step + 1, labeled_workers, pin, rank, world)
    if args.mu > 0:
        unlabeled = iter(stream_loader(
            KeypointDataset(sets.unlabeled, TwoViewTransform(joint_set, aug, with_target=False), cfg.SEED, stream=1),
            args.batch_size * args.mu, state.step + 1, unlabeled_workers, pin, rank, world))
    else:  # labeled-only ablation: no unlabeled stream at all
        unlabeled = itertools.repeat(None)
    extra = {"joint_set": joint_set.name, "num_joints": joint_set.num_joints, "width": cfg.MODEL.WIDTH,
             "config": cfg.dump()}
    state = train_loop(step_fn, teacher, student, iter(labeled), unlabeled, evaluate, loop, state, run_dir, extra)
    summary = {"best_oks": state.best_oks, "best_pck": state.best_pck, "steps_done": state.step + 1,
               "run_dir": str(run_dir.path)}
    log.info("%s: %s", "done" if state.step + 1 == args.total_steps else "stopped", json.dumps(summary))
    return summary


def split_workers(workers: int, mu: int) -> tuple[int, int]:
    """Loader processes in proportion to each stream's batch (1 : mu), ``workers`` in all; both 0 when
    workers is 0. A single worker serves the larger, unlabeled stream (the labeled one loads in the
    main process)."""
    if workers <= 0:
        return 0, 0
    if mu == 0:
        return workers, 0
    if workers == 1:
        return 0, 1
    labeled = max(1, round(workers / (1 + mu)))
    return labeled, max(1, workers - labeled)
