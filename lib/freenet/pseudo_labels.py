"""Which joints become pseudo labels, and which feed the feedback term (SPEC §7).

Tensor ops on the device, no per-group or per-element Python loop, no host-device copy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from freenet.schedules import topk_rate


def body_part_mask(confidence: torch.Tensor, groups: Sequence[Sequence[int]], min_ratios: Sequence[float],
                   step: int, rampdown_steps: int, floor: float = 0.2) -> torch.Tensor:
    """Body-part-aware pseudo-label mask (SPEC §7.1).

    confidence (B, J) teacher peak values. For each group the threshold is the confidence at rank
    ``min(int(n·r), n−1)`` of the group's n = B·|g| values sorted descending, with
    r = topk_rate(step, rampdown_steps, min_ratio), and never below ``floor``. A joint is kept
    when its confidence is >= its group's threshold (ties kept). Joints in no group are never kept;
    a joint listed in several groups follows the last. Returns a float mask (B, J) of 0/1.

    All groups at once, in a fixed number of kernels and with no host-device copy: the group
    layout lives on the device (cached per joint set), and the ranks are computed there in float64,
    the precision of Python's ``int(n * r)``.
    """
    b, j = confidence.shape
    if not groups:
        return torch.zeros(b, j, device=confidence.device)
    layout = _group_layout(tuple(tuple(int(k) for k in g) for g in groups), tuple(float(r) for r in min_ratios),
                           j, confidence.device)
    conf = confidence.float()
    values = conf[:, layout.index]                                           # (B, G, max|g|)
    values = values.masked_fill(layout.padding, float("-inf")).transpose(0, 1).reshape(len(groups), -1)
    ordered = values.sort(dim=1, descending=True).values                     # padding sorts last
    ramp = topk_rate(step, rampdown_steps, 0.0)                              # the cosine before the clamp
    n = layout.sizes * b                                                     # (G,) float64
    rank = torch.minimum(torch.floor(n * layout.min_ratios.clamp(min=ramp).clamp(max=1.0)), n - 1)
    threshold = ordered.gather(1, rank.long()[:, None])[:, 0].clamp(min=floor)
    # one more slot, +inf, for joints in no group
    per_joint = torch.cat([threshold, threshold.new_full((1,), float("inf"))])[layout.group_of]
    return (conf >= per_joint).float()


@dataclass(frozen=True)
class _GroupLayout:
    index: torch.Tensor        # (G, max|g|) joint ids, padded with 0
    padding: torch.Tensor      # (1, G, max|g|) True on the padding
    sizes: torch.Tensor        # (G,) float64 |g|
    min_ratios: torch.Tensor   # (G,) float64
    group_of: torch.Tensor     # (J,) the joint's group, G for none


@functools.lru_cache(maxsize=64)
def _group_layout(groups: tuple[tuple[int, ...], ...], min_ratios: tuple[float, ...], num_joints: int,
                  device: torch.device) -> _GroupLayout:
    if len(groups) != len(min_ratios) or not all(groups):
        raise ValueError(f"body_part_mask needs one min ratio per non-empty group, got {len(groups)} groups "
                         f"and {len(min_ratios)} ratios")
    width = max(len(g) for g in groups)
    index = torch.zeros(len(groups), width, dtype=torch.long)
    padding = torch.ones(len(groups), width, dtype=torch.bool)
    group_of = torch.full((num_joints,), len(groups), dtype=torch.long)
    for g, joints in enumerate(groups):
        index[g, :len(joints)] = torch.tensor(joints)
        padding[g, :len(joints)] = False
        group_of[list(joints)] = g
    return _GroupLayout(index.to(device), padding[None].to(device),
                        torch.tensor([len(g) for g in groups], dtype=torch.float64, device=device),
                        torch.tensor(min_ratios, dtype=torch.float64, device=device), group_of.to(device))


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
