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
from freenet.schedules import cosine_with_warmup, topk_rate

U24 = load_joint_set("union24")
GROUPS = [g.joints for g in U24.part_groups]
RATIOS = [g.min_ratio for g in U24.part_groups]

# The fast path runs on every device present; the reference always runs on the CPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture
def exact_cuda():
    """fp32 convolutions and matmuls on CUDA (no TF32), so GPU results compare with the CPU's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(5))
def test_selection_and_rendering_match_the_reference(seed, device):
    g = torch.Generator().manual_seed(seed)
    # peaks on a coarse grid make ties (the >= rule) common
    t_maps = torch.round(torch.rand(14, 24, 16, 16, generator=g) * 20) / 20
    s_maps = torch.round(torch.rand(14, 24, 16, 16, generator=g) * 20) / 20
    coords, conf = argmax_keypoints(t_maps.to(device))
    r_coords, r_conf = ref.argmax(t_maps)
    assert torch.equal(coords.cpu(), r_coords) and torch.equal(conf.cpu(), r_conf)
    for step in (0, 3000, 9000, 20000):
        assert torch.equal(body_part_mask(conf, GROUPS, RATIOS, topk_rate(step, 9000, 0.0)).cpu(),
                           ref.body_part_mask(r_conf, GROUPS, RATIOS, step, 9000))
    _, s_conf = argmax_keypoints(s_maps.to(device))
    assert torch.equal(feedback_mask(conf, s_conf).cpu(), ref.feedback_mask(r_conf, s_conf.cpu()))
    # sub-pixel and off-map centres too
    centres = torch.rand(14, 24, 2, generator=g) * 30 - 7
    mask = (torch.rand(14, 24, generator=g) > 0.3).float()
    torch.testing.assert_close(render_gaussians(centres.to(device), mask.to(device), (16, 16)).cpu(),
                               ref.render_gaussians(centres, mask, (16, 16)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_rendering_at_the_edges_of_the_window_matches_the_reference(device):
    """Centres where the 3-sigma window just misses or just meets the 16x16 map (r = 6)."""
    edge = torch.tensor([-7.0, -6.999, -6.5, -0.5, 0.0, 15.0, 15.5, 21.5, 21.999, 22.0, 22.001])
    xx, yy = torch.meshgrid(edge, edge, indexing="ij")
    centres = torch.stack([xx.flatten(), yy.flatten()], -1)[None]                  # (1, 121, 2)
    mask = torch.ones(1, centres.shape[1])
    ours = render_gaussians(centres.to(device), mask.to(device), (16, 16)).cpu()
    torch.testing.assert_close(ours, ref.render_gaussians(centres, mask, (16, 16)), rtol=1e-5, atol=1e-6)
    drawn = ours.flatten(2).amax(-1)[0].reshape(len(edge), len(edge))
    inside = (edge > -7) & (edge < 22)
    assert torch.equal(drawn > 0, inside[:, None] & inside[None, :])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(16, 12), (12, 16)])
def test_rendering_of_non_square_maps_matches_the_reference(size, device):
    """x runs over the width and y over the height, each normalised and windowed on its own axis."""
    g = torch.Generator().manual_seed(7)
    centres = torch.rand(6, 24, 2, generator=g) * 30 - 7
    mask = torch.ones(6, 24)
    ours = render_gaussians(centres.to(device), mask.to(device), size).cpu()
    assert ours.shape == (6, 24, size[1], size[0])
    torch.testing.assert_close(ours, ref.render_gaussians(centres, mask, size), rtol=1e-5, atol=1e-6)


def batch(n, seed, with_target=True):
    return random_batch(n, seed, 24, with_target)


# Per-device tolerances. On the CPU both paths run the same kernels and agree to float rounding,
# element by element. On CUDA (TF32 off) the kernels differ, and the gradient of a convolution with
# the tiny initial weights in front of a BatchNorm is ~1/|w| and computed with cancellation, so
# single elements differ by a few percent (seen: 8e-5 on updates of ~1.5e-3, the stem convolution):
# there each parameter tensor's update must agree in norm, to 5 % of its size. (CPU: float reduction
# order, and two float32 ulps at 1.0 for the BatchNorm weights.)
TOLERANCES = {"cpu": dict(loss=1e-4, delta=1e-2, delta_atol=2.5e-7),
              "cuda": dict(loss=1e-3, delta_norm=0.05)}


def sgd(net, schedule=lambda _: 1.0, lr=1e-3):
    """Plain SGD: parameter changes are proportional to the gradients, so comparing them checks the
    gradients themselves (AdamW's first steps are nearly sign(gradient) and would hide errors). No
    momentum: the optimiser has no state to synchronise between two implementations."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def assert_same_update(p0, fast, ref, tol, what):
    if "delta_norm" not in tol:
        torch.testing.assert_close(fast - p0, ref - p0, rtol=tol["delta"], atol=tol["delta_atol"],
                                   msg=lambda m: f"{what}: {m}")
        return
    error, size = (fast - ref).norm().item(), (ref - p0).norm().item()
    assert error <= tol["delta_norm"] * size + 1e-6 * fast.numel() ** 0.5, \
        f"{what}: |difference| {error:.3g}, |update| {size:.3g}"


@pytest.mark.parametrize("device", DEVICES)
def test_three_steps_match_the_reference_step(device, exact_cuda):
    """Steps 0-2 (feedback off, then on and ramping; pseudo labels in every step), each started from the
    same weights in both implementations: the step is chaotic over several steps (rounding in the
    feedback factor changes the teacher a little, and a changed teacher moves arg-maxes), so the
    reference is re-synchronised before every step and each single update is compared."""
    tol = TOLERANCES[device]
    hyper = FreeNetHyper(down_step=10, feedback_start=1, feedback_complete=4, feedback_weight=2.0)
    torch.manual_seed(0)
    teacher, student = PoseHighResolutionNet(24, 8), PoseHighResolutionNet(24, 8)
    with torch.no_grad():
        teacher.final_layer.bias += 0.5   # teacher peaks above the 0.2 floor (§7.1): pseudo labels exist
    r_teacher, r_student = copy.deepcopy(teacher), copy.deepcopy(student)
    device = torch.device(device)
    teacher.to(device), student.to(device)

    warmup = partial(cosine_with_warmup, warmup_steps=0, total_steps=10)   # step 0 (no feedback) updates too

    def no_scaler():
        return torch.amp.GradScaler(device.type, enabled=False)

    fast = FreeNetStep(OptimizedModel(teacher, *sgd(teacher, warmup), no_scaler()),
                       OptimizedModel(student, *sgd(student, warmup), no_scaler()), U24, hyper, device)
    t_opt, t_sched = sgd(r_teacher, warmup)
    s_opt, s_sched = sgd(r_student, warmup)
    moved = set()
    for step in range(3):
        r_teacher.load_state_dict(teacher.state_dict()), r_student.load_state_dict(student.state_dict())
        start = [p.detach().clone() for p in list(r_teacher.parameters()) + list(r_student.parameters())]
        start_buffers = [b.clone() for b in list(r_teacher.buffers()) + list(r_student.buffers())]
        labeled, unlabeled = batch(2, 10 + step), batch(4, 20 + step, with_target=False)
        out = fast(step, labeled, unlabeled)
        s_loss, t_loss, pl_mask = ref.freenet_step(step, r_teacher, r_student, t_opt, s_opt, t_sched, s_sched,
                                                   labeled, unlabeled, U24, hyper, normalize_images)
        assert pl_mask.sum() > 0                                                     # §6.4 is exercised
        for group, joints in U24.logging_groups.items():    # PL_kp_num (§9): pseudo labels kept per group
            assert float(out[f"pl_{group}"]) == float(pl_mask[:, list(joints)].sum()), group
        torch.testing.assert_close(out["s_loss"].cpu(), s_loss, rtol=tol["loss"], atol=1e-7)
        torch.testing.assert_close(out["t_loss"].cpu(), t_loss, rtol=tol["loss"], atol=1e-7)
        fast_params = [p.detach().cpu() for p in list(teacher.parameters()) + list(student.parameters())]
        ref_params = list(r_teacher.parameters()) + list(r_student.parameters())
        for i, (p0, p, q) in enumerate(zip(start, fast_params, ref_params)):
            assert_same_update(p0, p, q, tol, f"step {step}, parameter {i}")
            if not torch.equal(p, p0):
                moved.add(i)
        buffers = list(zip(list(teacher.named_buffers()) + list(student.named_buffers()),
                           list(r_teacher.buffers()) + list(r_student.buffers()), start_buffers))
        if "delta_norm" in tol:
            # CUDA: the teacher's BatchNorm statistics only. The student's also see its forward after
            # its update (§6.6a), with the few-percent differences of the stem update above grown
            # through the net down to BatchNorms over 8 values (batch 2, 2x2 maps at 64 px).
            buffers = buffers[:len(list(teacher.buffers()))]
        for i, ((name, buf), rbuf, b0) in enumerate(buffers):
            assert_same_update(b0.double(), buf.cpu().double(), rbuf.double(), tol, f"step {step}, buffer {i} {name}")
    assert len(moved) == len(start)     # every parameter of both networks was updated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP is a CUDA path")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amp_step_on_cuda_follows_the_fp32_step(dtype, exact_cuda):
    """The AMP path (autocast, GradScaler for fp16, channels_last) against fp32 on the same nets and
    batch: a labeled-only SGD step gives the same loss and the same update of the final layer (SGD:
    update = lr * gradient). Only the final layer: every other convolution is followed by BatchNorm,
    whose scale invariance makes the weight gradient ~1/|w| of the tiny initial weights, and its
    direction there follows rounding (fp32 vs bf16 cosine ~0.5 at the stem, also on the CPU). Then
    full FreeNet steps with feedback through the training optimiser (fused AdamW) stay finite and
    update every parameter. (Pseudo-label arg-maxes of untrained nets are too flat to compare
    across precisions.)"""
    from freenet.optim import make_optimized

    device = torch.device("cuda")
    hyper = FreeNetHyper(down_step=10, feedback_start=0, feedback_complete=4, feedback_weight=2.0)
    torch.manual_seed(0)
    nets = [PoseHighResolutionNet(24, 8).to(device) for _ in range(2)]

    def copies(autocast):
        teacher, student = (copy.deepcopy(n) for n in nets)
        if autocast is not None:
            teacher, student = (n.to(memory_format=torch.channels_last) for n in (teacher, student))
        return teacher, student

    def sgd_model(net, fp16):
        return OptimizedModel(net, *sgd(net), torch.amp.GradScaler("cuda", init_scale=2.0 ** 8, enabled=fp16))

    def flat(net, prefix=""):
        return torch.cat([p.detach().flatten().float().cpu() for n, p in net.named_parameters()
                          if n.startswith(prefix)])

    start, final_start = flat(nets[1]), flat(nets[1], "final_layer.")
    labeled = batch(8, 10)
    runs = {}
    for name, autocast in (("fp32", None), ("amp", dtype)):
        teacher, student = copies(autocast)
        step = FreeNetStep(sgd_model(teacher, False), sgd_model(student, autocast is torch.float16), U24, hyper, device,
                           autocast_dtype=autocast, channels_last=autocast is not None)
        runs[name] = step(0, labeled, None)["s_loss"].float().cpu(), flat(student, "final_layer.") - final_start
    (loss32, moved32), (loss_amp, moved_amp) = runs["fp32"], runs["amp"]
    torch.testing.assert_close(loss_amp, loss32, rtol=3e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(moved32, moved_amp, dim=0) > 0.99
    torch.testing.assert_close(moved_amp.norm(), moved32.norm(), rtol=2e-2, atol=0)

    teacher, student = copies(dtype)
    opt = [make_optimized(n, 1e-3, 1e-4, 0, 20, 0, 1e9, device, dtype is torch.float16) for n in (teacher, student)]
    step = FreeNetStep(*opt, U24, hyper, device, autocast_dtype=dtype, channels_last=True)
    # fp16: the GradScaler starts at 2^16 and skips the first few steps (fp16 gradients overflow: the
    # ~1/|w| gradients of the tiny initial weights, scaled), halving its scale each time, as designed.
    outs = [step(i, batch(2, 30 + i), batch(4, 40 + i, with_target=False)) for i in range(12)]
    assert all(torch.isfinite(o["s_loss"]) and torch.isfinite(o["t_loss"]) for o in outs)
    for net, first, scaler in ((teacher, flat(nets[0]), opt[0].scaler), (student, start, opt[1].scaler)):
        params = flat(net)
        assert torch.isfinite(params).all()
        assert (params != first).float().mean() > 0.99      # the GradScaler let updates through
        if dtype is torch.float16:
            assert 1.0 <= scaler.get_scale() <= 2.0 ** 16
