"""The one device decision of a run, and what precision it trains in (SPEC §8, §14.1)."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available (use --device cpu)")
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


def configure_backends(device: torch.device, cudnn_benchmark: bool = True) -> None:
    """Fixed input sizes: cuDNN autotuning pays off; TF32 matmuls for any fp32 work left on Ampere+."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
