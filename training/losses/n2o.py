r"""Negative-to-origin (N2O) losses for DisCNN.

The DisCNN paper gives only the intent: cross-entropy plus a constraint that
maps negatives onto the origin, positives into a compact set, and the output
modulus is the score. We define two formulations and measured both
(``benchmarks/results/n2o_ablation.md``).

``N2OLoss`` (default, name ``n2o``): a modulus-link binary cross-entropy.
With ``f = relu(z)`` the embedding, ``z`` the last FC output before the ReLU,
``r^2 = |f|^2`` and a scale ``s``, the probability of "positive" is

    p(f) = 1 - exp(-r^2 / s^2)

so the cross-entropy ``-y log p - (1 - y) log(1 - p)`` becomes

    negative:  L = r^2 / s^2                                  (exactly a pull to the origin)
    positive:  L = -log(1 - exp(-r^2 / s^2)) + mu * |z - c|^2 / D

where ``c = (rho / sqrt(D)) * 1`` is a fixed target of norm ``rho`` in the
positive orthant (the compact set is a ball around it) and ``D`` is the
embedding size. Properties (each pinned by a test):

- A negative at the origin costs exactly 0 with zero gradient; any other
  negative has gradient ``2 f / s^2``: a descent step shrinks ``f`` toward 0.
- The positive cross-entropy term falls monotonically with ``r``: it pushes
  positives away from the origin; the compactness term bounds them near ``c``.
  It acts on ``z`` (not ``f``), so a positive whose outputs are all clipped to
  zero still gets a gradient (the ReLU would block it otherwise).
- Finite everywhere: ``1 - exp(-r^2/s^2)`` is clamped at ``eps`` (all-zero
  outputs cost ``-log(eps)``, not infinity); batches with one kind only are fine.
- ``p`` is monotone in the modulus, so thresholding ``|f|`` *is* the
  cross-entropy decision: ``p = 0.5`` at ``|f| = s sqrt(ln 2)``.

The negative term is an option (``negative_term``), because ``r^2`` has a
vanishing gradient near the origin (``2 f / s^2``): gradient steps shrink a
negative geometrically and never land it on the origin, so at threshold 0
many negatives sit just above it. Terms whose gradient does not vanish get
there in finite steps (each is 0 with zero gradient at the origin):

    squared  r^2 / s^2                     (default; the BCE above, exactly)
    modulus  |f| / s                       (L2 modulus: gradient of constant size 1/s)
    l1       sum_k f_k / s                 (L1: every active component pulled at rate 1/s)
    hinge    sum_k relu(z_k + m) / s       (margin on z before the ReLU: pushes every
                                            pre-activation below -m, so the output is 0
                                            with slack m; ``negative_margin``)
    squared+hinge  r^2 / s^2 + w * hinge   (the BCE's pull, with a small hinge that finishes
                                            the way to the origin; ``hinge_weight`` w)

The variants keep the positive term; ``scale`` still sets where p = 0.5.

``N2OSoftmaxLoss`` (name ``n2o-softmax``): the paper's wording taken literally,
an auxiliary 2-way linear softmax head on ``f`` trained with cross-entropy,
plus ``beta * |f|^2`` on negatives (and the same compactness term). The head
is dropped at export; the score is still the modulus.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean() if values.numel() else values.sum()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction {reduction!r} is invalid: expected 'mean', 'sum' or 'none'")


def _compactness(z: torch.Tensor, target_norm: float) -> torch.Tensor:
    """Per-sample |z - c|^2 / D with c = target_norm / sqrt(D) * ones."""
    dim = z.shape[1]
    target = torch.full_like(z, target_norm / math.sqrt(dim))
    return (z - target).pow(2).sum(dim=1) / dim


NEGATIVE_TERMS = ("squared", "modulus", "l1", "hinge", "squared+hinge")


def negative_term_of(z: torch.Tensor, kind: str, scale: float, margin: float, hinge_weight: float = 0.1) -> torch.Tensor:
    """Per-sample negative cost [N] of pre-activations ``z`` [N, D] (float32); see the module docstring."""
    f = F.relu(z)
    if kind == "squared+hinge":
        return (f.pow(2).sum(dim=1) / scale**2
                + hinge_weight * negative_term_of(z, "hinge", scale, margin))
    if kind == "squared":
        return f.pow(2).sum(dim=1) / scale**2
    if kind == "modulus":
        # sqrt with a floor inside: finite (zero) gradient at the origin instead of NaN
        r2 = f.pow(2).sum(dim=1)
        return torch.where(r2 > 0, r2.clamp_min(1e-12).sqrt(), torch.zeros_like(r2)) / scale
    if kind == "l1":
        return f.sum(dim=1) / scale
    return F.relu(z + margin).sum(dim=1) / scale


class N2OLoss(nn.Module):
    """Modulus-link BCE + positive compactness (see the module docstring).

    Args:
        scale: ``s``; the modulus where p = 0.5 is ``s * sqrt(ln 2)``.
        target_norm: ``rho``, the norm of the positive target ``c``.
        compactness: ``mu``, weight of the positive compactness term.
        eps: floor of ``1 - exp(-r^2/s^2)`` inside the log (keeps the loss finite).
        reduction: ``mean`` | ``sum`` | ``none`` over the batch.
        negative_term: ``squared`` (default) | ``modulus`` | ``l1`` | ``hinge`` | ``squared+hinge``.
        negative_margin: ``m`` of the ``hinge`` term (>= 0).
        hinge_weight: ``w`` of the hinge in ``squared+hinge`` (>= 0).

    Call: ``loss(z, is_positive)`` with ``z`` float [N, D] pre-activation and
    ``is_positive`` bool/int [N].
    """

    def __init__(
        self,
        scale: float = 1.0,
        target_norm: float = 4.0,
        compactness: float = 0.1,
        eps: float = 1e-6,
        reduction: str = "mean",
        negative_term: str = "squared",
        negative_margin: float = 0.5,
        hinge_weight: float = 0.1,
    ) -> None:
        super().__init__()
        if scale <= 0 or target_norm <= 0 or compactness < 0:
            raise ValueError(f"N2O scale {scale} and target_norm {target_norm} must be > 0, compactness >= 0")
        if negative_term not in NEGATIVE_TERMS or negative_margin < 0 or hinge_weight < 0:
            raise ValueError(f"N2O negative_term {negative_term!r} / negative_margin {negative_margin} / hinge_weight "
                             f"{hinge_weight} are invalid: expected one of {', '.join(NEGATIVE_TERMS)}, a margin >= 0 "
                             "and a weight >= 0")
        self.scale, self.target_norm, self.compactness, self.eps = scale, target_norm, compactness, eps
        self.reduction = reduction
        self.negative_term, self.negative_margin = negative_term, float(negative_margin)
        self.hinge_weight = float(hinge_weight)

    def forward(self, z: torch.Tensor, is_positive: torch.Tensor) -> torch.Tensor:
        z = z.float()  # the exp/log below are not safe in half precision
        positive = is_positive.bool()
        r2 = F.relu(z).pow(2).sum(dim=1) / self.scale**2
        negative_term = negative_term_of(z, self.negative_term, self.scale, self.negative_margin, self.hinge_weight)
        p_positive = (-torch.expm1(-r2)).clamp_min(self.eps)
        positive_term = -torch.log(p_positive) + self.compactness * _compactness(z, self.target_norm)
        return _reduce(torch.where(positive, positive_term, negative_term), self.reduction)


class N2OSoftmaxLoss(nn.Module):
    """Auxiliary 2-way softmax on the embedding + ``beta * |f|^2`` on negatives.

    The auxiliary head has parameters: the training loop optimises them with
    the model's and drops them at export.
    """

    def __init__(
        self,
        embedding_dim: int = 16,
        beta: float = 1.0,
        target_norm: float = 4.0,
        compactness: float = 0.1,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.head = nn.Linear(embedding_dim, 2)
        self.beta, self.target_norm, self.compactness = beta, target_norm, compactness
        self.reduction = reduction

    def forward(self, z: torch.Tensor, is_positive: torch.Tensor) -> torch.Tensor:
        z = z.float()
        positive = is_positive.bool()
        f = F.relu(z)
        cross_entropy = F.cross_entropy(self.head(f), positive.long(), reduction="none")
        origin = f.pow(2).sum(dim=1)
        compact = _compactness(z, self.target_norm)
        extra = torch.where(positive, self.compactness * compact, self.beta * origin)
        return _reduce(cross_entropy + extra, self.reduction)
