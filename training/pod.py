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


# -- training tasks (the loop in training/train.py is shared with DisCNN) -----------------------------------

BACKGROUND_CLASS = "background"


class MultiClassTask:
    """A K-class run with a ``cosine`` (POD family) or ``softmax`` head, for ``training.train``.

    The class list is ``cfg.classes`` or every class folder; a class folder named
    ``background`` becomes the card's background class (the runtime reports it
    as "nothing here"). Validation metric: accuracy.
    """

    head = ""

    def __init__(self, cfg: Any, class_names: Sequence[str]) -> None:
        from patchdet.training.backbones import default_latent_dim

        self.cfg = cfg
        self.class_names = tuple(class_names)
        self.latent_dim = int(cfg.latent_dim) if cfg.latent_dim else default_latent_dim(len(self.class_names))
        if self.head == "cosine":
            from patchdet.training.pedcc import check_pedcc_shape

            check_pedcc_shape(len(self.class_names), self.latent_dim)
        self.model: torch.nn.Module | None = None

    @classmethod
    def class_list(cls, cfg: Any) -> list[str] | None:
        """The classes to load (``None``: every folder); checks what can fail before any image is decoded."""
        if cfg.positive is not None or cfg.negatives:
            raise ValueError(f"--positive/--negatives are for modulus (DisCNN) losses; a {cfg.loss!r} run takes --classes")
        if str(cfg.data).startswith("torchvision:"):
            return list(cfg.classes) or None
        from patchdet.runtime.imagefolder import list_class_folders

        if not cfg.classes and cfg.val_data:
            check_same_classes(list_class_folders(cfg.data), list_class_folders(cfg.val_data))
        if cls.head == "cosine" and cfg.latent_dim:
            from patchdet.training.pedcc import check_pedcc_shape

            check_pedcc_shape(len(cfg.classes or list_class_folders(cfg.data)), int(cfg.latent_dim))
        return list(cfg.classes) or None

    def arch_kwargs(self) -> dict[str, Any]:
        return {"num_classes": len(self.class_names), "latent_dim": self.latent_dim, "head": self.head}

    def prepare(self, model: torch.nn.Module, loss_options: dict[str, Any]) -> dict[str, Any]:
        """Called once after the model is built: cosine heads get their PEDCC centroids here.

        Returns the loss options; cosine-family losses receive the model's own
        centroid tensor (shared storage), so a resumed checkpoint's centroids
        reach the loss too.
        """
        self.model = model
        if self.head != "cosine":
            return dict(loss_options)
        from patchdet.training.pedcc import pedcc_centroids

        model.set_centroids(torch.from_numpy(pedcc_centroids(len(self.class_names), self.latent_dim, self.cfg.seed)))
        return {**loss_options, "centroids": model.pedcc.weight.detach()}

    def loss(self, model: torch.nn.Module, loss_fn: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
        return loss_fn(model(images), labels)

    def outputs(self, model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        output, latent = model.forward_with_latent(images)
        if self.head == "cosine":
            cosine = cosine_to_centroids(output, model.centroids)
            return {"embedding": output.float(), "cosine": cosine, "norm": output.float().norm(dim=1),
                    "score": cosine.max(dim=1).values}
        probs = output.float().softmax(dim=1)
        # latent_norm is for the Table I analysis only; exported softmax graphs do not carry it.
        return {"logits": output.float(), "probs": probs, "score": probs.max(dim=1).values,
                "latent_norm": latent.float().norm(dim=1)}

    def metrics(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
        predicted, norms = predictions_from_outputs(outputs, self.head)
        report = multiclass_evaluation(predicted, labels, norms, self.class_names)
        report["val_metric"] = report["accuracy"]
        return report

    def checkpoint_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "head": self.head,
            "class_names": list(self.class_names),
            "positive_class": None,
            "negative_classes": [],
            "threshold": 0.0,  # argmax decides; a score threshold is a runtime choice
            "norm_gate": 0.0,  # no latent-norm gating until calibrated (see the val report's norm_split)
            "latent_dim": self.latent_dim,
            "background_class": BACKGROUND_CLASS if BACKGROUND_CLASS in self.class_names else None,
        }
        if self.head == "cosine" and self.model is not None:
            fields["centroids"] = self.model.centroids.detach().cpu().clone()
        return fields

    def epoch_end(self, loss_fn: torch.nn.Module, epoch_outputs: dict[str, Any]) -> None:
        """NaC/POD: M := mean training latent norm of the epoch just finished (eq. 16)."""
        end_epoch = getattr(loss_fn, "end_epoch", None)
        if end_epoch is not None:
            mean_norm = end_epoch()
            log.info("NaC: mean training latent norm M = %.4f, next delta = %.5f", mean_norm,
                     getattr(loss_fn, "nac", loss_fn).delta)


class CosineTask(MultiClassTask):
    """POD-family losses (cosine, nac, pod): latent output, frozen PEDCC centroids, cosine prediction."""

    head = "cosine"


class SoftmaxTask(MultiClassTask):
    """Cross-entropy baseline: same backbone and latent FC, trainable linear classifier, logits output."""

    head = "softmax"
