"""Time of the pseudo-label selection and rendering of one step (SPEC §7, §5.2).

body_part_mask + feedback_mask + render_gaussians of the pseudo labels and the feedback maps
(``select_targets``, one rendering for both) for B·mu unlabeled samples and J joints — what the
original computed with per-joint ``.item()`` calls and CPU double loops.

    python benchmarks/selection.py                      # B·mu = 56, J = 24, 64x64 heatmaps
"""
import torch

from common import base_parser, count_ops, describe, emit, pick_device, time_it
from freenet.device import configure_backends
from freenet.heatmaps import argmax_keypoints, peak_values
from freenet.joints import load_joint_set
from freenet.pseudo_labels import select_targets
from freenet.schedules import topk_rate


def main():
    p = base_parser(__doc__)
    p.add_argument("--batch", type=int, default=56, help="unlabeled batch B*mu")
    p.add_argument("--joints", default="union24", help="joint set (name or file)")
    p.add_argument("--heatmap", type=int, default=64, help="heatmap side")
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
    s_conf = peak_values(student)
    fb_coords, _ = argmax_keypoints(teacher_aug)

    ramp = topk_rate(3000, 9000, 0.0)          # the keep ratio a third of the way down the ramp (§8)

    def selection():
        """Masks and maps of one step with feedback on, given the decoded peaks."""
        return select_targets(coords, conf, groups, ratios, ramp, size, (s_conf, fb_coords))

    def with_decoding():
        """Everything between the forward passes and the losses: 3 argmax decodings + selection."""
        c, t_conf = argmax_keypoints(teacher)
        sc = peak_values(student)
        fc, _ = argmax_keypoints(teacher_aug)
        return select_targets(c, t_conf, groups, ratios, ramp, size, (sc, fc))

    for name, fn in (("selection", selection), ("selection+decode", with_decoding)):
        t = time_it(fn, device, args.repeat, args.warmup)
        emit({"benchmark": name, "device": describe(device), "batch": args.batch, "joints": js.num_joints,
              "heatmap": args.heatmap, "ms": round(1000 * t["median_s"], 3), "ms_mean": round(1000 * t["mean_s"], 3),
              "tensor_ops": count_ops(fn)})


if __name__ == "__main__":
    main()
