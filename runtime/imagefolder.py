"""ImageFolder trees (one sub-folder per class) read with OpenCV, no torch.

Shared by training (which turns the arrays into tensors), export (calibration
and parity images) and the runtime (calibration, evaluation of artifacts).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageFolderIndex:
    """Image paths with integer labels into ``class_names``."""

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.labels == i)) for i, name in enumerate(self.class_names)}


@dataclass
class LoadedImages:
    """Decoded images resized to one size. ``images``: uint8 [N, H, W, 3] RGB."""

    images: np.ndarray
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)
    resized_from: dict[tuple[int, int], int] = field(default_factory=dict)  # original (w, h) -> count


def list_class_folders(root: str | os.PathLike[str]) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder`` or below it, sorted for determinism."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def scan_image_folder(root: str | os.PathLike[str], class_names: list[str] | None = None) -> ImageFolderIndex:
    """Index ``root/<class>/*.jpg``; ``class_names`` picks (and orders) the classes.

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: a requested class is not a folder of ``root``, or a class folder has no images.
    """
    root = Path(root)
    available = list_class_folders(root)
    if class_names is None:
        class_names = available
        if not class_names:
            raise ValueError(f"data folder {root} has no class sub-folders")
    unknown = [name for name in class_names if name not in available]
    if unknown:
        raise ValueError(
            f"class {', '.join(map(repr, unknown))} not found in {root}: available are {', '.join(available) or 'none'}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = list_images(root / name)
        if not files:
            raise ValueError(f"class folder {root / name} has no images ({', '.join(IMAGE_SUFFIXES)})")
        paths.extend(files)
        labels.extend([label] * len(files))
    return ImageFolderIndex(root, tuple(class_names), tuple(paths), np.asarray(labels, dtype=np.int64))


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Decode an image as uint8 RGB [H, W, 3]; ``None`` if it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)  # also handles non-ASCII paths
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_to(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == tuple(size_wh):
        return image
    # Upscaling (CIFAR 32 -> 96) wants a smooth filter; downscaling wants area averaging.
    interpolation = cv2.INTER_AREA if w > size_wh[0] else cv2.INTER_LINEAR
    return cv2.resize(image, tuple(size_wh), interpolation=interpolation)


def load_images(
    paths: list[Path] | tuple[Path, ...],
    labels: np.ndarray,
    size_wh: tuple[int, int],
    progress: bool = False,
) -> LoadedImages:
    """Decode and resize every image; unreadable files are skipped and counted, not fatal."""
    out = np.empty((len(paths), size_wh[1], size_wh[0], 3), dtype=np.uint8)
    keep = np.zeros(len(paths), dtype=bool)
    skipped: list[str] = []
    resized_from: dict[tuple[int, int], int] = {}
    iterator = paths
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(paths, desc="loading images", unit="img", leave=False)
        except ImportError:
            pass
    for i, path in enumerate(iterator):
        image = read_rgb(path)
        if image is None:
            skipped.append(str(path))
            continue
        h, w = image.shape[:2]
        if (w, h) != tuple(size_wh):
            resized_from[(w, h)] = resized_from.get((w, h), 0) + 1
        out[i] = resize_to(image, size_wh)
        keep[i] = True
    if skipped:
        log.warning("skipped %d unreadable image(s), first: %s", len(skipped), skipped[0])
    if resized_from:
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(resized_from.items()))
        log.info("resized images of size %s to the model input %dx%d", sizes, *size_wh)
    return LoadedImages(out[keep], np.asarray(labels)[keep], skipped, resized_from)


def normalize_batch(images_rgb: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB -> float32 [N, 3, H, W] with ((x / 255) - mean) / std."""
    batch = images_rgb.astype(np.float32) * (1.0 / 255.0)
    batch -= np.asarray(mean, dtype=np.float32)
    batch /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
