"""Shared bits of the benchmark scripts: device choice, synchronised timing, JSON-line output."""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from typing import Callable

import torch

from freenet.cli import HelpFormatter
from freenet.profiling import dispatched_ops


def base_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every benchmark shares; ``--help`` opens with the first paragraph of ``doc``."""
    summary = " ".join(doc.strip().split("\n\n")[0].split())
    summary = re.sub(r" \(SPEC [^)]*\)", "", summary)  # the docstring's citations, for readers of the code
    p = argparse.ArgumentParser(description=summary, formatter_class=HelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--repeat", type=int, default=20, help="timed repetitions")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    return p


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int) -> dict:
    """Median and mean seconds per call of ``fn``, synchronised with the device."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times)}


def emit(record: dict) -> None:
    """One JSON line per measurement (easy to grep, plot or paste into the README)."""
    print(json.dumps(record), flush=True)


def count_ops(fn: Callable[[], object]) -> int:
    """Tensor operations one call of ``fn`` dispatches that give the device work (views and bare
    allocations left out; freenet.profiling): on a GPU about one kernel launch each, the same count on
    every device — a launch count measured without a GPU."""
    return sum(dispatched_ops(fn, launches_only=True).values())
