"""``patchdet evaluate`` for multi-class heads (``cosine`` POD models, ``softmax`` baselines).

Report layout (JSON with ``--json``)::

    {"model", "head", "data", "class_names", "counts", "accuracy",
     "per_class": {class: {precision, recall, f1}}, "confusion_matrix" (rows = truth),
     "mean_latent_norm", "norm_split": {"threshold", "low": {count, accuracy}, "high": {...}},
     "mean_score"}

``norm_split`` is the POD paper's Table I analysis: accuracy of samples whose
latent norm is below / above the mean. Cosine heads output their latent; for
softmax checkpoints the latent is read from the model (exported softmax
artifacts carry only logits, so their split is ``None``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patchdet.runtime.imagefolder import list_class_folders
from patchdet.training.pedcc import check_centroids
from patchdet.training.pod import check_same_classes, multiclass_evaluation


def _latent_norm_hook(scorer: Any):
    """For a softmax checkpoint: a callable batch -> latent norms [N], else ``None``."""
    model = getattr(scorer, "model", None)
    if model is None or not hasattr(model, "forward_with_latent"):
        return None
    import torch

    def latent_norms(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            _, latent = model.forward_with_latent(torch.from_numpy(batch))
        return latent.float().norm(dim=1).numpy()

    return latent_norms


def _check_model_centroids(scorer: Any) -> None:
    centroids = scorer.extra.get("centroids")
    if centroids is None:
        raise ValueError(f"{scorer.head} model has no centroids: cannot predict classes by cosine")
    centroids = np.asarray(centroids.numpy() if hasattr(centroids, "numpy") else centroids, dtype=np.float32)
    model = getattr(scorer, "model", None)
    latent_dim = int(model.latent_dim) if model is not None and hasattr(model, "latent_dim") else None
    check_centroids(centroids, list(scorer.class_names), latent_dim=latent_dim)
    if model is not None and hasattr(model, "centroids"):
        stored = model.centroids.cpu().numpy()
        if stored.shape != centroids.shape or not np.allclose(stored, centroids, atol=1e-6):
            raise ValueError("the checkpoint's centroids differ from its model's frozen PEDCC layer")


def evaluate_multiclass(cfg: Any, scorer: Any) -> dict[str, Any]:
    """Score ``cfg.data`` (an ImageFolder tree) with a cosine or softmax model.

    ``cfg.classes`` restricts evaluation to some of the model's classes;
    otherwise the folder's class folders must be exactly the model's.
    """
    from patchdet.training.scoring import score_folder

    model_classes = list(scorer.class_names)
    if scorer.head == "cosine":
        _check_model_centroids(scorer)
    if cfg.classes:
        unknown = [c for c in cfg.classes if c not in model_classes]
        if unknown:
            raise ValueError(
                f"class {', '.join(map(repr, unknown))} is not one of the model's {len(model_classes)} classes "
                f"({', '.join(model_classes)})"
            )
        eval_classes = list(cfg.classes)
    else:
        check_same_classes(model_classes, list_class_folders(cfg.data))
        eval_classes = model_classes
    hook = _latent_norm_hook(scorer) if scorer.head == "softmax" else None
    if hook is not None:
        scorer = _WithLatentNorm(scorer, hook)
    outputs, labels = score_folder(scorer, cfg.data, eval_classes, cfg.batch_size)
    truth = np.asarray([model_classes.index(eval_classes[i]) for i in labels], dtype=np.int64)
    if scorer.head == "cosine":
        predicted, norms = outputs["cosine"].argmax(axis=1), outputs["norm"]
    else:
        predicted, norms = outputs["probs"].argmax(axis=1), outputs.get("latent_norm")
    report = multiclass_evaluation(predicted, truth, norms, model_classes)
    report.update(
        model=cfg.model,
        head=scorer.head,
        data=cfg.data,
        counts={name: int(np.sum(labels == i)) for i, name in enumerate(eval_classes)},
        mean_score=float(np.mean(outputs["score"])) if len(truth) else None,
    )
    return report


class _WithLatentNorm:
    """Adds ``latent_norm`` to a softmax checkpoint scorer's outputs (the Table I analysis)."""

    def __init__(self, scorer: Any, latent_norms) -> None:
        self._scorer, self._latent_norms = scorer, latent_norms
        self.head, self.input_size = scorer.head, scorer.input_size
        self.mean, self.std = scorer.mean, scorer.std

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {**self._scorer(batch), "latent_norm": self._latent_norms(batch)}


def format_multiclass(report: dict[str, Any]) -> str:
    """Accuracy, per-class precision/recall, the confusion matrix and the low/high-norm split as text."""
    names = report["class_names"]
    width = max(8, *(len(n) for n in names))
    lines = [f"model {report['model']}  head {report['head']}  images {report['count']}",
             f"accuracy {report['accuracy']:.4f}", "",
             f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>6}"]
    for name in names:
        m = report["per_class"][name]
        lines.append(f"{name:<{width}} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f}")
    lines += ["", "confusion matrix (rows = truth, columns = predicted): " + ", ".join(names)]
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}} " + " ".join(f"{v:>5d}" for v in row))
    split = report.get("norm_split")
    if split:
        low, high = split["low"], split["high"]
        fmt = lambda side: "n/a" if side["accuracy"] is None else f"{side['accuracy']:.4f}"  # noqa: E731
        lines += ["", f"latent norm split at the mean |x| = {split['threshold']:.4g} (POD paper Table I):",
                  f"  low-norm  {low['count']:>6d} images, accuracy {fmt(low)}",
                  f"  high-norm {high['count']:>6d} images, accuracy {fmt(high)}"]
    return "\n".join(lines)
