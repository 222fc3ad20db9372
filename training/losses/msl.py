r"""Mixture separability loss (MSL, ``papers/002_0adf03f183ba963a.txt``, section 3).

For a batch with FC outputs ``q`` [N, c] and labels ``y``:

- between-class loss ``L_B`` = cross-entropy (eq. 1-2);
- in-class distance ``d_j`` = mean Euclidean distance over the ``mu_j (mu_j - 1) / 2``
  pairs of class ``j`` (eq. 3-4); a class with fewer than two samples in the
  batch contributes nothing;
- within-class loss ``L_W = sum_j max(0, d_j - xi)^2`` (eq. 5), squared hinge
  against an adaptive margin ``xi`` (0.5 at the start, times 0.9 whenever
  ``L_W`` has stayed within ``tolerance`` of its previous value for
  ``patience`` training iterations; 100 in the paper).

A mixture separability module (MSM) is global average pooling + FC + MSL at
the end of a conv block (section 3.4); the network's final loss is the mean
of the MSLs of all modules. Here the model's own head is the last module, and
one training-only GAP + FC per earlier conv block lives in this loss (so the
optimiser trains it and no export ever contains it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def within_class_distances(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d_j`` (eq. 3-4) for every class with at least two samples in the batch; float32 [classes present]."""
    distances = []
    for label in torch.unique(target):
        q = outputs[target == label].float()
        if q.shape[0] < 2:
            continue
        i, j = torch.triu_indices(q.shape[0], q.shape[0], offset=1, device=q.device)
        distances.append((q[i] - q[j]).pow(2).sum(dim=1).clamp_min(1e-12).sqrt().mean())
    return torch.stack(distances) if distances else outputs.new_zeros(0, dtype=torch.float32)


def separability(outputs: torch.Tensor, target: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``L_B``, ``L_W``) of one module (eq. 1, 5)."""
    between = F.cross_entropy(outputs.float(), target)
    within = F.relu(within_class_distances(outputs, target) - margin).pow(2).sum()
    return between, within


class MSLoss(nn.Module):
    """MSL averaged over the model's head and one training-only MSM per earlier conv block.

    Args:
        num_classes: c.
        block_channels: Channels at the end of each conv block *before* the last one (one MSM each).
        margin: Initial ``xi`` (0.5 in the paper).
        decay: Factor applied to ``xi`` when ``L_W`` stalls (0.9: "drops by 10 %").
        patience: Iterations of an unchanged ``L_W`` before ``xi`` drops (100 in the paper).
        tolerance: Relative change of ``L_W`` below which it counts as unchanged.

    Call: ``loss(logits [N, c], target [N], blocks=[feature maps [N, C_b, H, W] per block])``.
    """

    needs = ("blocks",)

    def __init__(self, num_classes: int, block_channels: Sequence[int] = (), margin: float = 0.5,
                 decay: float = 0.9, patience: int = 100, tolerance: float = 1e-3) -> None:
        super().__init__()
        if margin <= 0 or not 0 < decay < 1 or patience < 1:
            raise ValueError(f"MSL margin {margin} must be > 0, decay {decay} in (0, 1), patience {patience} >= 1")
        self.heads = nn.ModuleList(nn.Linear(int(c), int(num_classes)) for c in block_channels)
        self.register_buffer("margin", torch.tensor(float(margin)))
        self.decay, self.patience, self.tolerance = float(decay), int(patience), float(tolerance)
        self.previous_within: float | None = None
        self.stalled = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor, blocks: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        if len(blocks) != len(self.heads):
            raise ValueError(f"MSL has {len(self.heads)} block modules but got {len(blocks)} block outputs")
        module_outputs = [head(block.float().mean(dim=(2, 3))) for head, block in zip(self.heads, blocks, strict=True)]
        module_outputs.append(logits)
        margin = float(self.margin)
        losses = [separability(q, target, margin) for q in module_outputs]
        if self.training and torch.is_grad_enabled():
            self._adapt_margin(sum(float(w.detach()) for _, w in losses))
        return torch.stack([b + w for b, w in losses]).mean()

    def _adapt_margin(self, within: float) -> None:
        """``xi *= decay`` after ``patience`` iterations whose ``L_W`` moved less than ``tolerance`` (relative)."""
        previous, self.previous_within = self.previous_within, within
        if previous is None:
            return
        unchanged = abs(within - previous) <= self.tolerance * max(abs(previous), 1e-12)
        self.stalled = self.stalled + 1 if unchanged else 0
        if self.stalled >= self.patience:
            self.margin.mul_(self.decay)
            self.stalled = 0
