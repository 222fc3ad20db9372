"""Build the ``runtime.card.ModelCard`` of an artifact from its checkpoint."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from patchdet.export.wrappers import DENSE_STRIDE, HEAD_OUTPUTS
from patchdet.runtime.card import ModelCard

if TYPE_CHECKING:
    from patchdet.training.checkpoint import CheckpointInfo

VERSIONED_PACKAGES = ("patchdet", "torch", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "numpy",
                      "opencv-python-headless", "tensorrt")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages an export depends on (absent ones left out)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def plain(value: Any) -> Any:
    """Tensors, numpy values and tuples -> JSON types (unknown objects become their repr)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "detach"):  # torch.Tensor without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)


def build_card(info: CheckpointInfo, name: str, checkpoint_sha256: str, dense: bool,
               export_info: dict[str, Any]) -> ModelCard:
    """The card of one artifact (parity is added after the check).

    Args:
        info: The checkpoint's metadata (``training.checkpoint.CheckpointInfo``).
        name: Artifact base name.
        checkpoint_sha256: Hash of the checkpoint file.
        dense: The artifact is the fully-convolutional variant.
        export_info: Format, precision and settings of this export.
    """
    head = info.head
    training = {**info.training, "epoch": info.epoch, "best_metric": info.best_metric,
                "negative_classes": list(info.negative_classes)}
    return ModelCard(
        name=name,
        arch=info.arch,
        head=head,
        input_wh=(info.input_size, info.input_size),
        mean=info.mean,
        std=info.std,
        class_names=tuple(info.output_classes),
        positive_class=info.positive_class,
        threshold=info.threshold,
        thresholds=dict(info.thresholds),
        centroids=info.centroids if head == "cosine" else None,
        norm_gate=info.norm_gate,
        background_class=info.background_class,
        dense=dense,
        dense_stride=DENSE_STRIDE,
        outputs=HEAD_OUTPUTS[head],
        training=training,
        tiling={k: v for k, v in info.tiling.items() if k != "dense"},  # dense follows from the artifact
        source={
            "checkpoint": info.path,
            "sha256": checkpoint_sha256,
            "arch_kwargs": plain(info.arch_kwargs),
        },
        export=plain(export_info),
        versions=package_versions(),
    )
