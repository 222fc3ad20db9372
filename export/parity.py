"""Parity check: an artifact against the PyTorch graph it came from, on real evaluation patches.

Recorded per artifact (in its card and the manifest):

- ``embedding_max_abs`` / ``embedding_mean_abs``: |artifact - torch| of the first
  output (embedding or logits);
- ``score_max_abs``, ``score_rel`` = max |d score| / max |torch score| and the
  Pearson correlation of the scores (score agreement);
- ``decision_agreement``: same decision at the card threshold (modulus) or same
  argmax class (cosine / softmax);
- positive-class F1 (or accuracy) of torch and of the artifact at the card threshold;
- INT8 only: the threshold on the artifact's scores that flags as many samples
  positive as torch does at the card threshold (the FP32 operating point), how
  far it moved, and the F1 there.

Pass rules by precision (``ParityConfig``): FP32 / FP16 artifacts need
``score_rel`` within tolerance and the decision agreement; INT8 artifacts need
F1 (accuracy) within ``int8_max_f1_drop`` of torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.export.config import ParityConfig
from patchdet.runtime.card import ModelCard
from patchdet.runtime.decisions import is_positive as score_is_positive
from patchdet.runtime.metrics import binary_report

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def load_runner(path: str | Path, threads: int) -> Runner:
    """A callable running an artifact: float32 [N, 3, H, W] -> {output name: array}.

    The runtime's own backends run it, so the check exercises the code that
    deploys it: ONNX files with ONNX Runtime (CPU), IR with OpenVINO at
    ``INFERENCE_PRECISION_HINT=f32`` (the check measures the IR itself, not this
    CPU's default bf16 execution), engines with TensorRT.
    """
    from patchdet.runtime.backends import load_backend

    suffix = Path(path).suffix
    if suffix == ".onnx":
        return load_backend(path, name="onnxruntime", threads=max(1, threads))
    if suffix == ".xml":
        return load_backend(path, name="openvino", threads=max(1, threads), precision="f32")
    return load_backend(path, name="auto", threads=max(1, threads))


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Run ``runner`` over ``inputs`` in batches and concatenate every output along axis 0."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), batch_size):
        for name, value in runner(np.ascontiguousarray(inputs[start:start + batch_size])).items():
            parts.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
    return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}


def torch_runner(graph: Any) -> Runner:
    """The PyTorch reference as a runner (``graph`` is an ``export.wrappers.HeadGraph``)."""
    import torch

    graph = graph.eval()

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = graph(torch.from_numpy(batch))
        return {name: out.numpy() for name, out in zip(graph.output_names, outputs, strict=True)}

    return run


def decisions(outputs: dict[str, np.ndarray], head: str, threshold: float) -> np.ndarray:
    """Per-sample decision: ``score > threshold`` (modulus) or the argmax class (cosine / softmax)."""
    if head == "modulus":
        return score_is_positive(outputs["score"], threshold)
    key = "cosine" if head == "cosine" else "probs"
    return np.argmax(outputs[key], axis=1)


def positive_scores(outputs: dict[str, np.ndarray], card: ModelCard) -> np.ndarray | None:
    """Score of the positive class used for binary F1 (None when the card has no positive class)."""
    if card.head == "modulus":
        return outputs["score"]
    if card.positive_class is None or card.positive_class not in card.class_names:
        return None
    key = "cosine" if card.head == "cosine" else "probs"
    return outputs[key][:, card.class_names.index(card.positive_class)]


def matched_threshold(ref_scores: np.ndarray, art_scores: np.ndarray, threshold: float) -> float:
    """Threshold on ``art_scores`` flagging as many samples as ``ref_scores > threshold`` does."""
    positives = int(np.sum(score_is_positive(ref_scores, threshold)))
    if int(np.sum(score_is_positive(art_scores, threshold))) == positives:
        return float(threshold)  # the operating point already holds: no move needed
    ordered = np.sort(art_scores)
    n = len(ordered)
    if positives == 0:
        return float(ordered[-1])
    if positives >= n:
        return float(np.nextafter(ordered[0], -np.inf))
    low, high = ordered[n - positives - 1], ordered[n - positives]
    return float((low + high) / 2) if high > low else float(low)


def _f1(scores: np.ndarray | None, is_positive: np.ndarray, threshold: float) -> float | None:
    if scores is None or not is_positive.any():
        return None
    return binary_report(scores, is_positive, threshold)["positive"]["f1"]


def compare_outputs(ref: dict[str, np.ndarray], art: dict[str, np.ndarray], card: ModelCard,
                    labels: np.ndarray, is_positive: np.ndarray, precision: str, cfg: ParityConfig) -> dict[str, Any]:
    """Parity metrics and pass / fail of an artifact's outputs against the torch outputs.

    Args:
        ref: Torch outputs on the evaluation inputs, e.g. ``score`` float32 [N].
        art: Artifact outputs on the same inputs.
        card: The artifact's card (head, threshold, class names).
        labels: int64 [N] class index into ``card.class_names`` (-1 = not a model class).
        is_positive: bool [N] ground truth for the positive class.
        precision: ``fp32``, ``fp16`` or ``int8``.
        cfg: Tolerances.
    """
    first = card.outputs[0]
    missing = [name for name in card.outputs if name not in art]
    if missing:
        return {"passed": False, "failures": [f"artifact lacks output(s) {', '.join(missing)}"]}
    emb_diff = np.abs(art[first].astype(np.float64) - ref[first])
    ref_score = ref["score"].astype(np.float64).reshape(-1)
    art_score = art["score"].astype(np.float64).reshape(-1)
    score_diff = np.abs(art_score - ref_score)
    scale = max(float(np.max(np.abs(ref_score))), 1e-12)
    corr = float(np.corrcoef(ref_score, art_score)[0, 1]) if np.std(ref_score) > 0 and np.std(art_score) > 0 else 1.0
    ref_dec = decisions(ref, card.head, card.threshold)
    art_dec = decisions(art, card.head, card.threshold)
    result: dict[str, Any] = {
        "samples": int(len(ref_score)),
        "precision": precision,
        "embedding_max_abs": float(emb_diff.max()),
        "embedding_mean_abs": float(emb_diff.mean()),
        "score_max_abs": float(score_diff.max()),
        "score_mean_abs": float(score_diff.mean()),
        "score_rel": float(score_diff.max() / scale),
        "score_correlation": corr,
        "decision_agreement": float(np.mean(ref_dec == art_dec)),
        "threshold": float(card.threshold),
    }
    ref_pos, art_pos = positive_scores(ref, card), positive_scores(art, card)
    threshold = card.threshold if card.head == "modulus" else 0.5
    result["f1_torch"] = _f1(ref_pos, is_positive, threshold) if card.head == "modulus" else None
    result["f1_artifact"] = _f1(art_pos, is_positive, threshold) if card.head == "modulus" else None
    if card.head != "modulus":
        valid = labels >= 0
        result["accuracy_torch"] = float(np.mean(ref_dec[valid] == labels[valid])) if valid.any() else None
        result["accuracy_artifact"] = float(np.mean(art_dec[valid] == labels[valid])) if valid.any() else None
    if precision == "int8" and card.head == "modulus":
        matched = matched_threshold(ref_pos, art_pos, card.threshold)
        result["threshold_for_fp32_operating_point"] = matched
        result["threshold_shift"] = matched - card.threshold
        result["f1_artifact_at_matched_threshold"] = _f1(art_pos, is_positive, matched)
    result["failures"] = _non_finite(ref_score, art_score, card.threshold) + _failures(result, precision, cfg)
    result["passed"] = not result["failures"]
    return result


def _non_finite(ref_score: np.ndarray, art_score: np.ndarray, threshold: float) -> list[str]:
    """NaN compares as neither larger nor smaller than a tolerance: check for it explicitly."""
    failures = []
    if not np.isfinite(ref_score).all():
        failures.append(f"torch scores are not finite ({int((~np.isfinite(ref_score)).sum())} of {ref_score.size}): "
                        "the checkpoint holds NaN or infinite weights")
    if not np.isfinite(art_score).all():
        failures.append(f"artifact scores are not finite ({int((~np.isfinite(art_score)).sum())} of "
                        f"{art_score.size})")
    if not math.isfinite(threshold):
        failures.append(f"threshold {threshold} is not finite")
    return failures


def _failures(result: dict[str, Any], precision: str, cfg: ParityConfig) -> list[str]:
    failures = []
    if precision in ("fp32", "fp16"):
        tol = cfg.fp32_rel_tol if precision == "fp32" else cfg.fp16_rel_tol
        if result["score_rel"] > tol:
            failures.append(f"score relative error {result['score_rel']:.3g} > {tol:g}")
        if result["decision_agreement"] < cfg.min_decision_agreement:
            failures.append(
                f"decision agreement {result['decision_agreement']:.4f} < {cfg.min_decision_agreement:g}"
            )
    else:
        for ref_key, art_key in (("f1_torch", "f1_artifact"), ("accuracy_torch", "accuracy_artifact")):
            ref, art = result.get(ref_key), result.get(art_key)
            if ref is not None and art is not None and ref - art > cfg.int8_max_f1_drop:
                failures.append(f"{art_key} {art:.4f} is {ref - art:.4f} below torch's {ref:.4f} "
                                f"(allowed {cfg.int8_max_f1_drop:g})")
    return failures


def dense_vs_patch(dense_scores: np.ndarray, patch_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """How the dense artifact's aligned-window scores compare with the patch model on the same crops.

    They differ by design near each window's border: the patch model zero-pads at
    the crop edge, the dense model sees the real neighbouring pixels.
    """
    diff = np.abs(dense_scores.astype(np.float64) - patch_scores)
    scale = max(float(np.max(np.abs(patch_scores))), 1e-12)
    corr = float(np.corrcoef(dense_scores, patch_scores)[0, 1]) if np.std(dense_scores) > 0 else 1.0
    return {
        "windows": int(len(diff)),
        "score_max_abs": float(diff.max()),
        "score_rel": float(diff.max() / scale),
        "score_correlation": corr,
        "decision_agreement": float(np.mean(score_is_positive(dense_scores, threshold) == score_is_positive(patch_scores, threshold))),
    }


def quality_metric(parity: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """(name, torch value, artifact value) of the artifact's task metric: positive-class F1 or accuracy."""
    if parity.get("f1_artifact") is not None:
        return "F1", parity.get("f1_torch"), parity["f1_artifact"]
    return "acc", parity.get("accuracy_torch"), parity.get("accuracy_artifact")


def quality_warnings(parity: dict[str, Any], cfg: ParityConfig) -> list[str]:
    """Why an artifact that passed parity still deserves a look: a poor model, a drop, disagreement.

    Parity only compares the artifact with torch; a 1-epoch model that detects nothing matches its
    torch self perfectly, and an INT8 drop inside ``int8_max_f1_drop`` is still a drop worth seeing.
    """
    warnings = []
    name, ref, art = quality_metric(parity)
    if art is not None and art < cfg.warn_below:
        warnings.append(f"poor model: {name} {art:.3f} < {cfg.warn_below:g} at threshold {parity.get('threshold'):g}")
    if ref is not None and art is not None and ref - art > cfg.warn_drop:
        warnings.append(f"{name} drops {ref:.4f} -> {art:.4f} ({(ref - art) * 100:.1f} pt)")
    agreement = parity.get("decision_agreement")
    if agreement is not None and agreement < 1.0 - cfg.warn_drop:
        warnings.append(f"decisions agree with torch on {agreement * 100:.1f} % of samples")
    return warnings
