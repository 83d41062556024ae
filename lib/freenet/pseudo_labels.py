"""Which joints become pseudo labels, and which feed the feedback term (SPEC §7), and the maps
both are trained on (SPEC §5.2).

Tensor ops on the device, no per-group or per-element Python loop, no host-device copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from freenet.device import device_constants
from freenet.heatmaps import render_gaussians


class UnlabeledTargets(NamedTuple):
    """What the unlabeled images of one step are trained on."""

    maps: torch.Tensor                     # (Bu, J, H, W) the student's pseudo labels (§6.4)
    mask: torch.Tensor                     # (Bu, J) the joints kept for them (§7.1)
    feedback_maps: torch.Tensor | None     # (Bu, J, H, W) the teacher's aug-view peaks, re-rendered (§6.6)
    feedback_mask: torch.Tensor | None     # (Bu, J) the mid-confidence band (§7.2)


def select_targets(coords: torch.Tensor, confidence: torch.Tensor, groups: Sequence[Sequence[int]],
                   min_ratios: Sequence[float], ramp: float | torch.Tensor, heatmap_size: tuple[int, int],
                   feedback: tuple[torch.Tensor, torch.Tensor] | None = None, floor: float = 0.2,
                   band: tuple[float, float] = (0.2, 0.2)) -> UnlabeledTargets:
    """Pseudo labels and, with ``feedback``, the feedback targets of one step, from decoded peaks.

    coords, confidence: the teacher's ori-view peaks (Bu, J, 2), (Bu, J) (§6.4).
    ramp: the step's keep-ratio cosine ``topk_rate(step, rampdown_steps, 0.0)`` (see body_part_mask).
    feedback: (the student's aug-view confidences before its update (Bu, J), the teacher's
    aug-view peak coordinates (Bu, J, 2)) (§6.6, §7.2); None before feedback starts.
    floor, band: the confidence floor of :func:`body_part_mask` and the (good, bad) ratios of
    :func:`feedback_mask`. Both sets of maps are rendered in one call: the rendering's kernels are
    launched once.
    """
    mask = body_part_mask(confidence, groups, min_ratios, ramp, floor)
    if feedback is None:
        return UnlabeledTargets(render_gaussians(coords, mask, heatmap_size), mask, None, None)
    student_conf, fb_coords = feedback
    fb_mask = feedback_mask(confidence, student_conf, *band)
    maps = render_gaussians(torch.cat([coords, fb_coords]), torch.cat([mask, fb_mask]), heatmap_size)
    n = coords.shape[0]
    return UnlabeledTargets(maps[:n], mask, maps[n:], fb_mask)


def body_part_mask(confidence: torch.Tensor, groups: Sequence[Sequence[int]], min_ratios: Sequence[float],
                   ramp: float | torch.Tensor, floor: float = 0.2) -> torch.Tensor:
    """Body-part-aware pseudo-label mask (SPEC §7.1).

    confidence (B, J) teacher peak values. For each group the threshold is the confidence at rank
    ``min(int(n·r), n−1)`` of the group's n = B·|g| values sorted descending, with
    r = topk_rate(step, rampdown_steps, min_ratio) = min(max(ramp, min_ratio), 1), and never below
    ``floor``. ``ramp = topk_rate(step, rampdown_steps, 0.0)``: a number, or a 0-dim float64 tensor
    on the device (a CUDA graph replays with a new value in it each step). A joint is kept when its
    confidence is >= its group's threshold (ties kept). Joints in no group are never kept; a joint
    listed in several groups follows the last. Returns a float mask (B, J) of 0/1.

    All groups at once, in a fixed number of kernels and with no host-device copy: the group
    layout lives on the device (cached per joint set and batch size), and the ranks are computed
    there in float64, the precision of Python's ``int(n * r)``.
    """
    b, j = confidence.shape
    if not groups:
        return torch.zeros(b, j, device=confidence.device)
    layout = _group_layout(tuple(tuple(int(k) for k in g) for g in groups), tuple(float(r) for r in min_ratios),
                           j, b, confidence.device)
    conf = confidence.float()
    values = torch.where(layout.padded, layout.fill, conf.t()[layout.index])    # (G+1, max|g|, B)
    ordered = values.flatten(1).sort(dim=1, descending=True).values          # padding (-inf) sorts last
    # int() of the non-negative float64 product truncates, as Python's int(n * r). topk_rate's cap
    # of r at 1 is the n − 1 minimum (r >= 1 gives n·r >= n). One bound only: clamp(min=t, max=1.0)
    # would read a tensor t back to the host.
    rank = torch.minimum((layout.sizes * layout.min_ratios.clamp(min=ramp)).long(), layout.last_rank)
    threshold = ordered.gather(1, rank[:, None])[:, 0].clamp(min=floor)      # (G+1,), +inf for no group
    return (conf >= threshold[layout.group_of]).float()


@dataclass(frozen=True)
class _GroupLayout:
    """The groups as rows, plus a last row of +inf: the threshold of joints in no group."""

    index: torch.Tensor        # (G+1, max|g|) joint ids, 0 on the padding
    padded: torch.Tensor       # (G+1, max|g|, 1) True where ``fill`` replaces the confidence
    fill: torch.Tensor         # (G+1, max|g|, 1) -inf on the padding, +inf on the last row
    sizes: torch.Tensor        # (G+1,) float64 n = B·|g| (1 for the last row)
    min_ratios: torch.Tensor   # (G+1,) float64 (1 for the last row)
    last_rank: torch.Tensor    # (G+1,) int64 n − 1
    group_of: torch.Tensor     # (J,) the joint's row, G for none


@device_constants(maxsize=64)
def _group_layout(groups: tuple[tuple[int, ...], ...], min_ratios: tuple[float, ...], num_joints: int,
                  batch: int, device: torch.device) -> _GroupLayout:
    if len(groups) != len(min_ratios) or not all(groups):
        raise ValueError(f"body_part_mask needs one min ratio per non-empty group, got {len(groups)} groups "
                         f"and {len(min_ratios)} ratios")
    rows, width = len(groups) + 1, max(len(g) for g in groups)
    index = torch.zeros(rows, width, dtype=torch.long)
    padded = torch.ones(rows, width, 1, dtype=torch.bool)
    fill = torch.full((rows, width, 1), float("-inf"))
    fill[-1] = float("inf")
    group_of = torch.full((num_joints,), len(groups), dtype=torch.long)
    for g, joints in enumerate(groups):
        index[g, :len(joints)] = torch.tensor(joints)
        padded[g, :len(joints)] = False
        group_of[list(joints)] = g
    sizes = torch.tensor([batch * len(g) for g in groups] + [1], dtype=torch.float64)
    ratios = torch.tensor(list(min_ratios) + [1.0], dtype=torch.float64)
    return _GroupLayout(*(t.to(device) for t in (index, padded, fill, sizes, ratios, sizes.long() - 1, group_of)))


def feedback_mask(teacher_conf: torch.Tensor, student_conf: torch.Tensor, good_ratio: float = 0.2,
                  bad_ratio: float = 0.2) -> torch.Tensor:
    """Mid-confidence band of teacher predictions used by the feedback term (SPEC §7.2).

    T, S = teacher and student confidences (B, J) flattened and sorted descending (N = B·J);
    good = max(T[int(g·N)], S[int(g·N)]), bad = min(T[int((1−b)·N)], S[int((1−b)·N)]);
    mask = bad <= teacher_conf <= good. Returns a float mask (B, J) of 0/1.
    """
    ordered = torch.stack([teacher_conf.flatten(), student_conf.flatten()]).float().sort(dim=1, descending=True).values
    n = ordered.shape[1]
    good = ordered[:, min(int(good_ratio * n), n - 1)].amax()
    bad = ordered[:, min(int((1 - bad_ratio) * n), n - 1)].amin()
    conf = teacher_conf.float()
    return ((conf >= bad) & (conf <= good)).float()
