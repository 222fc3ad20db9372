"""Multi-class patch classifiers beside DisCNN: a small CNN, MobileNetV2 and ResNet-18 for small inputs.

Every architecture here is ``backbone -> global average pool -> FC to an
n-dim latent x -> head`` (the POD paper's Fig. 1). Two heads:

- ``cosine`` (POD family losses): a frozen ``nn.Linear(n, k, bias=False)``
  whose rows are the PEDCC centroids; ``forward`` returns the latent x [N, n],
  prediction is argmax of cosine(x, centroid) (eq. 21-24, ``training/pod.py``).
  The centroid layer starts at zero and is filled once by the training code
  (``set_centroids``); a checkpoint brings its own, so they are never
  regenerated when a model is loaded.
- ``softmax`` (the baseline): the same backbone and latent FC followed by a
  trainable ``nn.Linear(n, k)``; ``forward`` returns the logits [N, k].
- ``modulus`` (N2O, DisCNN-style detection on any backbone): a ReLU after the
  latent FC; ``forward`` returns the non-negative embedding [N, n] whose
  modulus is the score.

DisCNN's conv stack and first two FC layers serve as a backbone too
(``discnn_classifier``), so every loss composes with every architecture.

torchvision's MobileNetV2 and ResNet-18 are adapted to 32x32 inputs as the
POD paper's section 4 and common CIFAR practice do: a 3x3 stride-1 stem, no
stem max-pool (ResNet), and for inputs <= 32 px the first stride-2 inverted
residual of MobileNetV2 at stride 1, so a 32x32 patch ends at 4x4.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from patchdet.training.pedcc import check_pedcc_shape

POD_HEADS = ("cosine", "softmax", "modulus")


def default_latent_dim(num_classes: int) -> int:
    """Latent size per the POD paper's Table III (256 for 10 or 30 classes, 512 up to 200, ...)."""
    for max_classes, dim in ((30, 256), (200, 512), (500, 1024)):
        if num_classes <= max_classes:
            return dim
    return max(2048, num_classes - 1)


class PODClassifier(nn.Module):
    """Backbone -> latent FC -> cosine (frozen PEDCC) or softmax head.

    Args:
        backbone: Module mapping float [N, 3, H, W] to features [N, feature_dim].
        feature_dim: Width of the backbone's output.
        num_classes: k.
        latent_dim: n; a cosine head needs ``k <= n + 1``.
        head: ``cosine`` or ``softmax``.
        input_size: Square patch side in pixels the model was built for.

    Shapes:
        input float32 [N, 3, H, W] -> latent x [N, n] (cosine) or logits [N, k] (softmax).
    """

    def __init__(
        self, backbone: nn.Module, feature_dim: int, num_classes: int, latent_dim: int, head: str, input_size: int
    ) -> None:
        super().__init__()
        if head not in POD_HEADS:
            raise ValueError(f"head {head!r} is unknown: expected one of {', '.join(POD_HEADS)}")
        if num_classes < 2 and head != "modulus":
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if head == "cosine":
            check_pedcc_shape(num_classes, latent_dim)
        if latent_dim < 1:
            raise ValueError(f"latent dimension {latent_dim} is invalid: expected a positive integer")
        self.head = head
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.input_size = input_size
        self.backbone = backbone
        self.latent = nn.Linear(feature_dim, latent_dim)
        if head == "cosine":
            self.pedcc = nn.Linear(latent_dim, num_classes, bias=False)
            nn.init.zeros_(self.pedcc.weight)
            self.pedcc.weight.requires_grad_(False)
        elif head == "softmax":
            self.classifier = nn.Linear(latent_dim, num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.num_classes if self.head == "softmax" else self.latent_dim

    @property
    def centroids(self) -> torch.Tensor:
        """float32 [k, n] centroid rows of the frozen PEDCC layer (cosine head only)."""
        if self.head != "cosine":
            raise ValueError(f"a {self.head} head has no centroids")
        return self.pedcc.weight.detach()

    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Copy centroids [k, n] into the frozen PEDCC layer."""
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        expected = (self.num_classes, self.latent_dim)
        if tuple(centroids.shape) != expected:
            raise ValueError(f"centroids have shape {tuple(centroids.shape)}: expected {list(expected)} (classes, latent)")
        with torch.no_grad():
            self.pedcc.weight.copy_(centroids)

    def forward_with_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model output, latent x [N, n]): the latent of a softmax model too, for the norm analysis."""
        latent = self.latent(self.backbone(x))
        if self.head == "modulus":
            return torch.relu(latent), latent
        return (latent if self.head == "cosine" else self.classifier(latent)), latent

    def forward(self, x: torch.Tensor, return_latent: bool = False, return_pre_activation: bool = False):
        """The model output; with ``return_latent`` (or, for N2O, ``return_pre_activation``) also the latent.

        Keyword arguments of forward() rather than separate methods, so that DDP syncs gradients.
        """
        output, latent = self.forward_with_latent(x)
        return (output, latent) if return_latent or return_pre_activation else output


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """A VGG-style CNN for 32x32 (and 96x96) patches: conv stages of two 3x3 conv-BN-ReLU and a 2x2 max-pool.

    Inputs of 64 px or more get a stride-2 stem, so 96x96 costs about what 48x48 would.

    Shapes:
        float32 [N, 3, H, W] -> [N, widths[-1]] after global average pooling.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), input_size: int = 32) -> None:
        super().__init__()
        if input_size < 2 ** len(widths):
            raise ValueError(f"small CNN input size {input_size} is too small for {len(widths)} pooling stages")
        layers: list[nn.Module] = _conv_bn_relu(3, widths[0], stride=2 if input_size >= 64 else 1)
        channels = widths[0]
        for width in widths:
            layers += _conv_bn_relu(channels, width) + _conv_bn_relu(width, width) + [nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class _TorchvisionTrunk(nn.Module):
    """A torchvision feature extractor followed by global average pooling."""

    def __init__(self, features: nn.Module, out_features: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def _mobilenetv2_trunk(input_size: int, full_resolution_stage2: bool = True) -> _TorchvisionTrunk:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    net.features[0][0].stride = (1, 1)  # 3x3 stem at stride 1
    if input_size <= 32 and full_resolution_stage2:
        net.features[2].conv[1][0].stride = (1, 1)  # first stride-2 depthwise conv
    return _TorchvisionTrunk(net.features, net.last_channel)


def _resnet18_trunk(input_size: int) -> _TorchvisionTrunk:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return _TorchvisionTrunk(features, 512)


def _build(trunk: nn.Module, num_classes: int, latent_dim: int | None, head: str, input_size: int) -> PODClassifier:
    latent_dim = default_latent_dim(num_classes) if latent_dim is None else int(latent_dim)
    return PODClassifier(trunk, trunk.out_features, num_classes, latent_dim, head, input_size)


def smallcnn(
    num_classes: int = 10,
    latent_dim: int | None = None,
    head: str = "cosine",
    input_size: int = 32,
    widths: tuple[int, ...] = (16, 32, 64),
    **kwargs: Any,
) -> PODClassifier:
    """Small CNN (three conv stages 16-32-64) with a POD or softmax head; 32x32 or 96x96 patches."""
    _reject_unknown(kwargs)
    return _build(SmallCNN(tuple(widths), input_size), num_classes, latent_dim, head, input_size)


def mobilenetv2(
    num_classes: int = 10, latent_dim: int | None = None, head: str = "cosine", input_size: int = 32, **kwargs: Any
) -> PODClassifier:
    """torchvision MobileNetV2 (random init) with a 3x3 stride-1 stem, for small patches."""
    _reject_unknown(kwargs)
    return _build(_mobilenetv2_trunk(input_size), num_classes, latent_dim, head, input_size)


def mobilenetv2_halfres(
    num_classes: int = 10, latent_dim: int | None = None, head: str = "cosine", input_size: int = 32, **kwargs: Any
) -> PODClassifier:
    """MobileNetV2 with only the stem at stride 1: from the second stage on it works at half the resolution of
    ``mobilenetv2`` at 32 px, about 2.6x faster to train on a CPU (0.62 vs 1.6 s per batch of 128, 2 cores),
    which is what makes a 30-epoch CIFAR-10 run fit on a small machine."""
    _reject_unknown(kwargs)
    return _build(_mobilenetv2_trunk(input_size, full_resolution_stage2=False), num_classes, latent_dim, head,
                  input_size)


def resnet18(
    num_classes: int = 10, latent_dim: int | None = None, head: str = "cosine", input_size: int = 32, **kwargs: Any
) -> PODClassifier:
    """torchvision ResNet-18 (random init) with a 3x3 stride-1 stem and no max-pool, for small patches."""
    _reject_unknown(kwargs)
    return _build(_resnet18_trunk(input_size), num_classes, latent_dim, head, input_size)


def _reject_unknown(kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise ValueError(f"unknown model option(s) {', '.join(sorted(kwargs))} for a POD/softmax classifier")


class DisCNNTrunk(nn.Module):
    """DisCNN's conv blocks and first two FC layers (with their ReLUs) as a backbone: [N, 3, H, W] -> [N, fc[1]]."""

    def __init__(self, discnn: nn.Module) -> None:
        super().__init__()
        self.features = discnn.features
        self.fc = discnn.classifier[:4]  # Linear, ReLU, Linear, ReLU
        self.out_features = discnn.fc_features[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def discnn_classifier(discnn: nn.Module, num_classes: int, latent_dim: int | None, head: str) -> PODClassifier:
    """A DisCNN body with a multi-class head (``cosine``/``softmax``) in place of its 16-d modulus output."""
    return _build(DisCNNTrunk(discnn), num_classes, latent_dim, head, discnn.input_size)


# name -> builder; registered beside DisCNN by ``training.models``.
BACKBONES = {"smallcnn": smallcnn, "mobilenetv2": mobilenetv2, "mobilenetv2_halfres": mobilenetv2_halfres,
             "resnet18": resnet18}
