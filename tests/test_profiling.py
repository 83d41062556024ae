"""Counting what code asks of the device: memory traffic per operation, on real and fake tensors
(freenet.profiling, benchmarks/roofline.py), and constants that survive a fake-tensor mode."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import REPO
from freenet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, _mean_std, normalize_images
from freenet.device import device_constants
from freenet.profiling import dispatched_ops, memory_traffic


def test_memory_traffic_reads_inputs_and_writes_outputs_once():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    # reads x (2·3·8·8) and w (4·3·3·3), writes y (2·4·6·6), 4 bytes each
    assert memory_traffic(lambda: F.conv2d(x, w)) == {"aten.convolution": 4 * (384 + 108 + 288)}
    y = torch.randn(10)
    assert memory_traffic(y.relu_) == {"aten.relu_": 80}                       # in place: read + write
    assert memory_traffic(lambda: torch.add(y, y, out=torch.empty(10))) == {"aten.add": 120}   # y once, out
    half = torch.randn(10, dtype=torch.float16)
    assert memory_traffic(lambda: half + 1) == {"aten.add": 40}               # two bytes an element
    assert memory_traffic(lambda: torch.cat([y, y[:5]])) == {"aten.cat": 120}  # 40 + 20 in, 60 out
    # views, metadata and allocation move nothing; a *_like factory only writes
    assert memory_traffic(lambda: (y.view(2, 5), y.t(), y.device, torch.empty_like(y), torch.zeros_like(y))) \
        == {"aten.zeros_like": 40}


def test_memory_traffic_counts_the_backward_pass():
    x = torch.randn(4, 5, requires_grad=True)
    traffic = memory_traffic(lambda: x.relu().sum().backward())
    assert traffic["aten.relu"] == 160                    # forward: read x, write relu(x)
    assert traffic["aten.sum"] == 80 + 4
    assert traffic["aten.threshold_backward"] == 3 * 80  # the incoming gradient and relu(x) in, x's gradient out


def test_launches_leave_out_views_allocations_and_autograds_detaches():
    conv, bn, x = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.randn(2, 3, 8, 8)

    def train():
        conv.zero_grad(), bn.zero_grad()       # gradients to None: no accumulating add_ on a second call
        bn(conv(x)).relu_().sum().backward()

    every, launches = dispatched_ops(train), dispatched_ops(train, launches_only=True)
    # the engine detaches saved tensors and gradients, sum's backward expands, CPU BatchNorm makes an empty
    # reserve: all seen by the dispatcher, none a kernel
    assert every["aten.detach"] > 0 and every["aten.expand"] == 1 and every["aten.empty"] == 1
    assert launches == {op: 1 for op in (
        "aten.convolution", "aten.native_batch_norm", "aten.add_", "aten.relu_", "aten.sum", "aten.ones_like",
        "aten.threshold_backward", "aten.native_batch_norm_backward", "aten.convolution_backward")}
    y = torch.randn(10)
    assert dispatched_ops(lambda: (y.view(2, 5), y.t(), y.expand(3, 10), y.detach(), torch.empty_like(y),
                                   y.new_empty(3), y.device), launches_only=True) == {}
    # in place and out= write, a read-back copies: each gives the device work
    assert dispatched_ops(lambda: (y.relu_(), torch.add(y, y, out=torch.empty(10)), y.sum().item()),
                          launches_only=True) == {"aten.relu_": 1, "aten.add": 1, "aten.sum": 1,
                                                  "aten._local_scalar_dense": 1}


def test_the_step_counts_the_same_on_fake_tensors(monkeypatch):
    """benchmarks/roofline.py counts the FreeNet step on fake tensors: the same operations and bytes
    as a real step at the same setting (after a first step that makes the optimisers' state)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from roofline import fake_step
    from train_step import build, synthetic_batch

    setting = dict(width=8, size=32, batch=2, mu=2, joints="union24", amp=False)
    fake, run = fake_step(argparse.Namespace(**setting))
    with fake:
        run()
        fake_ops, fake_traffic = dispatched_ops(run), memory_traffic(run)
    js, step, _ = build(argparse.Namespace(**setting, amp_dtype="fp16", channels_last=False, compile=False,
                                           compile_regions=False), torch.device("cpu"))
    labeled = synthetic_batch(2, 32, js.num_joints, True, 1)
    unlabeled = synthetic_batch(4, 32, js.num_joints, False, 2)
    step(0, labeled, unlabeled)
    assert dispatched_ops(lambda: step(1, labeled, unlabeled)) == fake_ops
    assert memory_traffic(lambda: step(2, labeled, unlabeled)) == fake_traffic
    assert fake_traffic["aten.convolution"] > 0 and "aten._fused_adamw_" in fake_traffic


def test_device_constants_stay_real_under_a_fake_mode():
    calls = []

    @device_constants(maxsize=2)
    def ramp(n: int, device: torch.device) -> tuple[torch.Tensor]:
        calls.append(n)
        return (torch.arange(n, device=device),)

    with FakeTensorMode(allow_non_fake_inputs=True):
        made = ramp(3, torch.device("cpu"))
    assert type(made[0]) is torch.Tensor and made[0].tolist() == [0, 1, 2]
    assert ramp(3, torch.device("cpu")) is made and calls == [3]


def test_normalize_images_after_a_fake_mode():
    """The ImageNet constants made first under a fake mode do not break later real calls."""
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    _mean_std.cache_clear()                   # made first under the fake mode, then reused
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = normalize_images(mode.from_tensor(images))
    assert fake.shape == (1, 3, 2, 2)
    out = normalize_images(images)
    expected = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert out[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-6)
