"""Several GPUs (or CPU processes) through ``torchrun``: rank helpers and gradient averaging.

Why not the ``DistributedDataParallel`` wrapper: the FreeNet teacher runs two forward passes with
gradients per step (aug view and ori view, each with its own BatchNorm batch statistics, SPEC
§6.3) before one backward. DDP's reducer marks each parameter ready once per backward and fails
on parameters reached through two graphs, and merging the two passes into one batch would change
the BatchNorm statistics. So each rank computes its gradients locally and they are averaged with
one bucketed all-reduce per network per step — the same arithmetic DDP performs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

BUCKET_BYTES = 25 * 2 ** 20  # DDP's default bucket size
_cpu_group = None  # gloo group beside an NCCL one, for host-side values (made on first use, by every rank)


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> int:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); returns the local rank."""
    if not launched_by_torchrun() or is_enabled():
        return int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return int(os.environ.get("LOCAL_RANK", 0))


def shutdown() -> None:
    global _cpu_group
    if is_enabled():
        dist.destroy_process_group()
    _cpu_group = None


def barrier() -> None:
    if is_enabled():
        dist.barrier()


def _host_group():
    """The process group for host values: the default one under gloo, else a gloo group of its own."""
    global _cpu_group
    if _cpu_group is None:
        _cpu_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _cpu_group


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank.

    One all-reduce of one number on the host, so the ranks wait for each other but not for their
    GPU's queue: cheap enough for every step.
    """
    if not is_enabled():
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(value.item())  # a CPU tensor: no device sync


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks, on its device (logged losses: each rank has its own batch); ``t``
    itself on one process."""
    if not is_enabled() or world_size() == 1:
        return t
    total = t.clone()
    dist.all_reduce(total)
    return total / world_size()


def from_main(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not is_enabled():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_host_group())
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model behind a DDP/compile wrapper (checkpoints store its state_dict)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def average_gradients(model: nn.Module) -> None:
    """Mean of every parameter gradient over ranks, in ~25 MB flat buckets. No-op on one process."""
    if not is_enabled() or world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    bucket, size = [], 0
    for g in grads:
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= BUCKET_BYTES:
            _reduce_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def check_in_sync(model: nn.Module, what: str) -> None:
    """Raise if the ranks' copies of ``model`` differ (averaged gradients keep them identical)."""
    if not is_enabled():
        return
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(total) for _ in range(world_size())]
    dist.all_gather(gathered, total)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"the {what} weights differ across ranks: {[float(g) for g in gathered]}")


def broadcast_model(model: nn.Module) -> None:
    """Start every rank from rank 0's weights and buffers."""
    if not is_enabled():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)
