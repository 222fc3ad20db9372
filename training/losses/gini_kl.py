r"""Gini + KL discriminability losses (``papers/004_bbf330f1e167a9fd.txt``, eq. 1-8).

On the last conv layer's non-negative activations ``A`` [m, c, h, w] with one-hot labels ``Y`` [m, n]:

- ``M`` = global average pool of ``A`` [m, c]; ``Ybar`` = ``Y`` with each column
  divided by its class count (eq. 4); ``S = M^T Ybar`` [c, n]: the mean
  activation of each channel per class (eq. 3);
- ``Sbar`` = rows of ``S`` normalised to sum 1 (eq. 2); Gini loss
  ``(1/c) sum_i (1 - sum_j Sbar_ij^2)`` (eq. 1);
- ``H^S`` = column sums of ``Sbar`` normalised (eq. 6), ``H^Y`` = label
  histogram (eq. 7); KL loss ``KL(H^S, H^Y) = sum_i H^S_i log(H^S_i / H^Y_i)`` (eq. 5).

The total is ``CE + lambda1 * Gini + lambda2 * KL`` (eq. 8), the extra terms
from ``start_epoch`` on (10 and lambda = 0.5 in the paper). Classes absent
from a batch are dropped from ``S`` and both histograms (their mean
activation is undefined), so such batches stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-8


def gini_kl_terms(activations: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gini, KL) of eq. 1 and 5 for activations [m, c, h, w] (or [m, c]) and int64 labels [m]."""
    pooled = activations.float().flatten(2).mean(dim=2) if activations.ndim > 2 else activations.float()
    one_hot = F.one_hot(target, num_classes).float()
    counts = one_hot.sum(dim=0)
    present = counts > 0
    class_means = pooled.t() @ (one_hot[:, present] / counts[present])  # S [c, n present]
    shares = class_means / class_means.sum(dim=1, keepdim=True).clamp_min(_EPS)  # Sbar
    gini = (1.0 - shares.pow(2).sum(dim=1)).mean()
    feature_hist = shares.sum(dim=0) / shares.sum().clamp_min(_EPS)
    label_hist = counts[present] / target.numel()
    kl = (feature_hist * (feature_hist.clamp_min(_EPS) / label_hist).log()).sum()
    return gini, kl


class GiniKLLoss(nn.Module):
    """Cross-entropy + ``lambda_gini * Gini + lambda_kl * KL`` on the last conv block (from ``start_epoch``).

    Args:
        num_classes: n.
        lambda_gini, lambda_kl: lambda1, lambda2 (0.5 each in the paper).
        start_epoch: First (1-based) epoch with the extra terms (10 in the paper).

    Call: ``loss(logits [N, n], target [N], blocks=[last conv activations [N, C, H, W]])``.
    """

    needs = ("last_block",)

    def __init__(self, num_classes: int, lambda_gini: float = 0.5, lambda_kl: float = 0.5, start_epoch: int = 10) -> None:
        super().__init__()
        if lambda_gini < 0 or lambda_kl < 0 or start_epoch < 1:
            raise ValueError(f"Gini+KL lambdas ({lambda_gini}, {lambda_kl}) must be >= 0 and start_epoch {start_epoch} >= 1")
        self.num_classes = int(num_classes)
        self.lambda_gini, self.lambda_kl, self.start_epoch = float(lambda_gini), float(lambda_kl), int(start_epoch)
        self.epoch = 1

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, blocks: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        loss = F.cross_entropy(logits.float(), target)
        if self.epoch < self.start_epoch:
            return loss
        if len(blocks) != 1:
            raise ValueError(f"Gini+KL needs the last conv block's activations, got {len(blocks)} tensors")
        gini, kl = gini_kl_terms(blocks[0], target, self.num_classes)
        return loss + self.lambda_gini * gini + self.lambda_kl * kl
