"""The vectorised, on-device implementation equals a plain loop-by-loop reference (SPEC §5–§7)."""
import copy
from functools import partial

import pytest
import torch

from conftest import random_batch
import reference_step as ref
from freenet.data.transforms import normalize_images
from freenet.freenet_step import FreeNetHyper, FreeNetStep
from freenet.heatmaps import argmax_keypoints, render_gaussians
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet
from freenet.optim import OptimizedModel
from freenet.pseudo_labels import body_part_mask, feedback_mask
from freenet.schedules import cosine_with_warmup

U24 = load_joint_set("union24")
GROUPS = [g.joints for g in U24.part_groups]
RATIOS = [g.min_ratio for g in U24.part_groups]


@pytest.mark.parametrize("seed", range(5))
def test_selection_and_rendering_match_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    # peaks on a coarse grid make ties (the >= rule) common
    t_maps = torch.round(torch.rand(14, 24, 16, 16, generator=g) * 20) / 20
    s_maps = torch.round(torch.rand(14, 24, 16, 16, generator=g) * 20) / 20
    coords, conf = argmax_keypoints(t_maps)
    r_coords, r_conf = ref.argmax(t_maps)
    assert torch.equal(coords, r_coords) and torch.equal(conf, r_conf)
    for step in (0, 3000, 9000, 20000):
        assert torch.equal(body_part_mask(conf, GROUPS, RATIOS, step, 9000),
                           ref.body_part_mask(conf, GROUPS, RATIOS, step, 9000))
    _, s_conf = argmax_keypoints(s_maps)
    assert torch.equal(feedback_mask(conf, s_conf), ref.feedback_mask(conf, s_conf))
    # sub-pixel and off-map centres too
    centres = torch.rand(14, 24, 2, generator=g) * 30 - 7
    mask = (torch.rand(14, 24, generator=g) > 0.3).float()
    torch.testing.assert_close(render_gaussians(centres, mask, (16, 16)), ref.render_gaussians(centres, mask, (16, 16)),
                               rtol=1e-5, atol=1e-7)


def batch(n, seed, with_target=True):
    return random_batch(n, seed, 24, with_target)


def test_three_steps_match_the_reference_step():
    hyper = FreeNetHyper(down_step=10, feedback_start=1, feedback_complete=4, feedback_weight=2.0)
    torch.manual_seed(0)
    teacher, student = PoseHighResolutionNet(24, 8), PoseHighResolutionNet(24, 8)
    r_teacher, r_student = copy.deepcopy(teacher), copy.deepcopy(student)
    cpu = torch.device("cpu")

    def optimized(net, lr):
        # Plain SGD: parameter changes are proportional to the gradients, so comparing them checks the
        # gradients themselves (AdamW's first steps are nearly sign(gradient) and would hide errors).
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(cosine_with_warmup, warmup_steps=1, total_steps=10))
        return opt, sched

    start = [p.detach().clone() for p in teacher.parameters()] + [p.detach().clone() for p in student.parameters()]

    fast = FreeNetStep(OptimizedModel(teacher, *optimized(teacher, 1e-3), torch.amp.GradScaler("cpu", enabled=False)),
                       OptimizedModel(student, *optimized(student, 1e-3), torch.amp.GradScaler("cpu", enabled=False)),
                       U24, hyper, cpu)
    t_opt, t_sched = optimized(r_teacher, 1e-3)
    s_opt, s_sched = optimized(r_student, 1e-3)
    for step in range(3):
        labeled, unlabeled = batch(2, 10 + step), batch(4, 20 + step, with_target=False)
        out = fast(step, labeled, unlabeled)
        s_loss, t_loss = ref.freenet_step(step, r_teacher, r_student, t_opt, s_opt, t_sched, s_sched, labeled,
                                          unlabeled, U24, hyper, normalize_images)
        torch.testing.assert_close(out["s_loss"], s_loss, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(out["t_loss"], t_loss, rtol=1e-4, atol=1e-7)
    fast_params = list(teacher.parameters()) + list(student.parameters())
    ref_params = list(r_teacher.parameters()) + list(r_student.parameters())
    moved = 0
    for p0, p, q in zip(start, fast_params, ref_params):
        # tolerance: float reduction order, and two float32 ulps at 1.0 (BatchNorm weights)
        torch.testing.assert_close(p - p0, q - p0, rtol=1e-2, atol=2.5e-7)
        moved += int(not torch.equal(p, p0))
    assert moved == len(start)          # every parameter of both networks was updated
    for (name, buf), rbuf in zip(list(teacher.named_buffers()) + list(student.named_buffers()),
                                 list(r_teacher.buffers()) + list(r_student.buffers())):
        torch.testing.assert_close(buf, rbuf, rtol=1e-4, atol=1e-6, msg=name)
