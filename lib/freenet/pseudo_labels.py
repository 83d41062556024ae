"""Which joints become pseudo labels, and which feed the feedback term (SPEC §7).

Tensor ops on the device; the only Python loop runs over the (four) part groups.
"""
from __future__ import annotations

from typing import Sequence

import torch

from freenet.schedules import topk_rate


def body_part_mask(confidence: torch.Tensor, groups: Sequence[Sequence[int]], min_ratios: Sequence[float],
                   step: int, rampdown_steps: int, floor: float = 0.2) -> torch.Tensor:
    """Body-part-aware pseudo-label mask (SPEC §7.1).

    confidence (B, J) teacher peak values. For each group the threshold is the confidence at rank
    ``min(int(n·r), n−1)`` of the group's n = B·|g| values sorted descending, with
    r = topk_rate(step, rampdown_steps, min_ratio), and never below ``floor``. A joint is kept
    when its confidence is >= its group's threshold (ties kept). Joints in no group are never kept.
    Returns a float mask (B, J) of 0/1.
    """
    mask = torch.zeros_like(confidence, dtype=torch.float32)
    for joints, min_ratio in zip(groups, min_ratios):
        conf = confidence[:, list(joints)]                        # (B, |g|)
        n = conf.numel()
        rank = min(int(n * topk_rate(step, rampdown_steps, min_ratio)), n - 1)
        sorted_conf = conf.flatten().float().sort(descending=True).values
        threshold = sorted_conf[rank].clamp(min=floor)            # stays on the device: no sync
        mask[:, list(joints)] = (conf >= threshold).float()
    return mask


def feedback_mask(teacher_conf: torch.Tensor, student_conf: torch.Tensor, good_ratio: float = 0.2,
                  bad_ratio: float = 0.2) -> torch.Tensor:
    """Mid-confidence band of teacher predictions used by the feedback term (SPEC §7.2).

    T, S = teacher and student confidences (B, J) flattened and sorted descending (N = B·J);
    good = max(T[int(g·N)], S[int(g·N)]), bad = min(T[int((1−b)·N)], S[int((1−b)·N)]);
    mask = bad <= teacher_conf <= good. Returns a float mask (B, J) of 0/1.
    """
    t = teacher_conf.flatten().float().sort(descending=True).values
    s = student_conf.flatten().float().sort(descending=True).values
    n = t.numel()
    i_good = min(int(good_ratio * n), n - 1)
    i_bad = min(int((1 - bad_ratio) * n), n - 1)
    good = torch.maximum(t[i_good], s[i_good])
    bad = torch.minimum(t[i_bad], s[i_bad])
    conf = teacher_conf.float()
    return ((conf >= bad) & (conf <= good)).float()
