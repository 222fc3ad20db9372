"""CosFace (AM-softmax) and ArcFace, the POD paper's angular-margin baselines, from pytorch-metric-learning.

Both learn one weight vector per class ``W`` [n, k] and predict with the
cosine to those vectors, so a model trained with them has a ``cosine`` head
whose centroids are the normalised ``W`` columns (``class_centroids``); the
task copies them into the model's centroid layer after every epoch, which is
what validation and export use. ``W`` itself stays in the loss.
"""

from __future__ import annotations

import torch
from torch import nn


class _MarginSoftmax(nn.Module):
    loss_class = ""

    def __init__(self, num_classes: int, embedding_dim: int, margin: float, scale: float) -> None:
        super().__init__()
        try:
            from pytorch_metric_learning import losses
        except ImportError:
            raise ValueError(f"the {self.loss_class} loss needs pytorch-metric-learning: pip install 'patchdet[train]'") \
                from None
        self.inner = getattr(losses, self.loss_class)(num_classes=int(num_classes), embedding_size=int(embedding_dim),
                                                      margin=float(margin), scale=float(scale))

    def class_centroids(self) -> torch.Tensor:
        """Unit class vectors [k, n] (float32, detached)."""
        weights = self.inner.W.detach().float().t()
        return weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inner(latent.float(), target)


class CosFaceLoss(_MarginSoftmax):
    """Large margin cosine loss: ``s (cos theta_y - m)`` logits (margin 0.35, scale 64 as in CosFace)."""

    loss_class = "CosFaceLoss"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 64.0) -> None:
        super().__init__(num_classes, embedding_dim, margin, scale)


class ArcFaceLoss(_MarginSoftmax):
    """Additive angular margin: ``s cos(theta_y + m)`` logits (margin 28.6 degrees = 0.5 rad, scale 64)."""

    loss_class = "ArcFaceLoss"

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 28.6, scale: float = 64.0) -> None:
        super().__init__(num_classes, embedding_dim, margin, scale)
