"""``patchdet fold-origin``: land a trained DisCNN's near-origin negatives exactly on the origin.

The N2O loss's squared pull has a vanishing gradient near the origin, so many
negatives end at tiny non-zero moduli (bird 46 %, cat 23 % exactly at 0 for
the CIFAR-10 car model, where the paper has about 89 %): the paper's threshold-0
rule ("any output > 0 is a detection") then fires on most of them. Terms that
reach the origin in finite steps cost F1 in training
(``benchmarks/results/n2o_negative_terms.md``). This step works after training,
on the last FC layer only, with two numbers fitted on the run's own validation
split (never the test set):

- a margin ``delta`` on the pre-activations ``z`` before the final ReLU:
  ``relu(z - delta)`` is exactly 0 for every negative whose outputs are all
  <= ``delta``; ``delta`` is the ``target`` quantile of the validation
  negatives' largest pre-activation, so that share of them lands on the origin;
- a scale ``alpha > 0`` (``relu(alpha (z - delta)) = alpha relu(z - delta)``)
  that keeps the checkpoint's threshold meaningful: threshold ``T`` on the
  folded model is the largest threshold within 0.001 of the best validation
  mean F1 (positive and negative) of the shifted modulus.

Both fold into the layer (``W <- alpha W``, ``b <- alpha (b - delta)``): the
result is an ordinary checkpoint with the same architecture, exported and run
like any other; ``fold.json`` records the fit and the validation metrics
before and after.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patchdet.runtime.atomic import atomic_write_json, check_new_outputs
from patchdet.runtime.config import build_config
from patchdet.runtime.metrics import binary_report, fraction_at_origin
from patchdet.training.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from patchdet.training.config import TrainConfig
from patchdet.training.data import ImageSet, normalize_on_device
from patchdet.training.run_data import load_run_data

log = logging.getLogger(__name__)

# Above this scale the positives' squared moduli approach what fp16 holds (65,504 at a modulus of 256).
LARGE_SCALE = 20.0


@dataclass(frozen=True)
class FoldConfig:
    """Settings of one ``patchdet fold-origin`` run.

    Attributes:
        checkpoint: DisCNN checkpoint (N2O loss, modulus head) or its run folder.
        out: Folder for ``best.pt`` (the folded checkpoint) and ``fold.json``.
        target: Share of the validation negatives to land exactly on the origin, in (0, 1).
        data: The run's training data (``None``: the path in the checkpoint's config).
        force: Replace ``best.pt`` / ``fold.json`` of an earlier fold in ``out``.
    """

    checkpoint: str
    out: str
    target: float = 0.9
    data: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError(f"target {self.target} is invalid: expected a share of negatives in (0, 1), e.g. 0.9")


def origin_margin(negative_z: np.ndarray, target: float) -> float:
    """Smallest ``delta >= 0`` with at least ``target`` of the rows of ``negative_z`` [N, D] all <= ``delta``."""
    if negative_z.size == 0:
        raise ValueError("no negatives to fit the origin margin on")
    largest = negative_z.max(axis=1)
    return max(0.0, float(np.quantile(largest, target, method="higher")))


def shifted_modulus(z: np.ndarray, delta: float) -> np.ndarray:
    """``|relu(z - delta)|`` per row: the score of the model folded with ``delta`` (and ``alpha = 1``)."""
    return np.linalg.norm(np.maximum(z - delta, 0.0), axis=1)


def mean_f1(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> float:
    """Mean of the positive and the negative F1 of ``score > threshold``."""
    report = binary_report(scores, is_positive, threshold)
    return float((report["positive"]["f1"] + report["negative"]["f1"]) / 2)


def best_threshold(scores: np.ndarray, is_positive: np.ndarray, tolerance: float = 0.001) -> float:
    """The largest threshold whose mean F1 is within ``tolerance`` of the best one.

    The largest, because after a fold to a high target the F1 curve is flat from just above 0 to well
    inside the positives: the first maximum would map threshold 1 to a tiny one and blow up ``alpha``
    (and the positives' moduli, which fp16 engines must hold).
    """
    values = np.unique(scores[scores > 0])
    if values.size == 0:
        raise ValueError("every score is 0: the model has no positive outputs to calibrate")
    # candidates: midpoints between neighbouring scores (a threshold on a score itself is ambiguous)
    candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2])
    if candidates.size > 4000:
        candidates = np.quantile(candidates, np.linspace(0, 1, 4000))
    f1s = np.array([mean_f1(scores, is_positive, t) for t in candidates])
    return float(candidates[np.flatnonzero(f1s >= f1s.max() - tolerance)[-1]])


def fold_into_linear(layer: nn.Linear, delta: float, alpha: float) -> None:
    """In place: ``layer(x)`` becomes ``alpha * (layer(x) - delta)``."""
    if alpha <= 0:
        raise ValueError(f"scale {alpha} is invalid: the fold needs alpha > 0 to commute with the ReLU")
    with torch.no_grad():
        layer.weight.mul_(alpha)
        layer.bias.sub_(delta).mul_(alpha)


def _last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in getattr(model, "classifier", nn.Sequential()) if isinstance(m, nn.Linear)]
    if not layers or not getattr(model, "nonnegative_output", False):
        raise ValueError("fold-origin needs a DisCNN with a ReLU after its last FC layer (a modulus head)")
    return layers[-1]


def pre_activations(model: nn.Module, images: ImageSet, mean: list[float], std: list[float],
                    batch_size: int = 256) -> np.ndarray:
    """The last FC layer's outputs before the ReLU, [N, D] float32."""
    model.eval()
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = normalize_on_device(images.images[start:start + batch_size], mean_t, std_t)
            chunks.append(model(batch, return_pre_activation=True)[1].float().numpy())
    return np.concatenate(chunks)


def _metrics(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> dict[str, float]:
    return {"negatives_at_origin": round(fraction_at_origin(scores[~is_positive]), 4),
            "positives_at_origin": round(fraction_at_origin(scores[is_positive]), 4),
            "mean_f1_at_threshold": round(mean_f1(scores, is_positive, threshold), 4),
            "mean_f1_at_0": round(mean_f1(scores, is_positive, 0.0), 4),
            "median_positive_modulus": round(float(np.median(scores[is_positive])), 4)}


def fit_fold(z: np.ndarray, is_positive: np.ndarray, target: float, threshold: float) -> tuple[float, float]:
    """``(delta, alpha)`` from validation pre-activations: see the module docstring."""
    delta = origin_margin(z[~is_positive], target)
    alpha = threshold / best_threshold(shifted_modulus(z, delta), is_positive)
    return delta, alpha


def fold_origin(cfg: FoldConfig) -> dict[str, Any]:
    """Fit and fold the origin margin into ``cfg.checkpoint``; writes ``out/best.pt`` and ``out/fold.json``."""
    out = Path(cfg.out)
    check_new_outputs(out, ("best.pt", "fold.json"), cfg.force)
    payload = load_checkpoint(cfg.checkpoint)
    if payload.get("head") != "modulus" or not str(payload["config"].get("loss", "")).startswith("n2o"):
        raise ValueError(f"checkpoint {cfg.checkpoint} is not a DisCNN trained with an N2O loss: fold-origin moves "
                         "the origin of a modulus head")
    train_cfg = build_config(TrainConfig, **payload["config"])
    if cfg.data is not None:
        train_cfg = dataclasses.replace(train_cfg, data=cfg.data)
    threshold = float((payload.get("thresholds") or {}).get("training", payload["threshold"]))
    if threshold <= 0:
        raise ValueError(f"checkpoint threshold {threshold} is invalid for fold-origin: expected > 0")
    model = build_model_from_checkpoint(payload)
    layer = _last_linear(model)

    _, val_set = load_run_data(train_cfg, [train_cfg.positive, *train_cfg.negatives])
    is_positive = val_set.labels.numpy() == 0
    if is_positive.all() or not is_positive.any():
        raise ValueError("the validation split needs both positives and negatives to fit the fold")
    z = pre_activations(model, val_set, payload["mean"], payload["std"])
    before = _metrics(shifted_modulus(z, 0.0), is_positive, threshold)
    delta, alpha = fit_fold(z, is_positive, cfg.target, threshold)
    if alpha > LARGE_SCALE:
        log.warning("origin fold scale %.3g is large (the validation F1 is flat down to a tiny threshold): positive "
                    "moduli grow by as much, and an fp16 engine may overflow their squares; a lower --target "
                    "keeps it small", alpha)
    fold_into_linear(layer, delta, alpha)
    after = _metrics(alpha * shifted_modulus(z, delta), is_positive, threshold)

    folded = {**payload, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    for key in ("optimizer", "scheduler", "scaler", "loss_state", "rng", "path"):
        folded.pop(key, None)  # a folded model is not a resumable training run
    fit = {"target": cfg.target, "delta": round(delta, 6), "alpha": round(alpha, 6), "threshold": threshold,
           "validation": {"positives": int(is_positive.sum()), "negatives": int((~is_positive).sum())},
           "from_checkpoint": str(cfg.checkpoint)}
    folded["training"] = {**payload.get("training", {}), "origin_fold": fit}
    if float(payload["threshold"]) != threshold or set(payload.get("thresholds") or {}) - {"training"}:
        # alpha maps only the training threshold; an operating threshold chosen on the old scores means nothing now
        log.warning("the checkpoint's operating threshold %g was chosen for the unfolded scores: the folded "
                    "checkpoint keeps only the training threshold %g; recalibrate it (patchdet calibrate)",
                    float(payload["threshold"]), threshold)
        folded["threshold"], folded["thresholds"] = threshold, {"training": threshold}
    report = {"config": dataclasses.asdict(cfg), "fit": fit, "before": before, "after": after}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folded, out / "best.pt")
    atomic_write_json(out / "fold.json", report)
    log.info("origin fold: delta %.4g, alpha %.4g; validation negatives at the origin %.3f -> %.3f, mean F1 at %g "
             "%.4f -> %.4f", delta, alpha, before["negatives_at_origin"], after["negatives_at_origin"], threshold,
             before["mean_f1_at_threshold"], after["mean_f1_at_threshold"])
    return report
