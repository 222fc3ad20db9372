"""Norm-adaptive cosine (NaC) loss, eq. 16-17 of the POD paper (``003_45a2bbbab6f9405a.txt``).

``cos_Na = cos / (1 + delta / |x|) = x . c / (|x| + delta)`` with
``delta(e, M) = alpha * e * M``: ``e`` the current epoch (1-based) and ``M`` the
mean latent norm over the previous epoch's training samples, 0.05 before the
first epoch ends. Low-norm samples feel delta most, so the loss lifts their
norm (the paper's Table I: low-norm samples are less accurate).

The authors' public code differs in two details we do not copy: it divides by
``sqrt(|x|^2 + delta^2)`` instead of ``|x| + delta``, and averages the norm of
the PEDCC layer's output rather than of the latent. We follow the equations.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from patchdet.training.losses.cosine import check_reduction, reduce, target_dot_and_norm

INITIAL_MEAN_NORM = 0.05


class MeanNormState:
    """``M`` and the epoch counter ``e`` of eq. 16, with a tally of this epoch's training latent norms.

    ``state_dict()`` / ``load_state_dict()`` hold plain floats and ints, so the
    state rides in a checkpoint loadable with ``weights_only=True``.
    """

    def __init__(self, initial_mean_norm: float = INITIAL_MEAN_NORM) -> None:
        self.mean_norm = float(initial_mean_norm)
        self.epoch = 1
        self.start_epoch(1)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._norm_sum: torch.Tensor = torch.zeros((), dtype=torch.float64)
        self._norm_count = 0

    def observe(self, norms: torch.Tensor) -> None:
        """Add latent norms float [N] of training samples to this epoch's tally."""
        self._norm_sum = self._norm_sum.to(norms.device) + norms.detach().double().sum()
        self._norm_count += norms.numel()

    def end_epoch(self) -> float:
        """``M`` := mean norm of this epoch's samples (summed over DDP ranks); next epoch starts. Returns ``M``."""
        total = torch.stack([self._norm_sum.double(), torch.tensor(float(self._norm_count), dtype=torch.float64,
                                                                     device=self._norm_sum.device)])
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            total = total.to(device)
            dist.all_reduce(total)
        total = total.cpu()
        if total[1] > 0:  # an epoch without training batches keeps the previous M
            self.mean_norm = float(total[0] / total[1])
        self.start_epoch(self.epoch + 1)
        return self.mean_norm

    def state_dict(self) -> dict[str, Any]:
        return {"mean_norm": self.mean_norm, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean_norm = float(state["mean_norm"])
        self.start_epoch(int(state["epoch"]))


class NaCLoss(nn.Module):
    """NaC loss with its epoch-level state ``M`` (``self.norm_state``).

    The training loop calls ``end_epoch()`` after every epoch (``set_epoch(e)``
    may pin the 1-based epoch explicitly); ``forward`` records latent norms
    while gradients are enabled and the module is in training mode, so
    validation under ``torch.no_grad()`` does not count. ``get_state()`` /
    ``load_state()`` carry ``M`` and ``e`` through checkpoint and resume.

    Args:
        centroids: float [K, D] unit PEDCC centroids.
        alpha: Weight of delta (0.01 in the paper; 0 turns NaC into the Cosine loss).
        reduction: ``mean`` (the paper), ``sum`` or ``none``.
        initial_mean_norm: ``M`` before any epoch has finished (0.05 in the paper).
    """

    def __init__(
        self,
        centroids: torch.Tensor,
        alpha: float = 0.01,
        reduction: str = "mean",
        initial_mean_norm: float = INITIAL_MEAN_NORM,
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"NaC alpha {alpha} is invalid: expected >= 0")
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32), persistent=False)
        self.alpha = float(alpha)
        self.reduction = check_reduction(reduction)
        self.norm_state = MeanNormState(initial_mean_norm)

    @property
    def delta(self) -> float:
        """delta(e, M) = alpha * e * M for the current epoch."""
        return self.alpha * self.norm_state.epoch * self.norm_state.mean_norm

    def set_epoch(self, epoch: int) -> None:
        self.norm_state.start_epoch(epoch)

    def end_epoch(self) -> float:
        return self.norm_state.end_epoch()

    def get_state(self) -> dict[str, Any]:
        return self.norm_state.state_dict()

    def load_state(self, state: dict[str, Any]) -> None:
        self.norm_state.load_state_dict(state)

    def forward(self, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dot, norm = target_dot_and_norm(latent, self.centroids, target)
        if self.training and torch.is_grad_enabled():
            self.norm_state.observe(norm)
        cos_na = dot / (norm + self.delta + 1e-12)
        return reduce((1.0 - cos_na) ** 2, self.reduction)
