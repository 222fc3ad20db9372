"""Training data: ImageFolder trees (or torchvision CIFAR10/STL10) held in memory.

Patch datasets are small (CIFAR-10's 15,000 car/bird/cat images are 415 MB at
96x96), so images are decoded and resized once into a uint8 tensor and
augmented per sample; this keeps a 2-core CPU busy with the network, not
with JPEG decoding.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from patchdet.runtime.imagefolder import load_images, resize_to, scan_image_folder
from patchdet.training.config import AugmentConfig

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """uint8 images [N, 3, H, W] (RGB) with class indices into ``class_names``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    skipped: list[str]
    resized_from: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.class_names)}

    def subset(self, indices: np.ndarray) -> ImageSet:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.class_names, [], {})

    def extended(self, other: ImageSet) -> ImageSet:
        """This set followed by ``other``, whose classes are appended after ours (labels shifted)."""
        clash = set(self.class_names) & set(other.class_names)
        if clash:
            raise ValueError(f"class {', '.join(map(repr, sorted(clash)))} is in both image sets: rename one")
        if other.images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"image shapes differ: {tuple(other.images.shape[1:])} vs {tuple(self.images.shape[1:])}")
        return ImageSet(torch.cat([self.images, other.images]),
                        torch.cat([self.labels, other.labels + len(self.class_names)]),
                        self.class_names + other.class_names, self.skipped + other.skipped,
                        {**other.resized_from, **self.resized_from})


def _torchvision_source(spec: str, split: str, download_root: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    """``torchvision:CIFAR10`` / ``torchvision:STL10`` -> (images RGB, labels, class names)."""
    import torchvision.datasets as tvd

    name = spec.split(":", 1)[1].upper()
    root = Path(download_root).expanduser()
    try:
        if name == "CIFAR10":
            dataset = tvd.CIFAR10(root, train=split == "train", download=True)
            names = list(dataset.classes)
        elif name == "STL10":
            dataset = tvd.STL10(root, split=split, download=True)
            names = list(dataset.classes)
        else:
            raise ValueError(f"torchvision dataset {name!r} is not supported: expected CIFAR10 or STL10")
    except (RuntimeError, OSError) as exc:
        raise OSError(f"cannot obtain torchvision {name} into {root}: {str(exc).splitlines()[0]}") from None
    images, labels = [], []
    for image, label in dataset:
        images.append(np.asarray(image.convert("RGB")))
        labels.append(int(label))
    return images, labels, names


def load_image_set(
    source: str,
    class_names: list[str] | None,
    input_size: int,
    split: str = "train",
    max_per_class: int | None = None,
    seed: int = 0,
    download_root: str = "~/.cache/patchdet/datasets",
) -> ImageSet:
    """Load the chosen classes of ``source`` resized to ``input_size`` squared."""
    size_wh = (input_size, input_size)
    if source.startswith("torchvision:"):
        images, labels, names = _torchvision_source(source, split, download_root)
        wanted = class_names or names
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ValueError(f"class {', '.join(map(repr, unknown))} not in {source}: available are {', '.join(names)}")
        remap = {names.index(c): i for i, c in enumerate(wanted)}
        keep = [i for i, label in enumerate(labels) if label in remap]
        array = np.stack([resize_to(images[i], size_wh) for i in keep])
        label_array = np.asarray([remap[labels[i]] for i in keep], dtype=np.int64)
        loaded_skipped, resized = [], {}
        class_tuple = tuple(wanted)
    else:
        index = scan_image_folder(source, class_names)
        paths, label_array = list(index.paths), index.labels
        if max_per_class:
            rng = np.random.default_rng(seed)
            chosen = []
            for c in range(len(index.class_names)):
                members = np.flatnonzero(label_array == c)
                chosen.extend(sorted(rng.choice(members, size=min(max_per_class, members.size), replace=False)))
            paths = [paths[i] for i in chosen]
            label_array = label_array[chosen]
        loaded = load_images(paths, label_array, size_wh, progress=True)
        if loaded.images.shape[0] == 0:
            raise ValueError(f"no readable images in {source} for classes {', '.join(index.class_names)}")
        array, label_array = loaded.images, loaded.labels
        loaded_skipped, resized = loaded.skipped, loaded.resized_from
        class_tuple = index.class_names
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
    return ImageSet(tensor, torch.from_numpy(np.asarray(label_array, dtype=np.int64)), class_tuple, loaded_skipped,
                    resized)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping class proportions: (train indices, validation indices)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(members.size * fraction))
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def file_index_key(path: Path) -> tuple:
    """Natural sort key: ``image9.png`` before ``image10.png`` (file index order, not string order)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def block_split(paths: list[Path] | tuple[Path, ...], labels: np.ndarray, fraction: float
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Hold out the last ``fraction`` of every (class, source folder) in file-index order, then drop exact duplicates.

    Consecutive video frames sit next to each other in file order, so one
    contiguous block per folder keeps near-duplicates on one side of the split.
    Files with identical bytes are kept once (validation copies win, so no
    training image equals a validation image).

    Args:
        paths: image files; their parent folder is the source.
        labels: int [N] class indices.
        fraction: held-out share of each folder, 0 < fraction < 1.

    Returns:
        (train indices, validation indices, number of exact duplicates dropped).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"block split fraction {fraction} is invalid: expected 0 < f < 1")
    groups: dict[tuple[int, Path], list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault((int(labels[i]), Path(path).parent), []).append(i)
    train_idx, val_idx = [], []
    for members in groups.values():
        members.sort(key=lambda i: file_index_key(Path(paths[i])))
        n_val = int(round(len(members) * fraction))
        train_idx.extend(members[:len(members) - n_val])
        val_idx.extend(members[len(members) - n_val:])
    seen: set[str] = set()
    kept_val, kept_train = [], []
    for indices, kept in ((sorted(val_idx), kept_val), (sorted(train_idx), kept_train)):
        for i in indices:
            digest = hashlib.sha1(Path(paths[i]).read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                kept.append(i)
    dropped = len(paths) - len(kept_val) - len(kept_train)
    return np.asarray(kept_train, dtype=np.int64), np.asarray(kept_val, dtype=np.int64), dropped


def load_block_split(source: str, class_names: list[str] | None, input_size: int, fraction: float,
                     max_per_class: int | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """An ImageFolder tree split by ``block_split``: (train ImageSet, validation ImageSet).

    ``max_per_class`` sub-samples the training part only (seeded), so the
    validation blocks do not depend on it.
    """
    index = scan_image_folder(source, class_names)
    train_idx, val_idx, dropped = block_split(index.paths, index.labels, fraction)
    if dropped:
        log.info("dropped %d exact duplicate image(s) from %s", dropped, source)
    if max_per_class:
        rng = np.random.default_rng(seed)
        chosen = []
        for c in range(len(index.class_names)):
            members = train_idx[index.labels[train_idx] == c]
            chosen.extend(rng.choice(members, size=min(max_per_class, members.size), replace=False))
        train_idx = np.sort(np.asarray(chosen, dtype=np.int64))
    parts = []
    for indices in (train_idx, val_idx):
        loaded = load_images([index.paths[i] for i in indices], index.labels[indices], (input_size, input_size),
                             progress=True)
        tensor = torch.from_numpy(np.ascontiguousarray(loaded.images.transpose(0, 3, 1, 2)))
        parts.append(ImageSet(tensor, torch.from_numpy(loaded.labels.astype(np.int64)), index.class_names,
                              loaded.skipped, loaded.resized_from))
    return parts[0], parts[1]


class AugmentedImages(Dataset):
    """Per-sample augmentation of an in-memory ``ImageSet``; yields (uint8 [3,H,W], class index)."""

    def __init__(self, image_set: ImageSet, augment: AugmentConfig | None) -> None:
        self.image_set = image_set
        size = tuple(image_set.images.shape[-2:])
        steps: list = []
        if augment is not None and augment.kind != "none":
            if augment.crop_scale[0] < 1.0:
                steps.append(v2.RandomResizedCrop(size, scale=augment.crop_scale, antialias=True))
            if augment.hflip:
                steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps) if steps else None

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image_set.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.image_set.labels[index])


def normalize_on_device(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float [N,3,H,W] normalised, on the images' device."""
    return (images_uint8.float().div_(255.0) - mean) / std
