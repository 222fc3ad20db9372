"""Checkpoints: one dict of plain types and tensors, loadable with ``weights_only=True``.

Layout (every key but the optional ones is always present)::

    format: "patchdet-checkpoint", version: 1
    arch: registered model name, arch_kwargs: builder kwargs
    head: "modulus" | "cosine" | "softmax"
    state_dict: model weights (no DDP "module." prefix)
    class_names: list[str]; positive_class: str | None; negative_classes: list[str]
    input_size: int; mean, std: list[float] (RGB, [0, 1] units)
    threshold: recommended decision threshold
    centroids: tensor [K, D] (cosine heads only)
    config: the resolved TrainConfig as a dict
    epoch: last finished epoch (1-based), best_metric: float
    training: data summary (counts per class, image size seen, resize note)
    optional resume state: optimizer, scheduler, scaler, loss_state, rng, history
"""

from __future__ import annotations

import hashlib
import os
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
