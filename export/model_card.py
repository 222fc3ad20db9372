"""Build the ``runtime.card.ModelCard`` of an artifact from its checkpoint."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np

from patchdet.export.wrappers import DENSE_STRIDE, HEAD_OUTPUTS
from patchdet.runtime.card import ModelCard

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


def build_card(payload: dict[str, Any], name: str, checkpoint_sha256: str, dense: bool,
               export_info: dict[str, Any]) -> ModelCard:
    """The card of one artifact (parity is added after the check).

    Args:
        payload: A loaded checkpoint (``training.checkpoint.load_checkpoint``).
        name: Artifact base name.
        checkpoint_sha256: Hash of the checkpoint file.
        dense: The artifact is the fully-convolutional variant.
        export_info: Format, precision and settings of this export.
    """
    head = payload["head"]
    size = int(payload["input_size"])
    positive = payload.get("positive_class")
    class_names = [positive] if head == "modulus" else list(payload["class_names"])
    centroids = None
    if head == "cosine":
        centroids = tuple(tuple(float(v) for v in row) for row in plain(payload["centroids"]))
    threshold = float(payload.get("threshold", 0.0))
    thresholds = {str(k): float(v) for k, v in plain(payload.get("thresholds", {}) or {}).items()}
    training = plain(payload.get("training", {}) or {})
    training = {**training, "epoch": payload.get("epoch"), "best_metric": plain(payload.get("best_metric")),
                "negative_classes": list(payload.get("negative_classes", []))}
    return ModelCard(
        name=name,
        arch=payload["arch"],
        head=head,
        input_wh=(size, size),
        mean=tuple(float(v) for v in plain(payload["mean"])),
        std=tuple(float(v) for v in plain(payload["std"])),
        class_names=tuple(class_names),
        positive_class=positive,
        threshold=threshold,
        thresholds=thresholds,
        centroids=centroids,
        norm_gate=float(payload.get("norm_gate", 0.0) or 0.0),
        background_class=payload.get("background_class"),
        dense=dense,
        dense_stride=DENSE_STRIDE,
        outputs=HEAD_OUTPUTS[head],
        training=training,
        source={
            "checkpoint": str(payload.get("path", "")),
            "sha256": checkpoint_sha256,
            "arch_kwargs": plain(payload.get("arch_kwargs", {})),
        },
        export=plain(export_info),
        versions=package_versions(),
    )
