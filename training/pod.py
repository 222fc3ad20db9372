"""POD prediction and evaluation helpers (eq. 21-24 and Table I of ``003_45a2bbbab6f9405a.txt``).

A cosine-head model returns its latent x; the class is the centroid with the
largest cosine (eq. 24: the norm does not change the argmax), the score is
that cosine, and ``|x|`` is kept as a second signal. Table I of the paper
splits test samples at the mean latent norm: low-norm samples are markedly
less accurate, which is what lets a runtime gate low-norm patches as
background. The same split is computed for softmax models on their latent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from patchdet.runtime.metrics import multiclass_report
from patchdet.training.pedcc import check_centroids

log = logging.getLogger(__name__)


def cosine_to_centroids(latent: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """cos(x_i, c_j) as float32 [N, K] for latent [N, D] and centroids [K, D]."""
    return F.normalize(latent.float(), dim=1, eps=1e-12) @ F.normalize(centroids.float(), dim=1).T


def pod_predict(latent: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 21-24: predicted class int64 [N], score = max cosine float32 [N], latent norm float32 [N]."""
    score, predicted = cosine_to_centroids(latent, centroids).max(dim=1)
    return predicted, score, latent.float().norm(dim=1)


def norm_split_accuracy(
    predicted: np.ndarray, truth: np.ndarray, norms: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """Accuracy of samples below / at-or-above a latent-norm threshold (default: the mean norm, as Table I).

    Args:
        predicted: int [N] predicted classes.
        truth: int [N] true classes.
        norms: float [N] latent norms |x|.
        threshold: Split point; ``None`` uses ``norms.mean()``.

    Returns:
        ``{"threshold", "low": {"count", "accuracy"}, "high": {"count", "accuracy"}}``;
        an empty side has accuracy ``None``.
    """
    predicted = np.asarray(predicted).reshape(-1)
    truth = np.asarray(truth).reshape(-1)
    norms = np.asarray(norms, dtype=np.float64).reshape(-1)
    if not predicted.shape == truth.shape == norms.shape:
        raise ValueError(f"{predicted.size} predictions, {truth.size} labels and {norms.size} norms: expected equal counts")
    threshold = float(norms.mean()) if threshold is None else float(threshold)
    correct = predicted == truth
    result: dict[str, Any] = {"threshold": threshold}
    for side, mask in (("low", norms < threshold), ("high", norms >= threshold)):
        count = int(mask.sum())
        result[side] = {"count": count, "accuracy": float(correct[mask].mean()) if count else None}
    return result


def multiclass_evaluation(
    predicted: np.ndarray, labels: np.ndarray, norms: np.ndarray | None, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, confusion matrix (rows = truth) and the low/high-norm split.

    Args:
        predicted: int [N] predicted class indices.
        labels: int [N] true class indices into ``class_names``.
        norms: float [N] latent norms |x| (the Table I analysis), or ``None`` when unknown.
        class_names: The K classes.
    """
    report = multiclass_report(np.asarray(predicted), np.asarray(labels), list(class_names))
    report["count"] = int(np.asarray(labels).size)
    known = norms is not None and np.size(norms) > 0
    report["mean_latent_norm"] = float(np.mean(norms)) if known else None
    report["norm_split"] = norm_split_accuracy(predicted, labels, norms) if known else None
    return report


def predictions_from_outputs(outputs: dict[str, np.ndarray], head: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class int64 [N], latent norm float [N]) from a multi-class task's named outputs."""
    if head == "cosine":
        return np.asarray(outputs["cosine"]).argmax(axis=1), np.asarray(outputs["norm"])
    if head == "softmax":
        return np.asarray(outputs["logits"]).argmax(axis=1), np.asarray(outputs["latent_norm"])
    raise ValueError(f"head {head!r} is not a multi-class head: expected cosine or softmax")


def check_same_classes(train_classes: Sequence[str], test_classes: Sequence[str]) -> None:
    """Refuse train and test sets whose class folders differ, naming the counts and the differences."""
    train_set, test_set = set(train_classes), set(test_classes)
    if train_set != test_set:
        only_train = sorted(train_set - test_set)
        only_test = sorted(test_set - train_set)
        raise ValueError(
            f"train set has {len(train_set)} classes and test set {len(test_set)}: "
            f"only in train: {', '.join(only_train) or 'none'}; only in test: {', '.join(only_test) or 'none'}"
        )


def check_checkpoint_centroids(payload: dict[str, Any]) -> np.ndarray:
    """Validate a cosine checkpoint's ``centroids`` against its class list and its frozen PEDCC layer.

    Returns:
        float32 [K, D] centroids.
    """
    if "centroids" not in payload or payload["centroids"] is None:
        raise ValueError(f"checkpoint {payload.get('path', '?')} has a cosine head but no centroids")
    centroids = torch.as_tensor(payload["centroids"]).float()
    class_names = list(payload.get("class_names", []))
    layer = payload.get("state_dict", {}).get("pedcc.weight")
    check_centroids(centroids.numpy(), class_names, latent_dim=None if layer is None else int(layer.shape[1]))
    if layer is not None and not torch.allclose(layer.float().cpu(), centroids.cpu(), atol=1e-6):
        raise ValueError(
            f"checkpoint {payload.get('path', '?')}: stored centroids differ from the model's frozen PEDCC layer "
            f"(max difference {float((layer.float().cpu() - centroids.cpu()).abs().max()):.3g})"
        )
    return centroids.numpy()
