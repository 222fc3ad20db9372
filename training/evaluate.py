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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.imagefolder import load_images, normalize_batch, scan_image_folder
from patchdet.runtime.metrics import (
    best_f1_threshold,
    binary_report,
    fraction_above,
    fraction_at_origin,
    threshold_sweep,
)

log = logging.getLogger(__name__)

ARTIFACT_SUFFIXES = (".onnx", ".xml", ".engine", ".plan")


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


class _Scorer:
    """Common face of a checkpoint and an artifact: uint8 RGB images -> output arrays."""

    head: str
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    positive: str | None
    negatives: tuple[str, ...]
    class_names: tuple[str, ...]
    extra: dict[str, Any]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class CheckpointScorer(_Scorer):
    def __init__(self, path: str) -> None:
        import torch

        from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint

        self._torch = torch
        payload = load_checkpoint(path)
        self.model = build_model_from_checkpoint(payload)
        self.head = payload["head"]
        self.input_size = int(payload["input_size"])
        self.mean, self.std = tuple(payload["mean"]), tuple(payload["std"])
        self.positive = payload.get("positive_class")
        self.negatives = tuple(payload.get("negative_classes", ()))
        self.class_names = tuple(payload["class_names"])
        self.extra = {"centroids": payload.get("centroids"), "threshold": payload.get("threshold")}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._torch.no_grad():
            output = self.model(self._torch.from_numpy(batch)).float()
        if self.head == "modulus":
            return {"embedding": output.numpy(), "score": output.norm(dim=1).numpy()}
        if self.head == "cosine":
            centroids = self._torch.nn.functional.normalize(self.extra["centroids"].float(), dim=1)
            cosine = self._torch.nn.functional.normalize(output, dim=1) @ centroids.T
            return {"embedding": output.numpy(), "cosine": cosine.numpy(), "norm": output.norm(dim=1).numpy(),
                    "score": cosine.max(dim=1).values.numpy()}
        probs = output.softmax(dim=1)
        return {"logits": output.numpy(), "probs": probs.numpy(), "score": probs.max(dim=1).values.numpy()}


class ArtifactScorer(_Scorer):
    def __init__(self, path: str, backend: str) -> None:
        from patchdet.runtime.backends import load_backend
        from patchdet.runtime.card import read_artifact_card

        self.card = read_artifact_card(path)
        if self.card.dense:
            raise ValueError(f"{path} is a dense (whole-frame) artifact: evaluate the patch artifact instead")
        self.backend = load_backend(path, backend)
        self.head = self.card.head
        if self.card.input_wh[0] != self.card.input_wh[1]:
            raise ValueError(f"{path} has a non-square input {self.card.input_wh}: not supported by evaluate")
        self.input_size = int(self.card.input_wh[0])
        self.mean, self.std = self.card.mean, self.card.std
        self.positive = self.card.positive_class
        self.negatives = tuple(self.card.training.get("negative_classes", ()))
        self.class_names = self.card.class_names
        self.extra = {"centroids": self.card.centroids, "threshold": self.card.threshold}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend(batch)


def load_scorer(model: str, backend: str = "auto") -> _Scorer:
    if Path(model).suffix.lower() in ARTIFACT_SUFFIXES:
        return ArtifactScorer(model, backend)
    return CheckpointScorer(model)


def score_folder(scorer: _Scorer, data: str, class_names: list[str], batch_size: int) -> tuple[dict, np.ndarray]:
    """Run ``scorer`` on every image of the given classes: (outputs, labels into class_names)."""
    index = scan_image_folder(data, class_names)
    size = (scorer.input_size, scorer.input_size)
    outputs: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    for start in range(0, len(index), batch_size * 8):  # decode in chunks: bounded memory on big folders
        paths = index.paths[start:start + batch_size * 8]
        loaded = load_images(paths, index.labels[start:start + batch_size * 8], size)
        for b in range(0, len(loaded.labels), batch_size):
            batch = normalize_batch(loaded.images[b:b + batch_size], scorer.mean, scorer.std)
            for name, value in scorer(batch).items():
                outputs.setdefault(name, []).append(np.asarray(value))
        labels.append(loaded.labels)
    return {k: np.concatenate(v) for k, v in outputs.items()}, np.concatenate(labels)


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


def format_report(report: dict[str, Any]) -> str:
    """A terminal table in the layout of the paper's Tables 3-5."""
    if report.get("head", "modulus") != "modulus":
        from patchdet.training.evaluate_multiclass import format_multiclass

        return format_multiclass(report)
    lines = [f"model {report['model']}  positive {report['positive']}  negatives {', '.join(report['negatives'])}",
             "counts: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()), ""]
    header = f"{'threshold':>9}  {'class':<8} {'precision':>9} {'recall':>7} {'f1':>6}   confusion"
    lines.append(header)
    for entry in report["thresholds"]:
        c = entry["confusion"]
        for side in ("positive", "negative"):
            m = entry[side]
            conf = f"TP {c['tp']} FN {c['fn']} FP {c['fp']} TN {c['tn']}" if side == "positive" else ""
            lines.append(f"{entry['threshold']:>9g}  {side:<8} {m['precision']:>9.3f} {m['recall']:>7.3f} "
                         f"{m['f1']:>6.3f}   {conf}")
    if report["unseen"]:
        lines += ["", "unseen classes: fraction above threshold"]
        for entry in report["thresholds"]:
            lines.append(f"{entry['threshold']:>9g}  " + ", ".join(f"{k} {v:.3f}" for k, v in entry["unseen"].items()))
    lines += ["", "fraction at exactly zero modulus: " + ", ".join(f"{k} {v:.3f}" for k, v in report["at_origin"].items()),
              f"best threshold (mean F1): {report['best_threshold']:.4g}"]
    return "\n".join(lines)
