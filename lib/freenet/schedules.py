"""Learning-rate multiplier and pseudo-label keep ratio (SPEC §8). Plain functions of the step."""
from __future__ import annotations

import math


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, wait_steps: int = 0) -> float:
    """LR multiplier: 0 while waiting, linear warm-up, then half-cosine decay to 0 (SPEC §8)."""
    if step < wait_steps:
        return 0.0
    if step < warmup_steps + wait_steps:
        return step / max(1, warmup_steps + wait_steps)
    progress = (step - warmup_steps - wait_steps) / max(1, total_steps - warmup_steps - wait_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def topk_rate(step: int, rampdown_steps: int, min_rate: float) -> float:
    """Fraction of pseudo labels kept per part group: cosine ramp from 1 down to ``min_rate`` (SPEC §8)."""
    t = min(max(step, 0), rampdown_steps)
    return min(max(0.5 * (math.cos(math.pi * t / rampdown_steps) + 1.0), min_rate), 1.0)


def feedback_factor(step: int, start: int, complete: int, weight: float) -> float:
    """Ramp of the feedback term: min(1, (step + 1 − start) / (complete − start)) · weight (SPEC §6.6d)."""
    return min(1.0, (step + 1 - start) / max(1, complete - start)) * weight
