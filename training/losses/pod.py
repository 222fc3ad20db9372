"""POD loss = NaC + lambda * SC (eq. 20 of ``003_45a2bbbab6f9405a.txt``), defaults alpha = 0.01, lambda = 1."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from patchdet.training.losses.nac import NaCLoss
from patchdet.training.losses.sc import SCLoss


class PODLoss(nn.Module):
    """Composition of ``NaCLoss`` and ``SCLoss``; forwards the NaC epoch hooks and state.

    Args:
        centroids: float [K, n] unit PEDCC centroids.
        alpha: NaC's delta weight.
        lam: Weight of the SC term (lambda).
        reduction: ``mean`` or ``sum`` for the NaC term (SC is a per-batch scalar, reduced with ``mean``).
    """

    def __init__(self, centroids: torch.Tensor, alpha: float = 0.01, lam: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"POD reduction {reduction!r} is unknown: expected mean or sum")
        if lam < 0:
            raise ValueError(f"POD lambda {lam} is invalid: expected >= 0")
        self.nac = NaCLoss(centroids, alpha=alpha, reduction=reduction)
        self.sc = SCLoss(centroids, reduction="mean")
        self.lam = float(lam)

    def set_epoch(self, epoch: int) -> None:
        self.nac.set_epoch(epoch)

    def end_epoch(self) -> float:
        return self.nac.end_epoch()

    def get_state(self) -> dict[str, Any]:
        return self.nac.get_state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.nac.load_state(state)

    def forward(self, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.nac(latent, target) + self.lam * self.sc(latent, target)
