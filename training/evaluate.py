"""``evaluate(cfg)``: score an image folder with a checkpoint or an exported artifact.

Checkpoints run in PyTorch; exported artifacts (``.onnx``, ``.xml``,
``.engine``) run through the runtime's backends with their model card, so the
two paths are measured with the same metrics code (``runtime.metrics``).

Report layout (also written as JSON by ``patchdet evaluate --json``)::

    {"model", "head", "positive", "negatives", "unseen", "counts",
     "thresholds": [{"threshold", "positive": {precision, recall, f1},
                     "negative": {...}, "confusion": {tp, fn, fp, tn},
                     "unseen": {class: fraction above threshold}}],
     "at_origin": {class: fraction with modulus exactly 0},
     "sweep": [...], "best_threshold"}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchdet.runtime.metrics import (
    best_f1_threshold,
    binary_report,
    fraction_above,
    fraction_at_origin,
    threshold_sweep,
)
from patchdet.training.scoring import load_scorer, score_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: str
    positive: str | None = None
    negatives: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = (0.0, 1.0, 2.0)
    backend: str = "auto"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not self.thresholds or not all(math.isfinite(t) for t in self.thresholds):
            raise ValueError(f"thresholds {','.join(map(str, self.thresholds))} are invalid: expected finite numbers")
        if self.batch_size < 1:
            raise ValueError(f"batch size {self.batch_size} is invalid: expected a positive integer")


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    scorer = load_scorer(cfg.model, cfg.backend)
    if scorer.head != "modulus":
        from patchdet.training.evaluate_multiclass import evaluate_multiclass  # POD / softmax heads

        return evaluate_multiclass(cfg, scorer)
    positive = cfg.positive or scorer.positive
    negatives = cfg.negatives or scorer.negatives
    if not positive or not negatives:
        raise ValueError("name the classes: --positive NAME --negative NAME[,NAME...] (the model does not say)")
    overlap = set(cfg.unseen) & ({positive} | set(negatives))
    if overlap:
        raise ValueError(f"unseen class(es) {', '.join(sorted(overlap))} are also positive/negative classes")
    class_names = [positive, *negatives, *cfg.unseen]
    outputs, labels = score_folder(scorer, cfg.data, class_names, cfg.batch_size)
    scores = outputs["score"].astype(np.float64)
    known = labels < 1 + len(negatives)
    is_positive = labels == 0
    report: dict[str, Any] = {
        "model": cfg.model,
        "head": scorer.head,
        "data": cfg.data,
        "positive": positive,
        "negatives": list(negatives),
        "unseen": list(cfg.unseen),
        "counts": {name: int(np.sum(labels == i)) for i, name in enumerate(class_names)},
        "thresholds": [],
        "at_origin": {name: fraction_at_origin(scores[labels == i]) for i, name in enumerate(class_names)},
        "score_median": {name: float(np.median(scores[labels == i])) for i, name in enumerate(class_names)},
    }
    for threshold in cfg.thresholds:
        entry = binary_report(scores[known], is_positive[known], threshold)
        entry["unseen"] = {
            name: fraction_above(scores[labels == 1 + len(negatives) + j], threshold) for j, name in enumerate(cfg.unseen)
        }
        entry["per_class_above"] = {name: fraction_above(scores[labels == i], threshold)
                                    for i, name in enumerate(class_names)}
        report["thresholds"].append(entry)
    report["sweep"] = [
        {"threshold": r["threshold"], "positive_f1": r["positive"]["f1"], "negative_f1": r["negative"]["f1"]}
        for r in threshold_sweep(scores[known], is_positive[known])
    ]
    report["best_threshold"] = best_f1_threshold(scores[known], is_positive[known])
    return report


def threshold_rows(report: dict[str, Any]):
    """(threshold, "positive"/"negative", precision/recall/f1 dict, confusion dict on the positive row else None)
    for each threshold of a modulus report: the paper's Tables 3-5 layout, for text and Markdown alike."""
    for entry in report["thresholds"]:
        for side in ("positive", "negative"):
            yield entry["threshold"], side, entry[side], entry["confusion"] if side == "positive" else None


def format_report(report: dict[str, Any]) -> str:
    """A terminal table in the layout of the paper's Tables 3-5."""
    if report.get("head", "modulus") != "modulus":
        from patchdet.training.evaluate_multiclass import format_multiclass

        return format_multiclass(report)
    lines = [f"model {report['model']}  positive {report['positive']}  negatives {', '.join(report['negatives'])}",
             "counts: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()), ""]
    header = f"{'threshold':>9}  {'class':<8} {'precision':>9} {'recall':>7} {'f1':>6}   confusion"
    lines.append(header)
    for threshold, side, m, c in threshold_rows(report):
        conf = f"TP {c['tp']} FN {c['fn']} FP {c['fp']} TN {c['tn']}" if c else ""
        lines.append(f"{threshold:>9g}  {side:<8} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f}   {conf}")
    if report["unseen"]:
        lines += ["", "unseen classes: fraction above threshold"]
        for entry in report["thresholds"]:
            lines.append(f"{entry['threshold']:>9g}  " + ", ".join(f"{k} {v:.3f}" for k, v in entry["unseen"].items()))
    lines += ["", "fraction at exactly zero modulus: " + ", ".join(f"{k} {v:.3f}" for k, v in report["at_origin"].items()),
              f"best threshold (mean F1): {report['best_threshold']:.4g}"]
    return "\n".join(lines)
