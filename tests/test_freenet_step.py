"""The circuit-feedback step (SPEC §6) on a width-8 HRNet with 64-px inputs."""
import copy
from functools import partial

import pytest
import torch

from conftest import random_batch
from freenet.device import autocast_cache_keeps_gradients
from freenet.freenet_step import FreeNetHyper, FreeNetStep
from freenet.heatmaps import argmax_keypoints
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet
from freenet.optim import make_optimized
from freenet.profiling import dispatched_ops
from freenet.pseudo_labels import body_part_mask, feedback_mask, select_targets
from freenet.schedules import topk_rate

JS = load_joint_set("ap10k")
CPU = torch.device("cpu")


def batch(n, seed, with_target=True):
    return random_batch(n, seed, 17, with_target)


def make_step(seed=0, **hyper):
    torch.manual_seed(seed)
    nets = [PoseHighResolutionNet(17, width=8) for _ in range(2)]
    opt = [make_optimized(n, lr, 1e-4, warmup_steps=0, total_steps=100, wait_steps=0, grad_clip=1e9, device=CPU,
                          amp_fp16=False) for n, lr in zip(nets, (1e-3, 1e-3))]
    return FreeNetStep(opt[0], opt[1], JS, FreeNetHyper(**{"down_step": 10, "feedback_start": 5,
                                                           "feedback_complete": 10, **hyper}), CPU)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def changed(before, model):
    return any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


L, U = batch(2, 1), batch(4, 2, with_target=False)


@pytest.mark.parametrize("clip, expected", [(0.5, [-0.3, -0.4]), (1e9, [-3.0, -4.0]), (0, [-3.0, -4.0])])
def test_descend_clips_the_gradient_norm(clip, expected):
    """loss = 3 w0 + 4 w1: gradient (3, 4), norm 5; SGD with lr 1 moves w by minus the (clipped) gradient;
    --grad-clip 0 clips nothing, as in the original."""
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    net = make_optimized(model, 1.0, 0.0, warmup_steps=0, total_steps=10, wait_steps=0, grad_clip=clip, device=CPU,
                         amp_fp16=False)
    net.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)   # AdamW would hide the scale of the gradient
    net.descend(model(torch.tensor([[3.0, 4.0]])).sum())
    assert model.weight.detach().flatten().tolist() == pytest.approx(expected, rel=1e-5)
    assert model.weight.grad is None


def test_step_updates_both_networks_and_returns_device_tensors():
    step = make_step()
    t0, s0 = params(step.teacher.model), params(step.student.model)
    out = step(0, L, U)
    assert changed(t0, step.teacher.model) and changed(s0, step.student.model)
    assert set(out) == {"s_loss", "t_loss"}          # ap10k has no logging groups
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and torch.isfinite(v) for v in out.values())


def test_student_loss_sends_no_gradient_to_the_teacher(monkeypatch):
    step = make_step()
    seen = {}
    original = step.student.descend

    def spy(loss):
        original(loss)
        seen["teacher_grads"] = [p.grad for p in step.teacher.model.parameters()]

    monkeypatch.setattr(step.student, "descend", spy)
    step(0, L, U)
    assert all(g is None for g in seen["teacher_grads"])


@pytest.mark.parametrize("at_step, depends", [(4, False), (5, True), (8, True)])
def test_teacher_update_depends_on_feedback_only_after_start(at_step, depends):
    """Same start, same batch, feedback weight 0 vs 2: the teachers differ only once feedback is on."""
    a, b = make_step(feedback_weight=0.0), make_step(feedback_weight=2.0)
    a(at_step, L, U)
    b(at_step, L, U)
    same_teacher = all(torch.equal(p, q) for p, q in zip(a.teacher.model.parameters(), b.teacher.model.parameters()))
    same_student = all(torch.equal(p, q) for p, q in zip(a.student.model.parameters(), b.student.model.parameters()))
    assert same_student                      # the feedback term never touches the student
    assert same_teacher != depends


def test_pseudo_labels_are_rendered_where_the_mask_says():
    step = make_step()
    g = torch.Generator().manual_seed(0)
    t_u = torch.rand(6, 17, 16, 16, generator=g) * 0.15   # peaks below the 0.2 floor
    t_u[:3, :, 5, 7] = 0.9                   # confident peaks in half of the batch
    maps, mask, fb_maps, fb_mask = step.targets(t_u, t_u, None, ramp=step.schedule(0)[0])
    assert fb_maps is None and fb_mask is None           # before feedback starts
    assert torch.equal(mask[:3], torch.ones(3, 17))
    rendered = maps.flatten(2).amax(-1) > 0
    assert torch.equal(rendered, mask.bool())
    coords, _ = argmax_keypoints(maps[:3])
    assert (coords == torch.tensor([7.0, 5.0])).all()     # peaks at the teacher's argmax
    assert mask[3:].sum() == 0               # low-confidence joints below the 0.2 floor are dropped


@pytest.mark.parametrize("feedback_start", [0, 5])
def test_first_student_forward_only_moves_batchnorm_statistics(monkeypatch, feedback_start):
    """§6.2: the step's no-grad student forward on X_ori changes the student's BatchNorm running
    statistics and nothing else: the same step without it gives the same weights, other statistics."""
    plain, skipping = make_step(feedback_start=feedback_start), make_step(feedback_start=feedback_start)
    forward, calls = skipping.student.model.forward, []

    def forward_but_the_first(x):
        calls.append((x, torch.is_grad_enabled()))
        return forward(x) if len(calls) > 1 else None

    monkeypatch.setattr(skipping.student.model, "forward", forward_but_the_first)
    plain(0, L, U)
    skipping(0, L, U)
    assert torch.equal(calls[0][0], skipping.views(L, U, "ori")) and not calls[0][1]
    for net in ("teacher", "student"):
        a, b = getattr(plain, net).model, getattr(skipping, net).model
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    bn = [(m, n) for m, n in zip(plain.student.model.modules(), skipping.student.model.modules())
          if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.num_batches_tracked == n.num_batches_tracked + 1 for m, n in bn)
    assert all(not torch.equal(m.running_mean, n.running_mean) for m, n in bn)
    assert all(torch.equal(a, b) for a, b in zip(plain.teacher.model.buffers(), skipping.teacher.model.buffers()))


def test_labeled_only_ablation_has_no_pseudo_labels_or_feedback():
    """--mu 0: the student learns from GT alone, exactly like a supervised update of the same batch."""
    step = make_step(feedback_start=0)
    ref = make_step(feedback_start=0)
    out = step(3, L, None)
    assert set(out) == {"s_loss", "t_loss"}
    assert not step.feedback_on(3, None)
    with pytest.raises(ValueError, match="the feedback term needs an unlabeled batch"):
        step.run(L, None, True, 1.0, 1.0)
    # reference: the same student update done by hand
    ref_student = ref.student
    with torch.no_grad():
        ref_student.model(ref.views(L, None, "ori"))                      # the BN side effect of §6.2
    ref.teacher.model(ref.views(L, None, "aug"))                          # teacher's aug forward (BN stats)
    pred = ref_student.model(ref.views(L, None, "aug"))
    ref_student.update(ref.loss(pred, L["target"], L["target_weight"]))
    for p, q in zip(step.student.model.parameters(), ref_student.model.parameters()):
        assert torch.allclose(p, q, atol=1e-7)


def mixed_precision_step(feedback_start, channels_last=False):
    """Both networks under bf16 autocast with enabled GradScalers: CUDA's AMP machinery on the CPU."""
    torch.manual_seed(0)
    nets = [PoseHighResolutionNet(17, width=8) for _ in range(2)]
    opt = [make_optimized(n, 1e-3, 1e-4, 0, 100, 0, 1e9, CPU, amp_fp16=True) for n in nets]
    return FreeNetStep(opt[0], opt[1], JS, FreeNetHyper(down_step=10, feedback_start=feedback_start,
                                                       feedback_complete=10), CPU, autocast_dtype=torch.bfloat16,
                       channels_last=channels_last)


def test_mixed_precision_path_on_the_cpu():
    """The autocast + GradScaler machinery of CUDA training, exercised on the CPU with bf16."""
    step = mixed_precision_step(feedback_start=0, channels_last=True)
    assert all(o.scaler.is_enabled() for o in (step.teacher, step.student))
    t0, s0 = params(step.teacher.model), params(step.student.model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert step.teacher.model(step.views(L, U, "ori")).dtype == torch.bfloat16
    out = step(1, L, U)
    assert torch.isfinite(out["s_loss"]) and torch.isfinite(out["t_loss"]) and out["t_loss"].dtype == torch.float32
    assert changed(t0, step.teacher.model) and changed(s0, step.student.model)
    assert all(p.dtype == torch.float32 for p in step.student.model.parameters())    # master weights stay fp32


def spy_gradients(monkeypatch, step) -> dict:
    """{network: [gradient of each parameter]} as the step's backward left them (before unscaling)."""
    seen = {}
    for name, net in (("teacher", step.teacher), ("student", step.student)):
        def spy(optimizer, name=name, net=net, unscale=net.scaler.unscale_):
            seen[name] = [None if p.grad is None else p.grad.clone() for p in net.model.parameters()]
            unscale(optimizer)

        monkeypatch.setattr(net.scaler, "unscale_", spy)
    return seen


def test_under_autocast_every_weight_of_both_networks_gets_its_gradient(monkeypatch):
    """Before feedback both networks run a no-grad forward (§6.2 student, §6.3 teacher's aug view) in
    the autocast region of their forwards with gradients. Where PyTorch's autocast cache keeps no
    gradient history for casts made under no_grad, every conv weight then silently got no gradient;
    there the step turns the cache off. Either way each parameter must receive a nonzero gradient."""
    step = mixed_precision_step(feedback_start=5)
    assert step.autocast_cache == autocast_cache_keeps_gradients("cpu", torch.bfloat16)
    grads = spy_gradients(monkeypatch, step)
    step(1, L, U)
    for name in ("teacher", "student"):
        assert all(g is not None and g.any() for g in grads[name]), name


def test_the_autocast_cache_check_ignores_the_callers_grad_mode():
    expected = autocast_cache_keeps_gradients.__wrapped__("cpu", torch.bfloat16)
    with torch.no_grad():
        assert autocast_cache_keeps_gradients.__wrapped__("cpu", torch.bfloat16) == expected


def test_autocast_without_its_cache_gives_the_same_step(one_thread):
    """The fallback for PyTorch releases that lose gradients through the cache changes no number
    before feedback (two steps: losses, weights, BatchNorm statistics)."""
    cached, uncached = mixed_precision_step(feedback_start=5), mixed_precision_step(feedback_start=5)
    uncached.autocast_cache = False
    for i in range(1, 3):
        a, b = cached(i, L, U), uncached(i, L, U)
        assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("teacher", "student"):
        x, y = (getattr(s, name).model.state_dict() for s in (cached, uncached))
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_autocast_without_its_cache_with_feedback_differs_by_rounding(monkeypatch, one_thread):
    """With feedback on, the teacher's two forwards with gradients share one cached cast, whose
    gradient is summed in bf16; without the cache each reaches the fp32 weight on its own and is
    summed in fp32. The student's gradients are the same."""
    steps = mixed_precision_step(feedback_start=1), mixed_precision_step(feedback_start=1)
    steps[1].autocast_cache = False
    (cached, uncached) = (spy_gradients(monkeypatch, s) for s in steps)
    for s in steps:
        s(1, L, U)
    assert all(torch.equal(a, b) for a, b in zip(cached["student"], uncached["student"]))
    errors = torch.stack([(a - b).norm() / b.norm() for a, b in zip(cached["teacher"], uncached["teacher"])])
    assert 0 < errors.max() < 2 ** -7                  # bf16 keeps 8 significant bits


# ---------------------------------------------------------------- the hot path's shape (no host reads, no loops)

def test_a_step_reads_no_value_back_to_the_host():
    """A full step with feedback, optimisers included, asks the host for no tensor value: no
    ``.item()``/``float()``/``if tensor`` (each a sync on CUDA) and no data-dependent shape."""
    step = make_step(feedback_start=0)
    step(0, L, U)                                     # optimiser state created outside the count
    ops = dispatched_ops(lambda: step(1, L, U))
    assert ops["aten.convolution_backward"] > 0       # the count saw the backward passes
    assert ops["aten._local_scalar_dense"] == 0
    assert ops["aten.nonzero"] == 0


def test_a_steps_launches_are_five_forward_and_three_backward_passes():
    """The launches of a step with feedback are the networks' own (README, Speed): five forward
    passes (§6.2, three in §6.3, the updated student in §6.6) and three backward passes (the
    student's, the teacher's through t_ori and t_aug), whose two teacher branches are summed into
    each teacher parameter's gradient with one add; selection, losses and optimisers are the rest (under 200)."""
    step = make_step(feedback_start=0)
    step(0, L, U)
    net = copy.deepcopy(step.student.model)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        fwd = dispatched_ops(lambda: net(x), launches_only=True)
    out = net(x)
    bwd = dispatched_ops(lambda: out.sum().backward(), launches_only=True)
    ops = dispatched_ops(lambda: step(1, L, U), launches_only=True)
    for name in ("aten.convolution", "aten.native_batch_norm", "aten.relu_", "aten.upsample_nearest2d"):
        assert ops[name] == 5 * fwd[name] > 0, name
    for name in ("aten.convolution_backward", "aten.native_batch_norm_backward", "aten.threshold_backward"):
        assert ops[name] == 3 * bwd[name] > 0, name
    teacher_params = sum(1 for _ in step.teacher.model.parameters())
    outside_networks = ops["aten.add"] - 5 * fwd["aten.add"] - 3 * bwd["aten.add"] - teacher_params
    assert 0 <= outside_networks <= 10
    networks = 5 * sum(fwd.values()) + 3 * (sum(bwd.values()) - bwd["aten.sum"] - bwd["aten.ones_like"])
    assert 0 < sum(ops.values()) - networks - teacher_params <= 200


def test_selection_is_a_fixed_number_of_tensor_ops():
    """Pseudo-label selection and rendering of one step dispatch the same number of tensor ops
    whatever the batch, the joint count or the number of part groups: no per-sample, per-joint or
    per-group Python loop (the original's per-joint .item() calls would add B·J)."""
    counts = []
    for joints, b in (("ap10k", 4), ("union24", 4), ("union24", 56)):
        js = load_joint_set(joints)
        g = torch.Generator().manual_seed(0)
        coords = torch.rand(b, js.num_joints, 2, generator=g) * 16
        conf, s_conf = torch.rand(2, b, js.num_joints, generator=g)
        groups, ratios = [p.joints for p in js.part_groups], [p.min_ratio for p in js.part_groups]
        run = partial(select_targets, coords, conf, groups, ratios, topk_rate(3, 10, 0.0), (16, 16), (s_conf, coords))
        run()                                                   # the group layout is cached on first use
        ops = dispatched_ops(run)
        assert ops["aten._local_scalar_dense"] == 0
        counts.append(sum(ops.values()))
    assert len(set(counts)) == 1
    # On a GPU each op costs ~14 us of launching (H100, PyTorch 2.11): the 1 ms target allows ~70.
    assert counts[0] <= 60


def test_the_selection_thresholds_of_the_config_reach_both_masks():
    """FREENET.PL_MIN_CONFIDENCE is body_part_mask's floor and FREENET.FEEDBACK_BAND feedback_mask's
    ratios (SPEC §7): a step built with other values selects as those functions do with them."""
    g = torch.Generator().manual_seed(1)
    t_u, s_u, t_aug_u = torch.rand(3, 8, JS.num_joints, 16, 16, generator=g)      # heatmaps of 8 samples
    conf, s_conf = t_u.flatten(2).amax(-1), s_u.flatten(2).amax(-1)              # (8, J) peak values
    groups, ratios = [p.joints for p in JS.part_groups], [p.min_ratio for p in JS.part_groups]
    ramp = topk_rate(3, 10, 0.0)
    default = make_step().targets(t_u, s_u, t_aug_u, ramp)
    other = make_step(pl_min_confidence=0.995, feedback_band=(0.1, 0.5)).targets(t_u, s_u, t_aug_u, ramp)
    assert torch.equal(other.mask, body_part_mask(conf, groups, ratios, ramp, floor=0.995))
    assert torch.equal(other.feedback_mask, feedback_mask(conf, s_conf, 0.1, 0.5))
    assert torch.equal(default.mask, body_part_mask(conf, groups, ratios, ramp))
    assert 0 < other.mask.sum() < default.mask.sum() and (conf[other.mask.bool()] >= 0.995).all()
    assert not torch.equal(other.feedback_mask, default.feedback_mask)
