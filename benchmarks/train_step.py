"""Speed of the real FreeNet step (SPEC §6) at a given setting, with a breakdown.

Default: the paper's setting — HRNet-W32, 256-px crops, B = 8, mu = 7, fp16 AMP on CUDA.

    python benchmarks/train_step.py                                   # paper setting, synthetic batches
    python benchmarks/train_step.py --width 8 --size 64 --batch 4 --mu 2 --device cpu
    python benchmarks/train_step.py --loader --data-root data_synth --workers 16
    python benchmarks/train_step.py --cuda-graphs                     # the step replayed from a CUDA graph
    python benchmarks/train_step.py --compile-regions                 # torch.compile of each block (see warmup_s)

Prints JSON lines: steps/s and images/s of the whole step (in-memory batches) and the time of the
untimed warm-up steps (compiling, cuDNN autotuning, the CUDA-graph recording), then the parts
measured on their own with the same tensors — forward+backward of both networks, selection +
rendering (decode, §7 masks, Gaussians), optimiser updates — and, with ``--loader``, the data wait
of the real two-view loaders. Memory is the peak CUDA allocation of one step.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import base_parser, describe, emit, pick_device, sync, time_it
from freenet.cuda_graphs import GraphedStep
from freenet.device import autocast_dtype, configure_backends
from freenet.freenet_step import FreeNetHyper, FreeNetStep
from freenet.heatmaps import encode_keypoints
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet, compile_regions
from freenet.optim import make_optimized
from freenet.profiling import dispatched_ops


def synthetic_batch(n: int, size: int, joints: int, with_target: bool, seed: int) -> dict:
    g = np.random.default_rng(seed)
    batch = {v: torch.from_numpy(g.integers(0, 256, (n, 3, size, size), dtype=np.uint8)) for v in ("ori", "aug")}
    if with_target:
        heat = size // 4
        maps, valid = zip(*(encode_keypoints(g.uniform(0, size, (joints, 2)), g.integers(0, 2, joints), (heat, heat),
                                             stride=4) for _ in range(n)))
        batch["target"] = torch.from_numpy(np.stack(maps))
        batch["target_weight"] = torch.from_numpy(np.stack(valid))
    return batch


def build(args, device):
    js = load_joint_set(args.joints)
    torch.manual_seed(0)
    amp = autocast_dtype(device, args.amp, args.amp_dtype)
    nets = []
    for lr in (1e-5, 1e-3):
        net = PoseHighResolutionNet(js.num_joints, args.width).to(device)
        if args.channels_last:
            net = net.to(memory_format=torch.channels_last)
        nets.append(make_optimized(net, lr, 1e-4, 900, 45000, 0, 1e9, device, amp == torch.float16))
    for n in nets:
        if args.compile:
            n.model = torch.compile(n.model)
        elif args.compile_regions:
            compile_regions(n.model)
    # Feedback on from the first step: the full cost of a step after --feedback-steps-start.
    step = FreeNetStep(nets[0], nets[1], js, FreeNetHyper(feedback_start=0), device, amp, args.channels_last)
    return js, step, amp


def main():
    p = base_parser(__doc__)
    p.add_argument("--width", type=int, default=32, help="HRNet width")
    p.add_argument("--size", type=int, default=256, help="input crop side")
    p.add_argument("--batch", type=int, default=8, help="labeled batch B")
    p.add_argument("--mu", type=int, default=7, help="unlabeled samples per labeled one")
    p.add_argument("--joints", default="union24", help="joint set (name or file)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    p.add_argument("--amp-dtype", choices=("fp16", "bf16"), default="fp16", help="autocast dtype of --amp")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format")
    compiling = p.add_mutually_exclusive_group()
    compiling.add_argument("--compile", action="store_true", help="torch.compile both networks")
    compiling.add_argument("--compile-regions", action="store_true",
                           help="torch.compile their blocks in place (freenet.models.compile_regions)")
    p.add_argument("--cuda-graphs", action="store_true", help="time the step replayed from a CUDA graph (CUDA)")
    p.add_argument("--loader", action="store_true", help="also time the real loaders (needs --data-root)")
    p.add_argument("--data-root", default=None, help="data root of --loader (layout: README, Data)")
    p.add_argument("--workers", type=int, default=8, help="loader processes of --loader")
    p.add_argument("--profile", action="store_true",
                   help="CUDA: GPU busy time and kernel launches per step, and the ops that take the GPU's time")
    args = p.parse_args()
    device = pick_device(args.device)
    if args.loader and not args.data_root:
        p.error("--loader needs --data-root (a folder in the layout of README, Data)")
    if args.cuda_graphs and device.type != "cuda":
        p.error(f"--cuda-graphs needs a CUDA device, not {device}")
    configure_backends(device)
    js, step, amp = build(args, device)
    labeled = synthetic_batch(args.batch, args.size, js.num_joints, True, 1)
    unlabeled = synthetic_batch(args.batch * args.mu, args.size, js.num_joints, False, 2)
    setting = {"width": args.width, "size": args.size, "batch": args.batch, "mu": args.mu, "joints": js.num_joints,
               "amp": str(amp).replace("torch.", "") if amp else "fp32", "channels_last": args.channels_last,
               "compile": "regions" if args.compile_regions else args.compile, "cuda_graphs": args.cuda_graphs}
    base = {"device": describe(device), **setting}
    if device.type == "cuda":
        labeled = {k: v.pin_memory() for k, v in labeled.items()}
        unlabeled = {k: v.pin_memory() for k, v in unlabeled.items()}
        torch.cuda.reset_peak_memory_stats(device)

    counter = iter(range(10 ** 9))
    run_step, warmup = step, args.warmup
    if args.cuda_graphs:     # the eager warm-up steps and the recording come before the timed replays
        run_step = GraphedStep(step)
        warmup = max(warmup, run_step.warmup_steps + 2)

    def one_step():
        run_step(next(counter), labeled, unlabeled)

    t0 = time.perf_counter()      # the warm-up: compiling, cuDNN autotuning, the CUDA-graph recording
    for _ in range(warmup):
        one_step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    t = time_it(one_step, device, args.repeat, 0)
    images = args.batch * (1 + args.mu)
    record = {"benchmark": "train_step", **base, "steps_per_s": round(1 / t["median_s"], 3),
              "s_per_step": round(t["median_s"], 4), "images_per_s": round(images / t["median_s"], 1),
              "warmup_steps": warmup, "warmup_s": round(warmup_s, 1)}
    if device.type == "cuda":
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    if not (args.compile or args.compile_regions):   # counting does not see inside compiled code (it counts eager ops)
        # with --cuda-graphs: what the host still issues per step (input copies, schedules, the replay)
        ops = dispatched_ops(one_step, launches_only=True)
        record["tensor_ops"] = sum(ops.values())
        # and every operation dispatched: the views, detaches and empty buffers that launch nothing too
        record["tensor_ops_dispatched"] = sum(dispatched_ops(one_step).values())
        # which operations the launches are (convolutions, BatchNorm, ReLU, adds: what fusion would remove)
        record["tensor_ops_top"] = {name.removeprefix("aten."): n for name, n in ops.most_common(8)}
    emit(record)

    # --- the parts, each on its own with the same tensors -----------------------------------------
    x_ori, x_aug = step.views(labeled, unlabeled, "ori"), step.views(labeled, unlabeled, "aug")
    teacher, student = step.teacher.model, step.student.model

    def forward_backward():
        with step.autocast():
            with torch.no_grad():
                student(x_ori)
            t_aug, s_aug, t_ori = teacher(x_aug), student(x_aug), teacher(x_ori)
            with torch.no_grad():
                student(x_aug[:args.batch])
        (t_aug.float().mean() + t_ori.float().mean() + s_aug.float().mean()).backward()
        for net in (teacher, student):
            for prm in net.parameters():
                prm.grad = None

    with torch.no_grad(), step.autocast():
        heat = teacher(x_ori).float()[args.batch:]

    def selection():
        return step.targets(heat, heat, heat, step.schedule(10 ** 4)[0])

    def optimizers():
        for net in (step.teacher, step.student):
            net.optimizer.step()

    parts = {}
    for name, fn in (("forward_backward", forward_backward), ("selection_rendering", selection),
                     ("optimizers", optimizers)):
        if fn is optimizers:  # give every parameter a gradient, as after a backward pass
            for net in (teacher, student):
                for prm in net.parameters():
                    prm.grad = torch.zeros_like(prm)
        parts[name] = time_it(fn, device, max(1, args.repeat // 2), min(2, args.warmup))["median_s"]
    emit({"benchmark": "train_step_breakdown", **base, "step_s": round(t["median_s"], 4),
          **{f"{k}_s": round(v, 4) for k, v in parts.items()}})

    if args.loader:
        emit({"benchmark": "train_step_loader", **base, **loader_wait(args, js, run_step, device)})
    if args.profile and device.type == "cuda":
        emit({"benchmark": "train_step_profile", **base,
              **profile(lambda: run_step(next(counter), labeled, unlabeled), device)})


def profile(run_step, device, steps: int = 5) -> dict:
    """Where a step's time goes: if the GPU is busy for much less than the wall time, the step is
    limited by the host issuing kernels, not by the GPU."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sync(device)
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run_step()
        sync(device)
    wall = (time.perf_counter() - t0) / steps
    kernels: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:   # kernels and copies, as the GPU ran them
            kernels[e.name] = kernels.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e6 / steps
    launches = sum(e.count for e in prof.key_averages()
                   if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    top = sorted(kernels.items(), key=lambda kv: kv[1], reverse=True)[:8]
    return {"profiled_wall_s_per_step": round(wall, 4), "gpu_busy_s_per_step": round(sum(kernels.values()), 4),
            "kernel_launches_per_step": launches // steps,
            "top_gpu_kernels": [{"kernel": name[:70], "s_per_step": round(t, 4)} for name, t in top]}


def loader_wait(args, js, step, device) -> dict:
    """Run the real step fed by the real loaders; report the time spent waiting for batches."""
    from freenet.config import load_config
    from freenet.data.dataset import KeypointDataset, stream_loader
    from freenet.data.settings import build_training_sets
    from freenet.data.transforms import AugmentConfig, TwoViewTransform
    from freenet.training import split_workers

    cfg = load_config("experiments/ap10k_animalpose_tigdog/freenet_ratio.yaml", ["DATASET.ROOT", args.data_root])
    sets = build_training_sets(cfg.DATASET, js, 2)
    aug = AugmentConfig(input_size=args.size, heatmap_size=args.size // 4)
    lw, uw = split_workers(args.workers, args.mu)
    pin = device.type == "cuda"
    lab = iter(stream_loader(KeypointDataset(sets.labeled, TwoViewTransform(js, aug), 2, 0), args.batch, 0, lw, pin))
    unl = iter(stream_loader(KeypointDataset(sets.unlabeled, TwoViewTransform(js, aug, with_target=False), 2, 1),
                             args.batch * args.mu, 0, uw, pin))
    for i in range(args.warmup):
        step(i, next(lab), next(unl))
    sync(device)
    wait, t0 = 0.0, time.perf_counter()
    for i in range(args.repeat):
        w0 = time.perf_counter()
        batches = next(lab), next(unl)
        wait += time.perf_counter() - w0
        step(args.warmup + i, *batches)
    sync(device)
    total = time.perf_counter() - t0
    return {"workers": args.workers, "steps_per_s": round(args.repeat / total, 3),
            "data_wait_s_per_step": round(wait / args.repeat, 4)}


if __name__ == "__main__":
    main()
