"""Cosine loss (POD paper, first version ``001_9e71767c11aaf86e.txt``; eq. 9 of ``003_45a2bbbab6f9405a.txt``).

``L = mean_i (1 - cos(x_i, c_{y_i}))^2`` with ``c`` the unit PEDCC centroids.
"""

from __future__ import annotations

import torch
from torch import nn

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is unknown: expected one of {', '.join(REDUCTIONS)}")
    return reduction


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to per-sample values [N]."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def target_dot_and_norm(latent: torch.Tensor, centroids: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_i . c_{y_i}`` and ``|x_i|``, both float32 [N] (computed in float32 even under autocast).

    Args:
        latent: float [N, D] latent features x (not normalised).
        centroids: float [K, D] unit centroids.
        target: int64 [N] class indices.
    """
    if latent.ndim != 2 or latent.shape[1] != centroids.shape[1]:
        raise ValueError(f"latent has shape {tuple(latent.shape)}: expected [N, {centroids.shape[1]}]")
    x = latent.float()
    dot = (x * centroids[target].float()).sum(dim=1)
    return dot, x.norm(dim=1)


class CosineLoss(nn.Module):
    """``(1 - cos theta_{y_i})^2`` with ``cos = x . c / (|x| + eps)`` (eq. 9-11).

    Args:
        centroids: float [K, D] unit PEDCC centroids (kept as a non-persistent buffer:
            the model and checkpoint own them, not the loss).
        reduction: ``mean`` (the paper), ``sum`` or ``none`` (per-sample [N]).
        eps: Added to the norm, 1e-12 as in eq. 10.
    """

    def __init__(self, centroids: torch.Tensor, reduction: str = "mean", eps: float = 1e-12) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32), persistent=False)
        self.reduction = check_reduction(reduction)
        self.eps = eps

    def forward(self, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dot, norm = target_dot_and_norm(latent, self.centroids, target)
        cos = dot / (norm + self.eps)
        return reduce((1.0 - cos) ** 2, self.reduction)
