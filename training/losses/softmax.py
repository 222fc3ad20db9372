"""Softmax cross-entropy on logits: the baseline the POD paper compares against (eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patchdet.training.losses.cosine import check_reduction


class SoftmaxLoss(nn.Module):
    """``-log softmax(z)_{y}`` averaged over the batch.

    Args:
        reduction: ``mean`` (eq. 1), ``sum`` or ``none``.
        label_smoothing: Passed to ``F.cross_entropy`` (0 in the paper and in our comparisons).
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits float [N, K], target int64 [N]."""
        return F.cross_entropy(logits.float(), target, reduction=self.reduction, label_smoothing=self.label_smoothing)
