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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CLASS_THRESHOLD_PREFIX = "class:"


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

    @property
    def threshold(self) -> float:
        """The main class's threshold (the one number logs and summaries report)."""
        return float(self.class_thresholds[self.main_class])


def validate_threshold(value: Any, what: str = "threshold") -> float:
    """A finite float from a number or a numeric string; ValueError otherwise."""
    try:
        number = float(value)
        if isinstance(value, bool):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is invalid: expected a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is invalid: expected a finite number")
    return number


def background_id(card: Any) -> int:
    """Index of the card's background class, or -1."""
    names = card.class_names
    return names.index(card.background_class) if card.background_class in names else -1


def main_class(card: Any) -> int:
    """The class whose threshold is reported as "the" threshold: the positive class, else the first non-background."""
    names = card.class_names
    if card.positive_class in names:
        return names.index(card.positive_class)
    background = background_id(card)
    return next((i for i in range(len(names)) if i != background), 0)


def class_thresholds(card: Any, threshold: float | str | Mapping[str, float] | None = None) -> np.ndarray:
    """float32 [K] threshold per class of ``card``.

    ``threshold`` may be one number, the name of one of the card's operating
    points (``card.thresholds``, e.g. ``"paper"``), or a dict class name ->
    number. Classes without an explicit value use the card's
    ``thresholds["class:NAME"]`` when present, else the card's ``threshold``.
    """
    default = validate_threshold(card.threshold, "model card threshold")
    per_class = {}
    for name in card.class_names:
        key = CLASS_THRESHOLD_PREFIX + name
        per_class[name] = validate_threshold(card.thresholds[key], f"model card threshold {key}") \
            if key in card.thresholds else default
    if isinstance(threshold, Mapping):
        unknown = [k for k in threshold if k not in card.class_names]
        if unknown:
            raise ValueError(f"threshold for class {unknown[0]!r} is invalid: expected one of "
                             f"{', '.join(card.class_names)}")
        per_class.update({k: validate_threshold(v, f"threshold for {k}") for k, v in threshold.items()})
    elif isinstance(threshold, str) and threshold in card.thresholds:  # a named operating point, e.g. "paper"
        value = validate_threshold(card.thresholds[threshold], f"model card threshold {threshold}")
        per_class = dict.fromkeys(per_class, value)
    elif threshold is not None:
        named = [k for k in card.thresholds if not k.startswith(CLASS_THRESHOLD_PREFIX)]
        try:
            value = validate_threshold(threshold)
        except ValueError:
            if isinstance(threshold, str) and named:
                raise ValueError(f"threshold {threshold!r} is invalid: expected a finite number or one of the "
                                 f"model card's operating points ({', '.join(named)})") from None
            raise
        per_class = dict.fromkeys(per_class, value)
    return np.array([per_class[n] for n in card.class_names], dtype=np.float32)


def decision_rule(card: Any, threshold: float | str | Mapping[str, float] | None = None,
                  norm_gate: float | None = None) -> DecisionRule:
    """The rule a card implies, with optional threshold / norm-gate overrides (validated)."""
    gate = validate_threshold(card.norm_gate if norm_gate is None else norm_gate, "norm gate")
    return DecisionRule(card.head, class_thresholds(card, threshold), gate, background_id(card), main_class(card),
                        card.centroids)


def is_positive(score: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """The one rule of a modulus head (DisCNN paper, section 3.3): a score strictly above the threshold is positive."""
    return np.asarray(score) > threshold


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


def latent_norms(rule: DecisionRule, outputs: Mapping[str, np.ndarray], dense: bool = False) -> np.ndarray:
    """float32 [N] latent norm of every tile of a ``cosine`` head (what ``norm_gate`` is compared with)."""
    return _cosine_and_norm(rule, outputs, dense)[1]


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
        return score.astype(np.float32), class_id, is_positive(score, thresholds[class_id])
    if rule.head == "cosine":
        cosine, norm = _cosine_and_norm(rule, outputs, dense)
        class_id = np.argmax(cosine, axis=1).astype(np.int64)
        score = cosine[np.arange(len(cosine)), class_id]
        positive = is_positive(score, thresholds[class_id]) & (norm >= rule.norm_gate) & (class_id != rule.background_id)
        return score.astype(np.float32), class_id, positive
    if rule.head != "softmax":
        raise ValueError(f"head {rule.head!r} is unknown: expected modulus, cosine or softmax")
    probs = tile_rows(outputs["probs"], dense) if "probs" in outputs else softmax(tile_rows(outputs["logits"], dense))
    class_id = np.argmax(probs, axis=1).astype(np.int64)
    score = probs[np.arange(len(probs)), class_id]
    positive = is_positive(score, thresholds[class_id]) & (class_id != rule.background_id)
    return score.astype(np.float32), class_id, positive
