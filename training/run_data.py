"""The data of one training run: the train/validation split, extra negatives, the augmented dataset, a summary."""

from __future__ import annotations

from typing import Any

import torch

from patchdet.training.config import BACKGROUND_CLASS, TrainConfig
from patchdet.training.data import (
    AugmentedImages,
    ImageSet,
    load_block_split,
    load_image_set,
    stratified_split,
)


def load_run_data(cfg: TrainConfig, class_names: list[str] | None) -> tuple[ImageSet, ImageSet]:
    """(train, validation) image sets: the main tree split as the config says, plus any extra positives/negatives."""
    train_set, val_set = _load_main_data(cfg, class_names)
    if cfg.extra_positives:
        train_set, val_set = _with_extra_positives(cfg, train_set, val_set)
    if not cfg.extra_negatives:
        return train_set, val_set
    extra = load_image_set(cfg.extra_negatives, list(cfg.extra_negative_classes), cfg.input_size, "train",
                           cfg.max_extra_per_class, cfg.seed, cfg.download_root)
    extra.class_names = tuple(f"extra:{name}" for name in extra.class_names)
    extra_train, extra_val = stratified_split(extra.labels.numpy(), cfg.val_fraction or 0.1, cfg.seed)
    merged_train = train_set.extended(extra.subset(extra_train))
    return merged_train, val_set.extended(extra.subset(extra_val))


def _with_extra_positives(cfg: TrainConfig, train_set: ImageSet, val_set: ImageSet) -> tuple[ImageSet, ImageSet]:
    """Images of other trees' classes relabelled as the positive class (index 0), split like the extra negatives."""
    extra = load_image_set(cfg.extra_positives, list(cfg.extra_positive_classes), cfg.input_size, "train",
                           cfg.max_extra_positives_per_class, cfg.seed, cfg.download_root)
    extra_train, extra_val = stratified_split(extra.labels.numpy(), cfg.val_fraction or 0.1, cfg.seed)
    as_positive = ImageSet(extra.images, torch.zeros_like(extra.labels), train_set.class_names, [], {})
    return (_appended(train_set, as_positive.subset(extra_train)),
            _appended(val_set, as_positive.subset(extra_val)))


def _appended(base: ImageSet, more: ImageSet) -> ImageSet:
    """``base`` followed by ``more``, whose labels already index ``base``'s classes."""
    return ImageSet(torch.cat([base.images, more.images]), torch.cat([base.labels, more.labels]),
                    base.class_names, base.skipped, base.resized_from)


def _load_main_data(cfg: TrainConfig, class_names: list[str] | None) -> tuple[ImageSet, ImageSet]:
    if cfg.split == "blocks" and not cfg.val_data:
        if cfg.data.startswith("torchvision:"):
            raise ValueError(f"split 'blocks' needs an ImageFolder tree with source sub-folders, not {cfg.data}")
        return load_block_split(cfg.data, class_names, cfg.input_size, cfg.val_fraction, cfg.max_per_class, cfg.seed)
    full = load_image_set(cfg.data, class_names, cfg.input_size, "train", cfg.max_per_class, cfg.seed,
                          cfg.download_root)
    if cfg.val_data:
        val = load_image_set(cfg.val_data, list(full.class_names), cfg.input_size, "test", None, cfg.seed,
                             cfg.download_root)
        return full, val
    if cfg.val_fraction == 0:
        raise ValueError("no validation data: give --val-data DIR or a --val-fraction above 0")
    train_idx, val_idx = stratified_split(full.labels.numpy(), cfg.val_fraction, cfg.seed)
    train_set = full.subset(train_idx)
    train_set.skipped, train_set.resized_from = full.skipped, full.resized_from
    return train_set, full.subset(val_idx)


def training_dataset(cfg: TrainConfig, train_set: ImageSet):
    """The dataset the loader draws from: tile synthesis (``--augment tiles``) or per-image augmentation."""
    if cfg.augment.kind == "tiles":
        from patchdet.training.synthesis import TileSynthesis

        # The main tree's negative classes (or a multi-class run's ``background``) are the road backgrounds that
        # class-0 objects get pasted on; other classes and extras are used as they are.
        backgrounds = tuple(range(1, 1 + len(cfg.negatives))) if cfg.positive is not None else tuple(
            i for i, name in enumerate(train_set.class_names) if name == BACKGROUND_CLASS)
        return TileSynthesis(train_set, cfg.augment, backgrounds)
    return AugmentedImages(train_set, cfg.augment)


def data_summary(train_set: ImageSet, val_set: ImageSet, cfg: TrainConfig) -> dict[str, Any]:
    """What the checkpoint (and so every model card) says about the training data."""
    return {
        "source": cfg.data,
        "train_counts": train_set.counts(),
        "val_counts": val_set.counts(),
        "skipped_unreadable": len(train_set.skipped),
        "resized_from": {f"{w}x{h}": n for (w, h), n in train_set.resized_from.items()},
        "input_size": cfg.input_size,
        "split": cfg.split if not cfg.val_data else "val_data",
        **({"terms": cfg.data_terms} if cfg.data_terms else {}),
        "augment": cfg.augment.kind,
        "extra_negatives": ({"source": cfg.extra_negatives, "classes": list(cfg.extra_negative_classes)}
                            if cfg.extra_negatives else None),
        "extra_positives": ({"source": cfg.extra_positives, "classes": list(cfg.extra_positive_classes)}
                            if cfg.extra_positives else None),
    }
