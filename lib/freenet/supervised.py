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
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from freenet import distributed
from freenet.checkpoint import CheckpointError, atomic_save, check_compatible, load_checkpoint
from freenet.cli import (POSITIVE, HelpFormatter, Parser, add_run_args, file_path, parse_run_args, run_main,
                         setup_run)
from freenet.config import ConfigError
from freenet.data.dataset import KeypointDataset, stream_loader
from freenet.data.settings import build_training_sets
from freenet.data.transforms import TwoViewTransform, normalize_images
from freenet.engine import Interrupt, Recorder, RunDir, resume_hint
from freenet.fileio import copy_atomic
from freenet.losses import weighted_heatmap_mse
from freenet.models import load_imagenet_backbone
from freenet.optim import OptimizedModel
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
    a("--sample-ratio", type=float, default=None, help="labeled fraction (mixed settings); default: the yaml's")
    add_run_args(p, "experiments/ap10k/freenet_split.yaml", has_split_file=True)
    return p


def multistep(iteration: int, iters_per_epoch: int, milestones, factor: float) -> float:
    """×factor at every milestone epoch, evaluated per iteration (so one LR scheduler serves both loops)."""
    return factor ** bisect.bisect_right(list(milestones), iteration // iters_per_epoch)


def epoch_length(num_records: int, batch_size: int, world_size: int = 1) -> int:
    """Iterations per epoch: one pass over the records, each iteration taking ``batch_size`` records on
    each of ``world_size`` ranks (the ranks share one data stream, :func:`~freenet.data.dataset.stream_loader`)."""
    return max(1, num_records // (batch_size * world_size))


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
    model.to(device)
    iters_per_epoch = epoch_length(len(records), batch_size, distributed.world_size())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WD)
    schedule = partial(multistep, iters_per_epoch=iters_per_epoch, milestones=cfg.TRAIN.LR_STEP,
                       factor=cfg.TRAIN.LR_FACTOR)
    net = OptimizedModel(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
                         torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16))
    weights = torch.tensor(joint_set.loss_weights, device=device)

    iteration, partial_loss, best_ap = 0, 0.0, -1.0   # iterations done; loss summed over the unfinished epoch
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        for key in ("model", "optimizer", "scheduler", "epoch", "best_ap"):
            if key not in ckpt:
                raise CheckpointError(f"{args.resume}: not a train_supervised.py checkpoint: no '{key}'")
        check_compatible(model, ckpt["model"], args.resume)
        net.load_state_dict(ckpt)      # the scaler only when both runs use AMP fp16
        iteration = ckpt.get("iteration", (ckpt["epoch"] + 1) * iters_per_epoch)
        partial_loss, best_ap = ckpt.get("partial_loss", 0.0), ckpt["best_ap"]
        if iteration >= epochs * iters_per_epoch:
            raise ConfigError(f"{args.resume}: nothing to train: the run has done all {epochs} epochs of --epochs "
                              f"{epochs}; give a larger --epochs to train on")
        run = RunDir(Path(args.resume).parent)
        run.write_settings(cfg.dump(), vars(args))       # the next --resume reads this command's flags
    else:
        run = RunDir.create(args.output_dir, args.name, cfg.dump(), vars(args))
    log.info("run directory %s", run.path)

    transform = TwoViewTransform(joint_set, augment_config(cfg), with_aug=False)
    loader = iter(stream_loader(KeypointDataset(records, transform, cfg.SEED, stream=2), batch_size,
                                iteration, cfg.WORKERS, device.type == "cuda",
                                distributed.rank(), distributed.world_size()))
    recorder = Recorder(run)
    summary = {"best_ap": best_ap, "run_dir": str(run.path)}
    with Interrupt() as interrupt:
        while iteration < epochs * iters_per_epoch:
            epoch, done = divmod(iteration, iters_per_epoch)   # a resume may start inside an epoch
            model.train()
            total = torch.full((), partial_loss, device=device)
            for _ in tqdm(range(done, iters_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                          initial=done, total=iters_per_epoch, disable=not distributed.is_main()):
                batch = interrupt.next(lambda: next(loader))
                if batch is None:       # a signal came during the last iteration
                    break
                x = normalize_images(batch["ori"].to(device, non_blocking=True))
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = model(x)
                loss = weighted_heatmap_mse(out, batch["target"].to(device), batch["target_weight"].to(device), weights)
                net.update(loss)
                total += loss.detach()
                iteration += 1
            total = distributed.mean_over_ranks(total)         # the logged loss is the mean over ranks
            finished = iteration == (epoch + 1) * iters_per_epoch   # not when stopped before its first iteration
            partial_loss = 0.0 if finished else float(total)
            train_loss = float(total) / iters_per_epoch
            last = epoch == epochs - 1
            if distributed.is_main() and finished and ((epoch + 1) % args.eval_every == 0 or last):
                model.eval()
                metrics = evaluate(model)
                recorder.scalars("Train_Loss", {"Loss": train_loss}, epoch)
                recorder.scalars("Val_OKS", {"OKS": metrics["AP"]}, epoch)
                recorder.scalars("Val_PCK", {"PCK": metrics["PCK"]}, epoch)
                with open(run / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch, "train_loss": train_loss,
                                        "AP": metrics["AP"], "PCK": metrics["PCK"]}) + "\n")
                tqdm.write(f"[epoch {epoch + 1}] loss {train_loss:.6f} AP {metrics['AP']:.4f} PCK {metrics['PCK']:.4f}")
                if metrics["AP"] > best_ap:
                    best_ap = metrics["AP"]
                    atomic_save(model.state_dict(), run / "best.pth")
                    summary.update(best_ap=best_ap, best_pck=metrics["PCK"], best_epoch=epoch + 1)  # as logged
            if distributed.is_main():
                atomic_save({**net.state_dict(), "epoch": epoch, "iteration": iteration, "partial_loss": partial_loss,
                             "best_ap": best_ap, "joint_set": joint_set.name,
                             "num_joints": joint_set.num_joints, "width": cfg.MODEL.WIDTH, "config": cfg.dump()},
                            run / "checkpoint.pth")
            distributed.barrier()
            if interrupt.stopping:
                tqdm.write(f"Stopped in epoch {epoch + 1} after iteration {iteration}. {resume_hint(run)}")
                break
            if finished and not last and args.stop_epoch is not None and epoch + 1 >= args.stop_epoch:
                tqdm.write(f"Stopped after epoch {epoch + 1} (--stop-epoch {args.stop_epoch}). {resume_hint(run)}")
                break
    recorder.close()
    if args.save_as and distributed.is_main() and (run / "best.pth").exists():
        copy_atomic(run / "best.pth", args.save_as)
        log.info("best weights (AP %.4f) copied to %s", best_ap, args.save_as)
    log.info("done: %s", json.dumps(summary))
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    return run_main(lambda: train_supervised(*parse_run_args(parser, argv)))
