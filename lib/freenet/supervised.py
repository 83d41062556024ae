"""Supervised training of the base network (SPEC §12): the FreeNet teacher's initialisation.

Trains one HRNet on the *labeled* records of any setting (the same yaml and setting flags as the
FreeNet scripts) with ori-view transforms, the §5.4 loss and Adam (lr 1e-3, ×0.1 at epochs 170
and 200 of 210 by default, from the yaml's TRAIN section), evaluates like §11 and writes
``best.pth`` — a plain state_dict that ``--pretrained-weights-name`` loads as the teacher.
"""
from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from freenet import distributed
from freenet.checkpoint import CheckpointError, atomic_save, check_compatible, load_checkpoint
from freenet.cli import (POSITIVE, HelpFormatter, Parser, add_run_args, file_path, parse_run_args, real, run_main,
                         setup_run)
from freenet.config import ConfigError
from freenet.data.dataset import KeypointDataset, stream_loader
from freenet.data.settings import build_training_sets
from freenet.data.transforms import TwoViewTransform, normalize_images
from freenet.engine import (Interrupt, Recorder, RunDir, evaluate_in_eval_mode, finite_weights, next_batch, read_best,
                            resume_hint)
from freenet.errors import TrainingError
from freenet.fileio import copy_atomic, write_json_atomic
from freenet.losses import weighted_heatmap_mse
from freenet.models import load_imagenet_backbone
from freenet.optim import OptimizedModel, adam_implementation
from freenet.training import augment_config, build_evaluator, build_model

log = logging.getLogger("freenet")


DESCRIPTION = """Supervised training of the base network: the FreeNet teacher's initialisation.

Trains one HRNet on the *labeled* records of any setting (the same yaml and setting flags as the
FreeNet scripts) with the training crops and augmentation, the masked heatmap MSE and Adam (lr 1e-3,
x0.1 at epochs 170 and 200 of 210 by default, from the yaml's TRAIN section), evaluates like
eval_ap10k.py every --eval-every epochs and writes best.pth: a plain state_dict that
--pretrained-weights-name loads as the teacher.
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=DESCRIPTION, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--epochs", type=POSITIVE, default=None, help="default: TRAIN.END_EPOCH of the yaml")
    a("--batch-size", type=POSITIVE, default=None, help="default: TRAIN.BATCH_SIZE_PER_GPU of the yaml")
    a("--eval-every", type=POSITIVE, default=1, help="evaluate (and keep the best weights) every N epochs")
    a("--stop-epoch", type=POSITIVE, default=None,
      help="save and stop after this many epochs, the --epochs schedule unchanged (job time limits); "
           "--resume continues")
    a("--imagenet", default=None, help="ImageNet HRNet classification weights for the backbone, of the model's "
                                       "MODEL.WIDTH: hrnet_w32-36af842e.pth for W32 (optional)")
    a("--save-as", type=file_path, default=None,
      help="also copy the best weights here, e.g. pretrained_weights/pretrained_25_5.pth")
    a("--level", type=int, default=None, choices=(0, 1), help="split level (the split setting's yaml)")
    a("--sample-ratio", type=real(0, 1), default=None, help="labeled fraction (mixed settings); default: the yaml's")
    add_run_args(p, "experiments/ap10k/freenet_split.yaml", has_split_file=True)
    return p


def multistep(iteration: int, iters_per_epoch: int, milestones, factor: float) -> float:
    """×factor at every milestone epoch, evaluated per iteration (so one LR scheduler serves both loops)."""
    return factor ** bisect.bisect_right(list(milestones), iteration // iters_per_epoch)


def epoch_length(num_records: int, batch_size: int, world_size: int = 1) -> int:
    """Iterations per epoch: one pass over the records, each iteration taking ``batch_size`` records on
    each of ``world_size`` ranks (the ranks share one data stream, :func:`~freenet.data.dataset.stream_loader`)."""
    return max(1, num_records // (batch_size * world_size))


@dataclass
class SupervisedState:
    """The run's progress besides the weights; ``checkpoint.pth`` keeps each field under its name."""
    iteration: int = 0               # iterations done
    partial_loss: float = 0.0        # loss summed over the unfinished epoch
    best_ap: float = -1.0            # below any score: the first evaluation writes best.pth
    pck_at_best_ap: float | None = None
    best_epoch: int = -1             # the (0-based) epoch best.pth holds
    # the train loss of the last finished epoch while its evaluation is owed: checkpoint.pth is
    # written before the evaluation, so a run stopped or failed inside it evaluates that epoch when
    # resumed (best.json, written when an evaluation finishes, says which was the last)
    pending_eval: float | None = None


def train_supervised(args, notes: list[str] = ()) -> dict:
    """Supervised training from parsed flags; ``notes``: warnings of :func:`~freenet.cli.parse_run_args`."""
    setup = setup_run(args, notes)
    cfg, device, joint_set, amp_dtype = setup.cfg, setup.device, setup.joint_set, setup.amp_dtype
    epochs = args.epochs or cfg.TRAIN.END_EPOCH
    batch_size = args.batch_size or cfg.TRAIN.BATCH_SIZE_PER_GPU

    records = build_training_sets(cfg.DATASET, joint_set, cfg.SEED).labeled
    log.info("%d labeled training records", len(records))
    evaluate = build_evaluator(cfg, joint_set, device) if distributed.is_main() else None  # rank 0 evaluates

    torch.manual_seed(cfg.SEED)
    model = build_model(cfg, joint_set)
    imagenet = args.imagenet or cfg.MODEL.PRETRAINED
    if imagenet and not args.resume:
        report = load_imagenet_backbone(model, imagenet)
        log.info("ImageNet backbone from %s: %d tensors loaded, %d not in the checkpoint, %d of its tensors "
                 "skipped (not in the pose backbone)", imagenet, len(report["loaded"]), len(report["missing"]),
                 len(report["skipped"]))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    iters_per_epoch = epoch_length(len(records), batch_size, distributed.world_size())
    # fused: one kernel, and no host sync for the fp16 GradScaler's inf check on CUDA; no gradient
    # clipping, as in the official HRNet training (SPEC §12)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WD,
                                 **adam_implementation(device))
    schedule = partial(multistep, iters_per_epoch=iters_per_epoch, milestones=cfg.TRAIN.LR_STEP,
                       factor=cfg.TRAIN.LR_FACTOR)
    net = OptimizedModel(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                         torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16))
    weights = torch.tensor(joint_set.loss_weights, device=device)

    if args.resume:
        state = restore(args.resume, net, iters_per_epoch)
        if state.iteration >= epochs * iters_per_epoch and state.pending_eval is None:
            raise ConfigError(f"{args.resume}: nothing to train: the run has done all {epochs} epochs of --epochs "
                              f"{epochs}; give a larger --epochs to train on")
        run = RunDir.of_checkpoint(args.resume)
        run.write_settings(cfg.dump(), vars(args))       # the next --resume reads this command's flags
    else:
        state = SupervisedState()
        run = RunDir.create(args.output_dir, args.name, cfg.dump(), vars(args))
    log.info("run directory %s", run.path)
    saved = state.iteration if args.resume else None      # the iteration checkpoint.pth holds

    recorder = Recorder(run)
    if state.pending_eval is not None:
        epoch = state.iteration // iters_per_epoch - 1
        log.warning("the evaluation after epoch %d did not finish: evaluating that checkpoint first", epoch + 1)
        if distributed.is_main():
            recorder.forget_from(epoch, key="epoch")   # logged by the evaluation that did not finish
            evaluate_epoch(model, evaluate, epoch, state, run, recorder)
        state.pending_eval = None
        distributed.barrier()

    transform = TwoViewTransform(joint_set, augment_config(cfg), with_aug=False)
    loader = iter(stream_loader(KeypointDataset(records, transform, cfg.SEED, stream=2), batch_size,
                                state.iteration, cfg.WORKERS, device.type == "cuda",
                                distributed.rank(), distributed.world_size()))
    with Interrupt() as interrupt:
        while state.iteration < epochs * iters_per_epoch:
            epoch, done = divmod(state.iteration, iters_per_epoch)   # a resume may start inside an epoch
            model.train()
            total = torch.full((), state.partial_loss, device=device)
            for _ in tqdm(range(done, iters_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                          initial=done, total=iters_per_epoch, disable=not distributed.is_main()):
                batch = interrupt.next(lambda: next_batch(loader))
                if batch is None:       # a signal came during the last iteration
                    break
                x = normalize_images(batch["ori"].to(device, non_blocking=True)).contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = model(x)
                target = batch["target"].to(device, non_blocking=True)                 # (B, J, H, W)
                mask = batch["target_weight"].to(device, non_blocking=True)            # (B, J)
                loss = weighted_heatmap_mse(out, target, mask, weights)
                net.update(loss)
                total += loss.detach()
                state.iteration += 1
            summed = float(distributed.mean_over_ranks(total))   # the epoch's one device sync; mean over ranks
            if not finite_weights(model):   # before anything of the epoch is saved
                raise diverged(epoch, run, saved)
            if not math.isfinite(summed):   # the weights are: fp16 AMP's scaler skipped those updates
                log.warning("the training loss of epoch %d is %s (with AMP those iterations' updates were skipped)",
                            epoch + 1, summed)
            finished = state.iteration == (epoch + 1) * iters_per_epoch   # not when stopped before its first iteration
            state.partial_loss = 0.0 if finished else summed
            last = epoch == epochs - 1
            evaluates = finished and ((epoch + 1) % args.eval_every == 0 or last)
            state.pending_eval = summed / iters_per_epoch if evaluates else None
            if distributed.is_main():   # first: an evaluation that fails loses no training (a resume does it)
                atomic_save({**net.state_dict(), **asdict(state), "epoch": epoch, "joint_set": joint_set.name,
                             "num_joints": joint_set.num_joints, "width": cfg.MODEL.WIDTH, "config": cfg.dump()},
                            run / "checkpoint.pth")
            saved = state.iteration
            if evaluates and distributed.is_main():
                try:
                    evaluate_epoch(model, evaluate, epoch, state, run, recorder)
                except Exception:
                    log.error("the evaluation after epoch %d failed; the epoch is saved and a resume evaluates it "
                              "first. %s", epoch + 1, resume_hint(run))
                    raise
            state.pending_eval = None
            distributed.barrier()
            if interrupt.stopping:
                tqdm.write(f"Stopped in epoch {epoch + 1} after iteration {state.iteration}. {resume_hint(run)}")
                break
            if finished and not last and args.stop_epoch is not None and epoch + 1 >= args.stop_epoch:
                tqdm.write(f"Stopped after epoch {epoch + 1} (--stop-epoch {args.stop_epoch}). {resume_hint(run)}")
                break
    recorder.close()
    if args.save_as and distributed.is_main() and (run / "best.pth").exists():
        try:
            copy_atomic(run / "best.pth", args.save_as)
        except OSError as e:
            raise ConfigError(f"--save-as {args.save_as}: cannot copy the best weights there ({e.strerror or e}); "
                              f"they are in {run / 'best.pth'}") from e
        log.info("best weights (AP %.4f) copied to %s", state.best_ap, args.save_as)
    summary = {"best_ap": state.best_ap, "run_dir": str(run.path)}
    if state.best_epoch >= 0:   # best.pth's scores; PCK is not what picks it
        summary.update(pck_at_best_ap=state.pck_at_best_ap, best_epoch=state.best_epoch + 1)   # epoch as logged
    log.info("%s: %s", "done" if state.iteration >= epochs * iters_per_epoch else "stopped", json.dumps(summary))
    return summary


def diverged(epoch: int, run: RunDir, saved: int | None) -> TrainingError:
    """The error that stops a run whose weights are no longer finite numbers; ``saved``: the
    iteration checkpoint.pth holds (None: no checkpoint yet)."""
    kept = (f"{run / 'checkpoint.pth'} (iteration {saved}) holds the last good state. {resume_hint(run)}, "
            f"with a setting changed by a trailing KEY VALUE override" if saved is not None else
            "no checkpoint was saved")
    return TrainingError(f"the weights are not finite numbers after epoch {epoch + 1} (diverged: lower TRAIN.LR); "
                         f"nothing of that epoch was saved: {kept}")


def restore(path: str, net: OptimizedModel, iters_per_epoch: int) -> SupervisedState:
    """Weights, optimizer, scheduler (and scaler) into ``net``; the run's progress returned."""
    ckpt = load_checkpoint(path)
    for key in ("model", "optimizer", "scheduler", "epoch", "best_ap"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a train_supervised.py checkpoint: no '{key}'")
    check_compatible(net.model, ckpt["model"], path)
    net.load_state_dict(ckpt)      # the scaler only when both runs use AMP fp16
    state = SupervisedState(**{f.name: ckpt[f.name] for f in fields(SupervisedState) if f.name in ckpt})
    state.iteration = ckpt.get("iteration", (ckpt["epoch"] + 1) * iters_per_epoch)
    # checkpoint.pth is written before each evaluation, so what that evaluation found lives in
    # best.json beside it, written when the evaluation has finished.
    best = read_best(Path(path).parent, ("best_ap", "pck_at_best_ap", "best_epoch", "evaluated_epoch"))
    if best:
        if best["best_ap"] > state.best_ap:
            state.best_ap, state.pck_at_best_ap, state.best_epoch = (best["best_ap"], best["pck_at_best_ap"],
                                                                     best["best_epoch"])
        if best["evaluated_epoch"] == ckpt["epoch"]:
            state.pending_eval = None
    return state


def evaluate_epoch(model, evaluate, epoch: int, state: SupervisedState, run: RunDir, recorder: Recorder) -> None:
    """Evaluate the weights of ``epoch`` (saved just before), log them with the train loss
    ``state.pending_eval`` and keep the best AP in best.pth; best.json, written last, says the
    evaluation finished."""
    train_loss = state.pending_eval
    metrics = evaluate_in_eval_mode(evaluate, model)
    recorder.scalars("Train_Loss", {"Loss": train_loss}, epoch)
    recorder.scalars("Val_OKS", {"OKS": metrics["AP"]}, epoch)
    recorder.scalars("Val_PCK", {"PCK": metrics["PCK"]}, epoch)
    recorder.append_metrics({"epoch": epoch, "train_loss": train_loss, "AP": metrics["AP"], "PCK": metrics["PCK"]})
    tqdm.write(f"[epoch {epoch + 1}] loss {train_loss:.6f} AP {metrics['AP']:.4f} PCK {metrics['PCK']:.4f}")
    if metrics["AP"] > state.best_ap:
        state.best_ap, state.pck_at_best_ap, state.best_epoch = metrics["AP"], metrics["PCK"], epoch
        atomic_save(model.state_dict(), run / "best.pth")
    write_json_atomic(run / "best.json", {"best_ap": state.best_ap, "pck_at_best_ap": state.pck_at_best_ap,
                                           "best_epoch": state.best_epoch, "evaluated_epoch": epoch})


def main(argv=None) -> int:
    parser = build_parser()
    return run_main(lambda: train_supervised(*parse_run_args(parser, argv)))
