"""Heatmap loss (SPEC §5.4)."""
from __future__ import annotations

import torch


def weighted_heatmap_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
    """Σ_{b,j} w[j]·m[b,j]·mean_pixels((pred − target)²) / B, in float32 (SPEC §5.4).

    pred, target (B, J, H, W); mask (B, J) 0/1 (GT validity or the pseudo-label mask);
    weights (J,) the joint set's loss weights. No ½ factor. The weight is indexed by joint only
    (DECISION §14.2: the original indexed it by batch position by mistake).
    """
    err = (pred.float() - target.float()).pow(2).mean(dim=(2, 3))  # (B, J)
    return (err * mask.float() * weights.float()).sum() / pred.shape[0]
