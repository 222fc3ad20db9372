"""Per-tile decisions from model outputs, by head kind. Pure numpy.

- ``modulus`` (DisCNN): positive when ``score > threshold`` (the L2 norm of
  the embedding, section 3.3 of the DisCNN paper).
- ``cosine`` (POD): class = argmax cosine to the centroids; positive when the
  max cosine exceeds that class's threshold, the latent norm is at least the
  norm gate, and the class is not the background class.
- ``softmax``: class = argmax probability; positive when it exceeds that
  class's threshold and the class is not the background class.

Outputs the graph does not provide are recomputed from the ones it does
(``score`` from ``embedding``; ``cosine``/``norm`` from ``embedding`` and the
card's centroids; ``probs`` from ``logits``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DecisionRule:
    """What turns scores into decisions.

    Attributes:
        head: ``modulus``, ``cosine`` or ``softmax``.
        class_thresholds: float32 [K] threshold per class.
        norm_gate: Minimum latent norm of a positive (``cosine`` heads).
        background_id: Index of the background class, or -1.
        main_class: Class id given to every ``modulus`` tile.
        centroids: [K][D] class centroids (``cosine`` heads without a ``cosine`` output).
    """

    head: str
    class_thresholds: np.ndarray
    norm_gate: float = 0.0
    background_id: int = -1
    main_class: int = 0
    centroids: Sequence[Sequence[float]] | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float [N, K]."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def tile_rows(array: np.ndarray, dense: bool) -> np.ndarray:
    """Per-tile rows: dense maps [1, K, Hs, Ws] -> [Hs*Ws, K] and [1, Hs, Ws] -> [Hs*Ws]; patch outputs as they are."""
    array = np.asarray(array, np.float32)
    if not dense:
        return array
    if array.ndim == 4:
        return array[0].reshape(array.shape[1], -1).T
    return array.reshape(-1)


def _cosine_and_norm(rule: DecisionRule, outputs: Mapping[str, np.ndarray], dense: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    embedding = tile_rows(outputs["embedding"], dense) if "embedding" in outputs else None
    if "cosine" in outputs:
        cosine = tile_rows(outputs["cosine"], dense)
    else:
        centroids = np.asarray(rule.centroids, np.float32)
        unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        cosine = embedding @ unit.T / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    norm = tile_rows(outputs["norm"], dense) if "norm" in outputs else np.linalg.norm(embedding, axis=1)
    return cosine, norm


def decide_tiles(rule: DecisionRule, outputs: Mapping[str, np.ndarray], dense: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decisions for every tile (or dense window) of one frame.

    Args:
        rule: Head kind and thresholds.
        outputs: Backend outputs by name (patch [N, ...] or dense maps [1, ..., Hs, Ws]).
        dense: Whether ``outputs`` are dense maps.

    Returns:
        (score float32 [N], class id int64 [N], positive bool [N]).
    """
    thresholds = np.asarray(rule.class_thresholds, np.float32)
    if rule.head == "modulus":
        if "score" in outputs:
            score = tile_rows(outputs["score"], dense)
        else:
            score = np.linalg.norm(tile_rows(outputs["embedding"], dense), axis=1)
        class_id = np.full(len(score), rule.main_class, np.int64)
        return score.astype(np.float32), class_id, score > thresholds[class_id]
    if rule.head == "cosine":
        cosine, norm = _cosine_and_norm(rule, outputs, dense)
        class_id = np.argmax(cosine, axis=1).astype(np.int64)
        score = cosine[np.arange(len(cosine)), class_id]
        positive = (score > thresholds[class_id]) & (norm >= rule.norm_gate) & (class_id != rule.background_id)
        return score.astype(np.float32), class_id, positive
    if rule.head != "softmax":
        raise ValueError(f"head {rule.head!r} is unknown: expected modulus, cosine or softmax")
    probs = tile_rows(outputs["probs"], dense) if "probs" in outputs else softmax(tile_rows(outputs["logits"], dense))
    class_id = np.argmax(probs, axis=1).astype(np.int64)
    score = probs[np.arange(len(probs)), class_id]
    positive = (score > thresholds[class_id]) & (class_id != rule.background_id)
    return score.astype(np.float32), class_id, positive
