"""The recordable step behind --cuda-graphs, checked on the CPU: same results as the eager step, and
nothing in it that a CUDA graph cannot record (host reads, tensors made from host data)."""
import pytest
import torch

from conftest import random_batch
from freenet.cuda_graphs import GraphedStep
from freenet.device import DeviceError
from freenet.freenet_step import FreeNetHyper, FreeNetStep
from freenet.joints import load_joint_set
from freenet.models import PoseHighResolutionNet
from freenet.optim import OptimizedModel, make_optimized
from freenet.profiling import dispatched_ops

JS = load_joint_set("union21")       # has logging groups: the pseudo-label counts are part of the step
CPU = torch.device("cpu")
HYPER = FreeNetHyper(down_step=6, feedback_start=2, feedback_complete=5, feedback_weight=2.0)


def make_step(hyper=HYPER, device=CPU, amp=None):
    torch.manual_seed(0)
    nets = [PoseHighResolutionNet(JS.num_joints, width=8) for _ in range(2)]
    for net in nets:    # heatmaps above the 0.2 floor: the keep ratio decides which pseudo labels stay
        with torch.no_grad():
            net.final_layer.bias += 0.5
        net.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    opt = [make_optimized(n, lr, 1e-4, warmup_steps=2, total_steps=8, wait_steps=0, grad_clip=1e9, device=device,
                          amp_fp16=amp == torch.float16) for n, lr in zip(nets, (1e-4, 1e-3))]
    return FreeNetStep(opt[0], opt[1], JS, hyper, device, amp, channels_last=device.type == "cuda")


def batches(step):
    return random_batch(2, 10 + step, JS.num_joints), random_batch(4, 50 + step, JS.num_joints, with_target=False)


def state(net: OptimizedModel) -> dict:
    return {**net.model.state_dict(), "lr": torch.tensor(net.lr)}


def test_replayable_step_equals_the_eager_step(one_thread):
    """Six steps across the feedback start (another phase), the warm-up, the LR warm-up and the
    keep-ratio ramp: outputs, weights, BatchNorm statistics and learning rates all equal the eager
    step's, bit for bit."""
    eager, graphed = make_step(), GraphedStep(make_step(), record=False)
    kept = []
    for i in range(6):
        labeled, unlabeled = batches(i)
        a, b = eager(i, labeled, unlabeled), graphed(i, labeled, unlabeled)
        assert set(a) == set(b) == {"s_loss", "t_loss", *(f"pl_{g}" for g in JS.logging_groups)}
        for k in a:
            assert torch.equal(b[k], a[k]), f"step {i}: {k} {b[k]} != {a[k]}"
        kept.append(sum(a[f"pl_{g}"] for g in JS.logging_groups))
    assert kept[0] > kept[-1] > 0                                   # the ramp took effect
    assert graphed.phase is True and graphed.eager_steps == 4       # steps 2..5 ran with feedback
    for mine, theirs in ((graphed.step.teacher, eager.teacher), (graphed.step.student, eager.student)):
        a, b = state(theirs), state(mine)
        assert all(torch.equal(b[k], a[k]) for k in a)
    fresh = make_step().teacher.model.state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in graphed.step.teacher.model.state_dict().items())


def test_pseudo_label_counts_are_per_logging_group():
    step = make_step(FreeNetHyper(down_step=6, feedback_start=100))
    mask = torch.zeros(8, JS.num_joints)
    mask[:, 0] = 1.0
    mask[:3, -1] = 1.0
    counts = step.logging_matrix @ mask.sum(0)
    expected = [8.0 * (0 in joints) + 3.0 * (JS.num_joints - 1 in joints) for joints in JS.logging_groups.values()]
    assert counts.tolist() == expected and sum(expected) > 0


def test_the_step_is_recordable():
    """What a CUDA graph cannot record, counted in the step with the schedule numbers as device
    tensors: values read back to the host, tensors made from host data (each a blocking copy to the
    GPU), data-dependent shapes."""
    step = make_step(FreeNetHyper(down_step=6, feedback_start=0, feedback_complete=5))
    labeled, unlabeled = batches(0)
    step(0, labeled, unlabeled)                        # optimiser state and cached layouts made here
    ramp, factor = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.8)
    ops = dispatched_ops(lambda: step.run(labeled, unlabeled, True, ramp, factor))
    assert ops["aten.convolution_backward"] > 0 and ops["aten._fused_adamw_"] == 2
    for op in ("aten._local_scalar_dense", "aten.lift_fresh", "aten.nonzero"):
        assert ops[op] == 0, op
    # and the eager step makes none either: its ramp and factor are plain numbers
    assert dispatched_ops(lambda: step(1, labeled, unlabeled))["aten.lift_fresh"] == 0


def test_checkpoints_are_those_of_the_eager_step(one_thread):
    """Learning rates are device tensors while the graphed step runs; its checkpoints still hold
    numbers, equal to the eager step's, and load into a plain optimiser."""
    eager, graphed = make_step(), GraphedStep(make_step(), record=False)
    for i in range(3):
        eager(i, *batches(i))
        graphed(i, *batches(i))
    assert isinstance(graphed.step.student.optimizer.param_groups[0]["lr"], torch.Tensor)
    for name in ("teacher", "student"):
        a, b = getattr(eager, name).state_dict(name), getattr(graphed.step, name).state_dict(name)
        assert b[f"{name}_optimizer"]["param_groups"] == a[f"{name}_optimizer"]["param_groups"]
        assert b[f"{name}_scheduler"] == a[f"{name}_scheduler"]
        assert type(b[f"{name}_optimizer"]["param_groups"][0]["lr"]) is float
        for k, state in a[f"{name}_optimizer"]["state"].items():
            assert all(torch.equal(b[f"{name}_optimizer"]["state"][k][s], v) for s, v in state.items())
    plain = make_step().student
    plain.optimizer.load_state_dict(graphed.step.student.state_dict("student")["student_optimizer"])
    assert plain.lr == eager.student.lr > 0


def test_batches_of_another_shape_are_refused():
    graphed = GraphedStep(make_step(), record=False)
    labeled, unlabeled = batches(0)
    graphed(0, labeled, unlabeled)
    with pytest.raises(ValueError, match="unlabeled batch field 'ori'.*same shape"):
        graphed(1, labeled, random_batch(3, 1, JS.num_joints, with_target=False))
    with pytest.raises(ValueError, match="unlabeled batch is missing"):
        graphed(1, labeled, None)


def test_recording_needs_cuda():
    with pytest.raises(DeviceError, match="--cuda-graphs needs a CUDA device"):
        GraphedStep(make_step())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="recording needs CUDA")
@pytest.mark.parametrize("amp", [None, torch.float16])
def test_recorded_step_on_cuda_follows_the_eager_step(amp):
    """On a GPU: eight steps recorded and replayed (one eager warm-up step per phase, a recording at
    steps 1 and 3, replays after) against the eager step on the same GPU, with cuDNN's deterministic
    algorithms. Same kernels in the same order: the results agree to rounding."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        cuda = torch.device("cuda")
        eager, graphed = make_step(device=cuda, amp=amp), GraphedStep(make_step(device=cuda, amp=amp), warmup_steps=1)
        for i in range(8):
            labeled, unlabeled = batches(i)
            a, b = eager(i, labeled, unlabeled), graphed(i, labeled, unlabeled)
            for k in a:
                torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=lambda m: f"step {i}, {k}: {m}")
        assert graphed.graph is not None and graphed.phase is True and graphed.eager_steps == 1
        for mine, theirs in ((graphed.step.teacher, eager.teacher), (graphed.step.student, eager.student)):
            assert mine.lr == pytest.approx(theirs.lr, rel=1e-6)
            a, b = theirs.model.state_dict(), mine.model.state_dict()
            for k in a:
                torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=lambda m: f"{k}: {m}")
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
