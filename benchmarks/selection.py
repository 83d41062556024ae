"""Time of the pseudo-label selection and rendering of one step (SPEC §7, §5.2).

body_part_mask + feedback_mask + two render_gaussians (pseudo labels and feedback maps) for
B·mu unlabeled samples and J joints — what the original computed with per-joint ``.item()`` calls
and CPU double loops.

    python benchmarks/selection.py                      # B·mu = 56, J = 24, 64x64 heatmaps
"""
import torch

from common import base_parser, describe, emit, pick_device, time_it
from freenet.device import configure_backends
from freenet.heatmaps import argmax_keypoints, render_gaussians
from freenet.joints import load_joint_set
from freenet.pseudo_labels import body_part_mask, feedback_mask


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=56, help="unlabeled batch B*mu")
    p.add_argument("--joints", default="union24")
    p.add_argument("--heatmap", type=int, default=64)
    args = p.parse_args()
    device = pick_device(args.device)
    configure_backends(device)  # what training does (on the CPU: glibc keeps freed buffers)
    js = load_joint_set(args.joints)
    groups = [g.joints for g in js.part_groups]
    ratios = [g.min_ratio for g in js.part_groups]
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.batch, js.num_joints, args.heatmap, args.heatmap)
    teacher = torch.rand(shape, generator=g).to(device)
    teacher_aug = torch.rand(shape, generator=g).to(device)
    student = torch.rand(shape, generator=g).to(device)

    size = (args.heatmap, args.heatmap)
    coords, conf = argmax_keypoints(teacher)
    _, s_conf = argmax_keypoints(student)
    fb_coords, _ = argmax_keypoints(teacher_aug)

    def selection():
        """The three selection functions, given the decoded peaks."""
        mask = body_part_mask(conf, groups, ratios, step=3000, rampdown_steps=9000)
        fb = feedback_mask(conf, s_conf)
        return render_gaussians(coords, mask, size), render_gaussians(fb_coords, fb, size)

    def with_decoding():
        """Everything between the forward passes and the losses: 3 argmax decodings + selection."""
        c, t_conf = argmax_keypoints(teacher)
        mask = body_part_mask(t_conf, groups, ratios, step=3000, rampdown_steps=9000)
        _, sc = argmax_keypoints(student)
        fc, _ = argmax_keypoints(teacher_aug)
        return render_gaussians(c, mask, size), render_gaussians(fc, feedback_mask(t_conf, sc), size)

    for name, fn in (("selection", selection), ("selection+decode", with_decoding)):
        t = time_it(fn, device, args.repeat, args.warmup)
        emit({"benchmark": name, "device": describe(device), "batch": args.batch, "joints": js.num_joints,
              "heatmap": args.heatmap, "ms": round(1000 * t["median_s"], 3), "ms_mean": round(1000 * t["mean_s"], 3),
              "tensor_ops": count_ops(fn)})


def count_ops(fn) -> int:
    """Tensor operations one call dispatches: on a GPU, about one kernel launch each, and the
    floor of the call's time when launches (~5-30 us each) outweigh the work."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


if __name__ == "__main__":
    main()
