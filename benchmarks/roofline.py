"""The work of one FreeNet step (SPEC §6) and the fastest a GPU could run it, counted without running it.

    python benchmarks/roofline.py                          # paper setting: W32, 256 px, B=8, mu=7, 2-byte AMP
    python benchmarks/roofline.py --no-amp                 # fp32
    python benchmarks/roofline.py --peak-tflops 989 --bandwidth-tbs 4.8   # another GPU's figures

The real step (feedback on, both optimiser updates) runs on fake tensors (PyTorch's FakeTensorMode:
shapes and dtypes, no memory, no arithmetic), so the paper setting is counted on any machine in
seconds. It prints the floating-point operations (``FlopCounterMode``), the tensor operations, and
the bytes those operations read and write when each runs as its own kernel
(:func:`freenet.profiling.memory_traffic`), by kind. Divided by a GPU's peak arithmetic rate and
memory bandwidth (default: an H100 SXM's 989 dense fp16 TFLOP/s, 495 in TF32, and 3.35 TB/s) they
give the least GPU time a step can take: run eagerly, one kernel per operation, and (a floor for any
fusion) with only the convolutions' own reads and writes left.

AMP is counted with the CPU's bf16 autocast, which casts the convolutions as CUDA's fp16 autocast
does (both two bytes an element). channels_last is left out: it adds two operations, the copies of
the two input views to NHWC (0.2 GB at the paper setting).
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from common import count_ops, emit
from freenet.freenet_step import FreeNetHyper, FreeNetStep
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet
from freenet.optim import make_optimized
from freenet.profiling import memory_traffic

# operation name -> kind, first match by prefix
KINDS = (("convolution", ("aten.convolution",)),
         ("batch_norm", ("aten.native_batch_norm", "aten._native_batch_norm", "aten.batch_norm")),
         ("relu_add_upsample", ("aten.relu", "aten.threshold_backward", "aten.add", "aten.upsample")),
         ("optimizer", ("aten._fused_adamw", "aten._foreach")))


def kind_of(op: str) -> str:
    return next((kind for kind, prefixes in KINDS if op.startswith(prefixes)), "other")


def fake_step(args):
    """The fake-tensor mode, and a call of the FreeNet step at the setting, built and fed in it."""
    js = load_joint_set(args.joints)
    cpu = torch.device("cpu")
    fake = FakeTensorMode(allow_non_fake_inputs=True)     # the library's cached constants are real
    with fake:
        nets = [make_optimized(PoseHighResolutionNet(js.num_joints, args.width), lr, 1e-4, 900, 45000, 0, 1e9, cpu,
                               False) for lr in (1e-5, 1e-3)]
        # Feedback on from the first step: the full cost of a step after --feedback-steps-start.
        step = FreeNetStep(nets[0], nets[1], js, FreeNetHyper(feedback_start=0), cpu,
                           torch.bfloat16 if args.amp else None)
        heat = args.size // 4

        def images(n):
            return {v: torch.empty(n, 3, args.size, args.size, dtype=torch.uint8) for v in ("ori", "aug")}

        labeled = {**images(args.batch), "target": torch.empty(args.batch, js.num_joints, heat, heat),
                   "target_weight": torch.empty(args.batch, js.num_joints)}
        unlabeled = images(args.batch * args.mu)
    return fake, lambda: step(0, labeled, unlabeled)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=32, help="HRNet width")
    p.add_argument("--size", type=int, default=256, help="input crop side")
    p.add_argument("--batch", type=int, default=8, help="labeled batch B")
    p.add_argument("--mu", type=int, default=7, help="unlabeled samples per labeled one")
    p.add_argument("--joints", default="union24", help="joint set (name or file)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="two-byte autocast (default) or fp32")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense TFLOP/s (default: an H100 SXM's, 989 in fp16, 495 in TF32 for --no-amp)")
    p.add_argument("--bandwidth-tbs", type=float, default=3.35, help="the GPU's memory bandwidth, TB/s")
    args = p.parse_args()

    t0 = time.perf_counter()
    fake, run = fake_step(args)
    with fake:
        run()                           # the first step also makes the optimisers' state: not counted
    traffic = Counter()
    with fake, FlopCounterMode(display=False) as flops:   # one counted step, all three counters on
        ops = count_ops(lambda: traffic.update(memory_traffic(run)))
    by_kind = Counter()
    for op, n in traffic.items():
        by_kind[kind_of(op)] += n
    total, conv = sum(traffic.values()), by_kind.get("convolution", 0)
    tflop = flops.get_total_flops() / 1e12
    peak = args.peak_tflops or (989.0 if args.amp else 495.0)
    arithmetic_s = tflop / peak
    eager_s = max(arithmetic_s, total / 1e12 / args.bandwidth_tbs)
    fused_s = max(arithmetic_s, conv / 1e12 / args.bandwidth_tbs)
    emit({"benchmark": "roofline", "device": "fake tensors (counted, not run)", "width": args.width,
          "size": args.size, "batch": args.batch, "mu": args.mu, "amp": "2-byte" if args.amp else "fp32",
          "tflop_per_step": round(tflop, 2), "tensor_ops_per_step": ops, "gb_per_step": round(total / 1e9, 1),
          "gb_by_kind": {k: round(v / 1e9, 1) for k, v in by_kind.most_common()},
          "peak_tflops": peak, "bandwidth_tbs": args.bandwidth_tbs,
          "arithmetic_floor_s": round(arithmetic_s, 4), "eager_floor_s": round(eager_s, 4),
          "eager_ceiling_steps_per_s": round(1 / eager_s, 1), "convolutions_only_floor_s": round(fused_s, 4),
          "convolutions_only_ceiling_steps_per_s": round(1 / fused_s, 1),
          "counted_in_s": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
