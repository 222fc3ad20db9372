r"""Center loss (Wen et al., ECCV 2016), one of the POD paper's baselines.

``L = CE(logits, y) + weight * (1/2) mean_i |x_i - c_{y_i}|^2`` on the latent ``x``
before the classifier, with one learnable center per class.

pytorch-metric-learning 2.9 has no center loss (its ``losses`` package lists
CosFace, ArcFace, SphereFace, ... but not this one), so it is written here.
The centers are parameters of this module: the training loop optimises them
with the model (the paper's separate center learning rate is a plain SGD
step on the same gradient), and they never reach an export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patchdet.training.losses.cosine import check_reduction, reduce


class CenterLoss(nn.Module):
    """Softmax cross-entropy plus the pull of each latent toward its class center.

    Args:
        num_classes: k.
        latent_dim: n, the latent size.
        weight: lambda of the center term (Wen et al. use 0.003-0.01).
        reduction: ``mean``, ``sum`` or ``none`` (per sample).

    Call: ``loss(logits [N, k], target [N], latent=[N, n])``.
    """

    needs = ("latent",)

    def __init__(self, num_classes: int, latent_dim: int, weight: float = 0.01, reduction: str = "mean") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"center loss weight {weight} is invalid: expected >= 0")
        self.centers = nn.Parameter(torch.randn(int(num_classes), int(latent_dim)) * 0.01)
        self.weight = float(weight)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        if latent is None:
            raise ValueError("center loss needs the latent features (latent=...)")
        cross_entropy = F.cross_entropy(logits.float(), target, reduction="none")
        pull = 0.5 * (latent.float() - self.centers[target]).pow(2).sum(dim=1)
        return reduce(cross_entropy + self.weight * pull, self.reduction)
