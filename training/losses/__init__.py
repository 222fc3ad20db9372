"""Losses, one small module each. ``LOSSES`` maps config names to builders.

Each builder takes keyword options (``--loss-option key=value`` on the
command line) and returns an ``nn.Module``. ``LOSS_HEADS`` (in the torch-free
``training.loss_heads``) says which head kind a model trained with that loss has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from patchdet.training.loss_heads import LEARNED_CENTROIDS, LOSS_HEADS
from patchdet.training.losses.center import CenterLoss
from patchdet.training.losses.cosine import CosineLoss
from patchdet.training.losses.gini_kl import GiniKLLoss
from patchdet.training.losses.margin import ArcFaceLoss, CosFaceLoss
from patchdet.training.losses.msl import MSLoss
from patchdet.training.losses.n2o import N2OLoss, N2OSoftmaxLoss
from patchdet.training.losses.nac import NaCLoss
from patchdet.training.losses.pod import PODLoss
from patchdet.training.losses.sc import SCLoss
from patchdet.training.losses.softmax import SoftmaxLoss

LOSSES: dict[str, Callable[..., nn.Module]] = {
    "n2o": N2OLoss,
    "n2o-softmax": N2OSoftmaxLoss,
    # POD family (cosine head; the task passes the model's PEDCC centroids) and the softmax baseline.
    "cosine": CosineLoss,
    "nac": NaCLoss,
    "sc": SCLoss,
    "pod": PODLoss,
    "softmax": SoftmaxLoss,
    # Softmax-head baselines and regularisers (the task passes num_classes and the latent/block sizes).
    "center": CenterLoss,
    "msl": MSLoss,
    "gini-kl": GiniKLLoss,
    # Angular-margin baselines: cosine head whose centroids the loss learns.
    "cosface": CosFaceLoss,
    "arcface": ArcFaceLoss,
}

__all__ = ["LEARNED_CENTROIDS", "LOSSES", "LOSS_HEADS", "build_loss", "loss_needs"]


def loss_needs(name: str) -> tuple[str, ...]:
    """What a loss reads besides the model output: ``latent``, ``blocks`` (every conv block end), ``last_block``."""
    return tuple(getattr(LOSSES.get(name), "needs", ()))


def build_loss(name: str, **options: Any) -> nn.Module:
    try:
        builder = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(sorted(LOSSES))}") from None
    try:
        return builder(**options)
    except TypeError as exc:
        raise ValueError(f"bad option for loss {name!r}: {exc}") from None
