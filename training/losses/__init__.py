"""Losses, one small module each. ``LOSSES`` maps config names to builders.

Each builder takes keyword options (``--loss-option key=value`` on the
command line) and returns an ``nn.Module``. ``LOSS_HEADS`` says which head
kind (see ``runtime.card``) a model trained with that loss has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from patchdet.training.losses.cosine import CosineLoss
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
}

LOSS_HEADS: dict[str, str] = {
    "n2o": "modulus",
    "n2o-softmax": "modulus",
    "cosine": "cosine",
    "nac": "cosine",
    "sc": "cosine",
    "pod": "cosine",
    "softmax": "softmax",
}


def build_loss(name: str, **options: Any) -> nn.Module:
    try:
        builder = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(sorted(LOSSES))}") from None
    try:
        return builder(**options)
    except TypeError as exc:
        raise ValueError(f"bad option for loss {name!r}: {exc}") from None
