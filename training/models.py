"""Patch classifier architectures and their registry.

``get_model(name, **kwargs)`` builds any registered architecture;
``list_models()`` names them. DisCNN-8 / DisCNN-1 follow Table 1 of the DisCNN
paper (``papers/000_797df1b868a5623e.txt``): four conv3 blocks with BN, ReLU
and 2x2 max-pool, then three FC layers to a 16-d output, 96x96 RGB input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from patchdet.training.backbones import BACKBONES

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name``; a duplicate name is a bug and raises."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return decorator


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with builder keyword arguments."""
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(list_models())}") from None
    return builder(**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),  # Remark 1: without BN DisCNN does not converge
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DisCNN(nn.Module):
    """Headless CNN whose output modulus is the detection score.

    Args:
        conv_channels: Output channels of the four conv3 blocks.
        fc_features: Widths of the three FC layers; the last is the embedding size.
        input_size: Square input side in pixels (96 in the paper); must be a
            multiple of 16 because of the four 2x2 poolings.
        nonnegative_output: ReLU after the last FC layer, so that a negative
            patch can land *exactly* on the origin and "modulus > 0" is a
            meaningful decision (the paper's threshold-0 rule).

    Shapes:
        input float32 [N, 3, input_size, input_size] -> output [N, fc_features[-1]].
    """

    def __init__(
        self,
        conv_channels: tuple[int, int, int, int] = (64, 32, 16, 8),
        fc_features: tuple[int, int, int] = (288, 128, 16),
        input_size: int = 96,
        nonnegative_output: bool = True,
    ) -> None:
        super().__init__()
        if input_size <= 0 or input_size % 16:
            raise ValueError(f"DisCNN input size {input_size} is invalid: expected a positive multiple of 16")
        self.input_size = input_size
        self.conv_channels = tuple(conv_channels)
        self.fc_features = tuple(fc_features)
        self.nonnegative_output = nonnegative_output
        channels = (3, *conv_channels)
        self.features = nn.Sequential(*[_conv_block(channels[i], channels[i + 1]) for i in range(4)])
        self.feature_hw = input_size // 16
        flat = conv_channels[-1] * self.feature_hw * self.feature_hw
        widths = (flat, *fc_features)
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < 2 or nonnegative_output:
                layers.append(nn.ReLU(inplace=i < 2))
        self.classifier = nn.Sequential(*layers)

    @property
    def embedding_dim(self) -> int:
        return self.fc_features[-1]

    def forward(self, x: torch.Tensor, return_pre_activation: bool = False):
        """Embedding [N, D]; with ``return_pre_activation`` also the last FC output before its ReLU.

        The N2O loss needs the pre-activation: a positive patch whose outputs are
        all clipped to zero would otherwise receive no gradient at all. It is a
        forward() argument (not a separate method) so that DDP syncs gradients.
        """
        h = self.features(x).flatten(1)
        if not return_pre_activation:
            return self.classifier(h)
        z = self.classifier[:5](h)
        f = self.classifier[5](z) if self.nonnegative_output else z
        return f, z


def _discnn(discnn: DisCNN, head: str, num_classes: int | None, latent_dim: int | None) -> nn.Module:
    if head == "modulus":
        return discnn
    from patchdet.training.backbones import discnn_classifier

    if num_classes is None:
        raise ValueError(f"a DisCNN with a {head} head needs num_classes")
    return discnn_classifier(discnn, num_classes, latent_dim, head)


@register_model("discnn8")
def discnn8(input_size: int = 96, head: str = "modulus", num_classes: int | None = None,
            latent_dim: int | None = None, **kwargs: Any) -> nn.Module:
    """DisCNN-8 (Table 1): 148,568 trainable parameters at 96x96; ``head`` cosine/softmax: a multi-class body."""
    return _discnn(DisCNN((64, 32, 16, 8), (288, 128, 16), input_size=input_size, **kwargs), head, num_classes,
                   latent_dim)


@register_model("discnn1")
def discnn1(input_size: int = 96, head: str = "modulus", num_classes: int | None = None,
            latent_dim: int | None = None, **kwargs: Any) -> nn.Module:
    """DisCNN-1 (Table 1): 28,295 trainable parameters at 96x96; ``head`` cosine/softmax: a multi-class body."""
    return _discnn(DisCNN((64, 32, 16, 1), (36, 32, 16), input_size=input_size, **kwargs), head, num_classes,
                   latent_dim)


@register_model("discnn64")
def discnn64(input_size: int = 96, head: str = "modulus", num_classes: int | None = None,
             latent_dim: int | None = None, **kwargs: Any) -> nn.Module:
    """DisCNN-64: DisCNN-8's blocks and FC widths with conv channels (32, 32, 64, 64), widening with depth.

    Named like the paper's variants (DisCNN-N: N channels in the last conv layer). DisCNN-8 narrows
    from 64 to 8 channels, so its deep layers (what tells a car from asphalt) hold few features;
    this order gives them 8x more while its frame-level cost stays at or below DisCNN-8's: the
    full-resolution first conv, which dominates a dense frame, has half the channels
    (``benchmarks/results/real_car_models.md``).
    """
    return _discnn(DisCNN((32, 32, 64, 64), (288, 128, 16), input_size=input_size, **kwargs), head, num_classes,
                   latent_dim)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# The POD backbones (small CNN, MobileNetV2, ResNet-18) beside DisCNN.
for _name, _builder in BACKBONES.items():
    register_model(_name)(_builder)
