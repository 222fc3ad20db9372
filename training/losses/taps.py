"""Reading a backbone's intermediate activations for losses that need them (MSL, Gini + KL).

Every multi-class backbone keeps its conv stack as ``backbone.features`` (an
``nn.Sequential``). A *conv block* ends where the spatial resolution is about
to change: ``stage_ends`` runs one probe batch and picks, for each resolution,
the last child of ``features`` at that resolution (DisCNN: its four blocks;
small CNN: each stage's last ReLU before the pool and the final pool;
ResNet-18: layer1..layer4; MobileNetV2: the last inverted residual of each
resolution and the final 1x1 conv). ``capture`` records those children's
outputs with forward hooks, so the model itself is unchanged and an export
never sees any of this.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StageEnd:
    """One tap: ``index`` of the child in ``features``, its output ``channels``, and its activation minimum on the probe."""

    index: int
    channels: int
    min_value: float


def conv_features(model: nn.Module) -> nn.Sequential:
    """The conv stack of a multi-class model (``model.backbone.features``)."""
    model = getattr(model, "module", model)  # DDP
    features = getattr(getattr(model, "backbone", None), "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"{type(model).__name__} has no backbone.features conv stack to attach intermediate losses to")
    return features


@torch.no_grad()
def stage_ends(model: nn.Module, input_size: int, probe_batch: int = 4, seed: int = 0) -> list[StageEnd]:
    """The last child of ``features`` at each spatial resolution, in order, from a seeded random probe batch."""
    features = conv_features(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(probe_batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed)).to(device)
    shapes: list[tuple[int, int, int, float]] = []
    for child in features:
        x = child(x)
        shapes.append((x.shape[1], x.shape[2], x.shape[3], float(x.min())))
    model.train(was_training)
    ends = [
        StageEnd(i, c, low) for i, (c, h, w, low) in enumerate(shapes)
        if i == len(shapes) - 1 or shapes[i + 1][1:3] != (h, w)
    ]
    return ends


@contextmanager
def capture(features: nn.Sequential, indices: Sequence[int]) -> Iterator[list[torch.Tensor]]:
    """Yield a list that fills with the outputs of ``features[i]`` for ``i`` in ``indices``, in call order."""
    captured: list[torch.Tensor] = []
    handles = [features[i].register_forward_hook(lambda _m, _inp, out: captured.append(out)) for i in indices]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
