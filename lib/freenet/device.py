"""The one device decision of a run, and what precision it trains in (SPEC §8, §14.1)."""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Callable, TypeVar

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

T = TypeVar("T")


class DeviceError(RuntimeError):
    """The requested device is not available here."""


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity where the OS has one, e.g. under a job scheduler)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` as
    named (``cuda`` = this rank's GPU). A name torch cannot parse (``gpu``) or another kind of device
    (``mps``) is a :class:`DeviceError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists twenty device types; say what this project takes
        raise DeviceError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type not in ("cpu", "cuda"):   # mps, xpu, ...: nothing here is written or tested for them
        raise DeviceError(f"device {name!r}: this project runs on the CPU or CUDA (use cpu, cuda, cuda:N or auto)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def autocast_dtype(device: torch.device, amp: bool, dtype: str = "fp16") -> torch.dtype | None:
    """fp16 (with a GradScaler) or bf16 autocast on CUDA; None (fp32) on the CPU or with ``--no-amp``."""
    if not amp:
        return None
    if device.type != "cuda":
        log.info("AMP is a CUDA feature; training in fp32 on %s", device)
        return None
    if dtype not in AMP_DTYPES:
        raise ValueError(f"unknown AMP dtype {dtype!r} (expected one of {', '.join(AMP_DTYPES)})")
    return AMP_DTYPES[dtype]


def device_constants(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``functools.lru_cache`` for the functions that build constant tensors on a device from hashable
    arguments (the device among them): built once, they cost no host-to-device copy per call, which
    blocks on CUDA and is not allowed inside a CUDA graph.

    They are built as real tensors even under a ``FakeTensorMode`` (``benchmarks/roofline.py``, whose
    mode takes real inputs): a fake tensor kept in the cache would reach later calls with real tensors.
    """
    def decorate(build: Callable[..., T]) -> Callable[..., T]:
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args):
            with unset_fake_temporarily():
                return build(*args)
        return cached
    return decorate


@functools.lru_cache(maxsize=None)
def autocast_cache_keeps_gradients(device_type: str, dtype: torch.dtype) -> bool:
    """Whether one autocast region may hold both no-grad and gradient forwards of a network (§8).

    Inside an autocast region each fp32 weight is cast once and the cast reused. Older PyTorch
    releases (fixed in late 2025, pytorch/pytorch#142234 and #158232) cached a cast made under
    ``no_grad`` without its autograd history, so a later forward with gradients in the same region
    reused it and the weights behind it silently received no gradient. The FreeNet step has exactly
    that pattern (§6.2's no-grad student pass, then the student's forward with gradients), so on such
    a release it runs autocast without the cache (``FreeNetStep.autocast``). Checked once per device
    type and dtype, with a 2x2 linear layer (gradients on, whatever the caller's grad mode).
    """
    layer = torch.nn.Linear(2, 2, device=device_type)
    x = torch.ones(1, 2, device=device_type)
    with torch.enable_grad(), torch.autocast(device_type, dtype=dtype):
        with torch.no_grad():
            layer(x)
        return layer(x).requires_grad


def configure_backends(device: torch.device, cudnn_benchmark: bool = True, cudnn_deterministic: bool = False,
                       cudnn_enabled: bool = True) -> None:
    """Fixed input sizes: cuDNN autotuning pays off; TF32 matmuls for any fp32 work left on Ampere+.
    ``cudnn_deterministic`` (CUDNN.DETERMINISTIC) picks deterministic kernels and turns autotuning off;
    ``cudnn_enabled`` False (CUDNN.ENABLED) uses PyTorch's own convolutions instead of cuDNN.

    On the CPU, keep large freed buffers in the heap: by default glibc hands every block above
    ~32 MB back to the OS and the next step page-faults it in again (the two pseudo-label map
    tensors of a paper-size step alone cost ~8 ms of page faults)."""
    if device.type == "cuda":
        torch.backends.cudnn.enabled = cudnn_enabled
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark and not cudnn_deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()


def keep_freed_memory(mmap_threshold: int = 256 * 2 ** 20, trim_threshold: int = 512 * 2 ** 20) -> bool:
    """glibc ``mallopt``: serve blocks below ``mmap_threshold`` from the heap and keep up to
    ``trim_threshold`` of freed memory. No-op (False) where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(
            libc.mallopt(m_trim_threshold, trim_threshold))
    except (OSError, AttributeError):
        return False
