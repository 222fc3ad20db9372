"""Checkpoints: one dict of plain types and tensors, loadable with ``weights_only=True``.

Layout (every key but the optional ones is always present)::

    format: "patchdet-checkpoint", version: 1
    arch: registered model name, arch_kwargs: builder kwargs
    head: "modulus" | "cosine" | "softmax"
    state_dict: model weights (no DDP "module." prefix)
    class_names: list[str]; positive_class: str | None; negative_classes: list[str]
    input_size: int; mean, std: list[float] (RGB, [0, 1] units)
    threshold: recommended decision threshold; thresholds: other named operating points (optional)
    tiling: optional runtime tiling defaults (keys of TilingConfig), copied into exported cards
    centroids: tensor [K, D] (cosine heads only)
    config: the resolved TrainConfig as a dict
    epoch: last finished epoch (1-based), best_metric: float
    training: data summary (counts per class, image size seen, resize note)
    optional resume state: optimizer, scheduler, scaler, loss_state, rng, history
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from patchdet.runtime.atomic import atomic_output
from patchdet.training.models import get_model, list_models

CHECKPOINT_FORMAT = "patchdet-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, foreign or inconsistent."""


def _plain(value: Any) -> Any:
    """Tensors and numpy values -> Python lists / numbers (checkpoints hold both)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about its model: read once, typed, used by export, evaluation and cards.

    Attributes:
        path: The checkpoint file.
        arch, arch_kwargs: Registered model name and builder arguments.
        head: ``modulus``, ``cosine`` or ``softmax``.
        class_names: Classes of the training data (all of them, for modulus heads too).
        positive_class, negative_classes: The modulus head's positive and negative classes.
        input_size: Square input side in pixels.
        mean, std: Normalisation (RGB, [0, 1] units).
        threshold: Recommended decision threshold; thresholds: other named operating points.
        centroids: Class centroids [K][D] (cosine heads).
        norm_gate: Latent norm below which a cosine head says background.
        background_class: Name of a background class, if any.
        epoch, best_metric: Where training stopped.
        training: Data summary of the run.
        tiling: How the runtime should tile frames for this model (keys of ``runtime.tiling_config.TilingConfig``);
            copied into every exported card. Empty: tiles of the input size.
    """

    path: str
    arch: str
    head: str
    class_names: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    positive_class: str | None = None
    negative_classes: tuple[str, ...] = ()
    threshold: float = 0.0
    thresholds: dict[str, float] = field(default_factory=dict)
    centroids: tuple[tuple[float, ...], ...] | None = None
    norm_gate: float = 0.0
    background_class: str | None = None
    epoch: int | None = None
    best_metric: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    tiling: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> CheckpointInfo:
        """Read a loaded checkpoint's metadata; a missing required key is a ``CheckpointError``."""
        try:
            centroids = payload.get("centroids")
            return cls(
                path=str(payload.get("path", "")), arch=payload["arch"], head=payload["head"],
                class_names=tuple(payload["class_names"]), input_size=int(payload["input_size"]),
                mean=tuple(float(v) for v in _plain(payload["mean"])),
                std=tuple(float(v) for v in _plain(payload["std"])),
                arch_kwargs=_plain(dict(payload.get("arch_kwargs") or {})),
                positive_class=payload.get("positive_class"),
                negative_classes=tuple(payload.get("negative_classes") or ()),
                threshold=float(payload.get("threshold", 0.0) or 0.0),
                thresholds={str(k): float(v) for k, v in _plain(payload.get("thresholds") or {}).items()},
                centroids=None if centroids is None else tuple(tuple(float(v) for v in row) for row in _plain(centroids)),
                norm_gate=float(payload.get("norm_gate", 0.0) or 0.0),
                background_class=payload.get("background_class"),
                epoch=payload.get("epoch"), best_metric=_plain(payload.get("best_metric")),
                training=_plain(dict(payload.get("training") or {})),
                tiling=_plain(dict(payload.get("tiling") or {})),
            )
        except KeyError as exc:
            raise CheckpointError(f"checkpoint {payload.get('path', '?')} has no {exc.args[0]!r} entry") from None

    @property
    def output_classes(self) -> list[str]:
        """The classes the model's output names: the positive class of a modulus head, else every class."""
        return [self.positive_class] if self.head == "modulus" else list(self.class_names)

    @property
    def trained_classes(self) -> list[str]:
        """The classes the model was trained on (positive first for modulus heads)."""
        if self.head == "modulus" and self.positive_class:
            return [self.positive_class, *self.negative_classes]
        return list(self.class_names)


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save atomically: a crash mid-write never corrupts an existing checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():  # a run folder: prefer its best checkpoint
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"run folder {path} holds neither best.pt nor last.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a patchdet checkpoint")
    if payload.get("arch") not in list_models():
        raise CheckpointError(
            f"checkpoint {path} is for unknown architecture {payload.get('arch')!r}: "
            f"known are {', '.join(list_models())}"
        )
    payload["path"] = str(path)
    return payload


def build_model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the model and load its weights strictly; a mismatch names the checkpoint's arch."""
    model = get_model(payload["arch"], **payload.get("arch_kwargs", {}))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {payload.get('path', '?')} weights do not fit architecture {payload['arch']!r}: {summary}"
        ) from None
    model.eval()
    return model
