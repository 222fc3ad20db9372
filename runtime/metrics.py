"""Classification metrics on score arrays (numpy only, shared by every stage).

Binary decisions follow the DisCNN paper: a patch is positive when its
score (the output modulus) is strictly greater than the threshold, so with
threshold 0 only patches exactly at the origin are negative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from patchdet.runtime.decisions import is_positive as score_is_positive


@dataclass(frozen=True)
class BinaryConfusion:
    """Counts for the positive class at one threshold."""

    tp: int
    fn: int
    fp: int
    tn: int

    @property
    def total(self) -> int:
        return self.tp + self.fn + self.fp + self.tn

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def precision_recall_f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def binary_confusion(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> BinaryConfusion:
    """Confusion counts for ``score > threshold`` means positive.

    Args:
        scores: float [N] detection scores (moduli).
        is_positive: bool [N] ground truth.
        threshold: decision threshold.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(is_positive, dtype=bool).reshape(-1)
    if scores.shape != truth.shape:
        raise ValueError(f"{scores.shape[0]} scores for {truth.shape[0]} labels")
    predicted = score_is_positive(scores, threshold)
    return BinaryConfusion(
        tp=int(np.sum(predicted & truth)),
        fn=int(np.sum(~predicted & truth)),
        fp=int(np.sum(predicted & ~truth)),
        tn=int(np.sum(~predicted & ~truth)),
    )


def binary_report(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> dict:
    """Per-class precision/recall/F1 (the paper's Tables 3-4 layout) at one threshold."""
    c = binary_confusion(scores, is_positive, threshold)
    return {
        "threshold": float(threshold),
        "positive": precision_recall_f1(c.tp, c.fp, c.fn),
        # The negative class's "true positives" are the true negatives.
        "negative": precision_recall_f1(c.tn, c.fn, c.fp),
        "confusion": c.as_dict(),
        "accuracy": _ratio(c.tp + c.tn, c.total),
    }


def threshold_sweep(scores: np.ndarray, is_positive: np.ndarray, thresholds: np.ndarray | None = None) -> list[dict]:
    """Reports over a range of thresholds (default: 0 and 99 quantiles of the scores)."""
    scores = np.asarray(scores, dtype=np.float64)
    if thresholds is None:
        thresholds = np.unique(np.concatenate([[0.0], np.quantile(scores, np.linspace(0.01, 0.99, 99))]))
    return [binary_report(scores, is_positive, float(t)) for t in thresholds]


def best_f1_threshold(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """Threshold maximising the mean of positive and negative F1 on these scores."""
    reports = threshold_sweep(scores, is_positive)
    best = max(reports, key=lambda r: (r["positive"]["f1"] + r["negative"]["f1"]) / 2)
    return float(best["threshold"])


def fraction_above(scores: np.ndarray, threshold: float) -> float:
    scores = np.asarray(scores, dtype=np.float64)
    return _ratio(float(np.sum(score_is_positive(scores, threshold))), scores.size)


def fraction_at_origin(scores: np.ndarray) -> float:
    """Fraction of scores that are exactly zero (patches mapped onto the origin)."""
    scores = np.asarray(scores, dtype=np.float64)
    return _ratio(float(np.sum(scores == 0.0)), scores.size)


def multiclass_report(predicted: np.ndarray, truth: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (rows = truth)."""
    k = len(class_names)
    predicted = np.asarray(predicted, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = int(matrix[i, i])
        per_class[name] = precision_recall_f1(tp, int(matrix[:, i].sum()) - tp, int(matrix[i, :].sum()) - tp)
    return {
        "accuracy": _ratio(float(np.trace(matrix)), float(matrix.sum())),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }
