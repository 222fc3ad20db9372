"""Self-correlation constraint (SC) loss, eq. 18-19 of the POD paper (``003_45a2bbbab6f9405a.txt``).

``D = normalize(X) - C_y`` ([B, n]: each sample's unit latent minus its unit
centroid), ``R = D^T D / (B - 1)`` ([n, n]) and the loss penalises the squared
off-diagonal entries of ``R``, decorrelating the latent dimensions.

Normalisation choices, and why:

- The latent is L2-normalised before subtracting the centroid: the paper says
  "X is the normalized feature matrix", and on the unit sphere ``D`` is
  bounded (``|D| <= 2``), so SC cannot be lowered by shrinking or growing the
  norm, which NaC controls.
- ``R`` is eq. 19 literally: a second-moment matrix about the centroids, not
  mean-centred and not divided by per-dimension standard deviations. Dividing
  by those (true correlation coefficients, as the prose says) blows up in the
  many dimensions where ``D`` is nearly zero once samples sit on their centroids.
- ``reduction="mean"`` (default) divides eq. 18's sum by ``n - 1``, the mean
  over each row's ``n - 1`` off-diagonal entries summed over rows, as the
  authors' public code does. It keeps ``lambda = 1`` meaning the same thing
  for every latent size; ``reduction="sum"`` is eq. 18 as printed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SC_REDUCTIONS = ("mean", "sum")


class SCLoss(nn.Module):
    """Sum of squared off-diagonal entries of the self-correlation matrix (a scalar per batch).

    Args:
        centroids: float [K, n] unit PEDCC centroids.
        reduction: ``mean`` (sum / (n - 1), default) or ``sum`` (eq. 18). SC is a
            statistic of the whole batch, so there is no per-sample ``none``.
    """

    def __init__(self, centroids: torch.Tensor, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in SC_REDUCTIONS:
            raise ValueError(f"SC reduction {reduction!r} is unknown: expected one of {', '.join(SC_REDUCTIONS)}")
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32), persistent=False)
        self.reduction = reduction

    def forward(self, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """latent float [B, n], target int64 [B] -> float32 scalar; 0 for a batch of one."""
        batch, dim = latent.shape
        if batch < 2:  # R needs B - 1 > 0; one sample carries no correlation information
            return latent.float().sum() * 0.0
        diff = F.normalize(latent.float(), dim=1, eps=1e-12) - self.centroids[target]
        corr = diff.T @ diff / (batch - 1)
        off_diagonal = corr.pow(2).sum() - corr.diagonal().pow(2).sum()
        return off_diagonal / (dim - 1) if self.reduction == "mean" and dim > 1 else off_diagonal
