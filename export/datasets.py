"""Calibration and evaluation inputs for export: real patches read with ``runtime.imagefolder``.

``--calib`` is a plain folder of images or an ImageFolder tree; ``--eval`` is an
ImageFolder tree. With the ``"model"`` class rule, a tree that holds the
checkpoint's own classes (positive + negatives, or all class names) is
restricted to them, so ``cifar10/test`` evaluates a car model on
automobile / bird / cat. Images of another size are resized to the model
input, and the resize is logged and recorded in the card.

Dense artifacts are calibrated and checked on mosaics: ``m x m`` patches pasted
into one frame, so the window at map cell ``(r * fh, c * fh)`` is exactly patch
``(r, c)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from patchdet.runtime.imagefolder import (
    list_class_folders,
    list_images,
    load_images,
    normalize_batch,
    scan_image_folder,
)

if TYPE_CHECKING:
    from patchdet.training.checkpoint import CheckpointInfo

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Normalised evaluation patches with labels.

    Attributes:
        inputs: float32 [N, 3, S, S] normalised patches.
        labels: int64 [N] indices into ``class_names``.
        class_names: Classes read from the folder.
        positive_class: The positive class (binary metrics), or None.
        info: Where the set came from (for the card).
    """

    inputs: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    positive_class: str | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_positive(self) -> np.ndarray:
        if self.positive_class is None or self.positive_class not in self.class_names:
            return np.zeros(len(self.labels), dtype=bool)
        return self.labels == self.class_names.index(self.positive_class)


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _resize_note(resized_from: dict[tuple[int, int], int], size: int) -> str | None:
    if not resized_from:
        return None
    sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(resized_from.items()))
    return f"resized {sizes} to {size}x{size}"


def load_calibration(root: str | Path, ckpt: CheckpointInfo, num_images: int, min_images: int,
                     class_rule: str, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Calibration patches, normalised as the checkpoint says.

    Returns:
        float32 [N, 3, S, S] inputs and a summary for the card.

    Raises:
        ValueError: fewer than ``min_images`` readable images.
    """
    root = Path(root)
    size = ckpt.input_size
    classes = [c for c in ckpt.trained_classes if (root / c).is_dir()] if class_rule == "model" else []
    if classes:
        paths = [p for c in classes for p in list_images(root / c)]
    else:
        paths = list_images(root)
    index = _subsample(len(paths), num_images, seed)
    chosen = [paths[i] for i in index]
    if len(chosen) < min_images:
        raise ValueError(
            f"calibration folder {root} has {len(chosen)} image file(s): INT8 needs at least {min_images} "
            f"({num_images} recommended) real patches"
        )
    loaded = load_images(chosen, np.zeros(len(chosen), dtype=np.int64), (size, size))
    if len(loaded.images) < min_images:
        raise ValueError(
            f"calibration folder {root} has {len(loaded.images)} readable image(s): INT8 needs at least {min_images}"
        )
    note = _resize_note(loaded.resized_from, size)
    if note:
        log.info("calibration images: %s", note)
    inputs = normalize_batch(loaded.images, ckpt.mean, ckpt.std)
    info = {
        "source": str(root),
        "classes": classes or "all",
        "images": int(len(inputs)),
        "skipped_unreadable": len(loaded.skipped),
        "resized": note,
        "seed": seed,
    }
    return inputs, info


def load_eval_set(root: str | Path, ckpt: CheckpointInfo, class_rule: str, max_images: int, seed: int) -> EvalSet:
    """The parity set: an ImageFolder tree, restricted to the model's classes under the ``"model"`` rule."""
    root = Path(root)
    size = ckpt.input_size
    available = list_class_folders(root)
    if not available:
        raise ValueError(f"evaluation folder {root} has no class sub-folders: expected an ImageFolder tree")
    wanted = [c for c in ckpt.trained_classes if c in available] if class_rule == "model" else []
    index = scan_image_folder(root, wanted or None)
    chosen = _subsample(len(index), max_images, seed)
    loaded = load_images([index.paths[i] for i in chosen], index.labels[chosen], (size, size))
    note = _resize_note(loaded.resized_from, size)
    positive = ckpt.positive_class
    info = {
        "source": str(root),
        "classes": list(index.class_names),
        "images": int(len(loaded.images)),
        "counts": {n: int(np.sum(loaded.labels == i)) for i, n in enumerate(index.class_names)},
        "skipped_unreadable": len(loaded.skipped),
        "resized": note,
    }
    if positive and positive not in index.class_names:
        log.warning("evaluation folder %s has no %r folder: F1 of the positive class is not measured", root, positive)
    inputs = normalize_batch(loaded.images, ckpt.mean, ckpt.std)
    return EvalSet(inputs, loaded.labels.astype(np.int64), index.class_names, positive, info)


def mosaic(inputs: np.ndarray, per_side: int) -> np.ndarray:
    """Paste ``per_side**2`` consecutive patches into frames (row-major); leftovers are dropped.

    Args:
        inputs: float32 [N, 3, S, S].
        per_side: Patches per frame side.

    Returns:
        float32 [N // per_side**2, 3, per_side * S, per_side * S].
    """
    n, c, s, _ = inputs.shape
    frames = n // (per_side * per_side)
    if frames == 0:
        raise ValueError(f"{n} patches cannot fill one {per_side}x{per_side} mosaic")
    grid = inputs[: frames * per_side * per_side].reshape(frames, per_side, per_side, c, s, s)
    return np.ascontiguousarray(grid.transpose(0, 3, 1, 4, 2, 5).reshape(frames, c, per_side * s, per_side * s))


def aligned_windows(maps: np.ndarray, per_side: int, cells_per_patch: int) -> np.ndarray:
    """Pick the map cells whose windows are exactly the mosaic's patches.

    Args:
        maps: [F, ..., Hs, Ws] dense outputs (channels, if any, before the two map axes).
        per_side: Patches per frame side.
        cells_per_patch: Patch side / 16.

    Returns:
        [F * per_side**2, ...] in the patch order ``mosaic`` used.
    """
    idx = np.arange(per_side) * cells_per_patch
    picked = maps[..., idx[:, None], idx[None, :]]  # [F, ..., m, m]
    picked = np.moveaxis(picked, (-2, -1), (1, 2))  # [F, m, m, ...]
    return picked.reshape(-1, *picked.shape[3:])
