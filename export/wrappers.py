"""Graph wrappers: the head arithmetic in the graph, and the dense (fully-convolutional) body.

Every exported graph returns the outputs ``runtime.card`` promises for its head:

- ``modulus``: ``embedding`` [N, D], ``score`` [N] (L2 norm),
- ``cosine``: ``embedding`` [N, D], ``cosine`` [N, K], ``norm`` [N], ``score`` [N],
- ``softmax``: ``logits`` [N, K], ``probs`` [N, K], ``score`` [N].

The dense body rewrites DisCNN's FC layers as convolutions: the first Linear
(input ``C * fh * fw``, torch's flatten order C, H, W) becomes a ``fh x fw``
convolution, the others 1x1 convolutions. On a frame [N, 3, H, W] it returns
maps [N, D, Hs, Ws] with ``Hs = H // 16 - fh + 1``: window (i, j) is the patch
at pixels ``y0 = 16 i``, ``x0 = 16 j`` of size ``16 fh``. The head arithmetic then
runs over the channel axis, so dense outputs are ``score`` [N, Hs, Ws] etc.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_OUTPUTS: dict[str, tuple[str, ...]] = {
    "modulus": ("embedding", "score"),
    "cosine": ("embedding", "cosine", "norm", "score"),
    "softmax": ("logits", "probs", "score"),
}
DENSE_STRIDE = 16  # four 2x2 max-poolings
_NORM_EPS = 1e-12


def _l2_norm(x: torch.Tensor) -> torch.Tensor:
    # sqrt(sum(x*x)) rather than ReduceL2: every client (ORT, OpenVINO, OpenCV DNN, TensorRT) reads it.
    return torch.sqrt(torch.sum(x * x, dim=1))


class HeadGraph(nn.Module):
    """``body`` followed by the head arithmetic, with named outputs.

    Args:
        body: Module mapping float32 [N, 3, H, W] to [N, D] (patch) or [N, D, Hs, Ws] (dense).
        head: One of ``HEAD_OUTPUTS``.
        centroids: float [K, D] class centroids (``cosine`` heads only).
    """

    def __init__(self, body: nn.Module, head: str, centroids: torch.Tensor | None = None) -> None:
        super().__init__()
        if head not in HEAD_OUTPUTS:
            raise ValueError(f"head {head!r} is unknown: expected one of {', '.join(HEAD_OUTPUTS)}")
        if head == "cosine" and centroids is None:
            raise ValueError("a cosine head needs the checkpoint's centroids [K, D]")
        self.body = body
        self.head = head
        if centroids is not None:
            centroids = torch.as_tensor(centroids, dtype=torch.float32)
            unit = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)
            self.register_buffer("unit_centroids", unit)
        else:
            self.unit_centroids = None

    @property
    def output_names(self) -> tuple[str, ...]:
        return HEAD_OUTPUTS[self.head]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.body(x)
        if self.head == "modulus":
            return out, _l2_norm(out)
        if self.head == "softmax":
            probs = torch.softmax(out, dim=1)
            return out, probs, torch.amax(probs, dim=1)
        norm = _l2_norm(out)
        if out.dim() == 2:
            dots = out @ self.unit_centroids.t()
            cosine = dots / norm.clamp_min(_NORM_EPS).unsqueeze(1)
        else:  # dense maps: a 1x1 convolution with the unit centroids
            weight = self.unit_centroids[:, :, None, None]
            cosine = nn.functional.conv2d(out, weight) / norm.clamp_min(_NORM_EPS).unsqueeze(1)
        return out, cosine, norm, torch.amax(cosine, dim=1)


def supports_dense(model: nn.Module) -> bool:
    """True for models with DisCNN's layout: ``features`` conv stack, ``classifier`` FC stack, ``feature_hw``."""
    return (
        isinstance(getattr(model, "features", None), nn.Module)
        and isinstance(getattr(model, "classifier", None), nn.Sequential)
        and isinstance(getattr(model, "feature_hw", None), int)
    )


class DenseBody(nn.Module):
    """DisCNN with its FC layers rewritten as convolutions (shares no storage with ``model``).

    Args:
        model: A DisCNN-like module (see ``supports_dense``) in eval mode.

    Shapes:
        input float32 [N, 3, H, W] with H, W >= the patch size -> [N, D, H // 16 - fh + 1, W // 16 - fw + 1].
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not supports_dense(model):
            raise ValueError(
                f"dense export needs a DisCNN-like model (features + classifier + feature_hw); "
                f"{type(model).__name__} is not"
            )
        import copy

        self.features = copy.deepcopy(model.features)
        fh = fw = model.feature_hw
        layers: list[nn.Module] = []
        first = True
        for module in model.classifier:
            if isinstance(module, nn.Linear):
                if first:
                    channels = module.in_features // (fh * fw)
                    if channels * fh * fw != module.in_features:
                        raise ValueError(
                            f"first FC layer takes {module.in_features} features: expected channels x {fh} x {fw}"
                        )
                    conv = nn.Conv2d(channels, module.out_features, kernel_size=(fh, fw))
                    conv.weight.data.copy_(module.weight.data.view(module.out_features, channels, fh, fw))
                    first = False
                else:
                    conv = nn.Conv2d(module.in_features, module.out_features, kernel_size=1)
                    conv.weight.data.copy_(module.weight.data.view(module.out_features, module.in_features, 1, 1))
                conv.bias.data.copy_(module.bias.data)
                layers.append(conv)
            elif isinstance(module, nn.ReLU):
                layers.append(nn.ReLU())
            elif isinstance(module, nn.Dropout):
                continue  # identity at inference
            else:
                raise ValueError(f"dense export cannot rewrite classifier layer {type(module).__name__}")
        self.classifier = nn.Sequential(*layers)
        self.patch_size = fh * DENSE_STRIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_graph(model: nn.Module, head: str, centroids: torch.Tensor | None = None, dense: bool = False) -> HeadGraph:
    """The module that gets exported: patch or dense body plus the head arithmetic, in eval mode."""
    model = model.eval()
    body = DenseBody(model) if dense else model
    return HeadGraph(body, head, centroids).eval()
