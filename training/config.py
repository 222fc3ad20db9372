"""The training stage's one config: ``TrainConfig`` (defaults -> YAML -> CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

BACKGROUND_CLASS = "background"  # a class folder of this name is what multi-class detectors call "nothing"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


AUGMENT_KINDS = ("standard", "tiles", "none")


@dataclass(frozen=True)
class TileAugmentConfig:
    """Knobs of ``augment.kind: tiles`` (``training.synthesis``): make crops look like runtime tiles.

    Positives: ``plain_fraction`` of them are the crop itself, the rest a car
    scaled by ``car_scale`` (relative to the tile) pasted on a background crop
    with its centre up to ``max_offset`` tile sides from the tile centre (so it
    is off-centre and, when large, cut by the border); ``two_cars`` of the
    pasted ones get a second car. Negatives: ``cut_car_fraction`` of them get a
    car of which only ``cut_visible`` (a fraction of its width or height) lies
    inside the tile, and ``small_car_fraction`` of them one to three cars of
    ``small_car_scale`` of the tile (a tile much larger than a car is not that
    car's box: without these, the largest tile around a car scores highest
    and wins NMS), and ``car_part_fraction`` of them a part of a car: a
    window of ``car_part_scale`` of a car crop's side, enlarged to the tile
    (a tile much smaller than a near car is not that car's box either:
    without these, a bumper or a door scores as a car beside the whole car's
    box, and a near car gets two boxes). ``aspect``: every positive is stretched horizontally by a
    factor drawn log-uniformly from this range (runtime tiles need not be
    square: a side-view car in a wide tile, resized to the square input, looks
    narrower than it is). Photometric noise on every sample.
    """

    plain_fraction: float = 0.25
    car_scale: tuple[float, float] = (0.5, 1.5)
    max_offset: float = 0.25
    two_cars: float = 0.15
    cut_car_fraction: float = 0.25
    cut_visible: tuple[float, float] = (0.1, 0.35)
    small_car_fraction: float = 0.0
    small_car_scale: tuple[float, float] = (0.12, 0.33)
    car_part_fraction: float = 0.0
    car_part_scale: tuple[float, float] = (0.3, 0.55)
    aspect: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.3
    contrast: float = 0.3
    blur: float = 0.3
    low_resolution: float = 0.2
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (35, 90)

    def __post_init__(self) -> None:
        for name in ("plain_fraction", "two_cars", "cut_car_fraction", "small_car_fraction", "car_part_fraction", "blur",
                     "low_resolution", "jpeg"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"tiles.{name} {value} is invalid: expected a probability in [0, 1]")
        negatives = self.cut_car_fraction + self.small_car_fraction + self.car_part_fraction
        if negatives > 1.0:
            raise ValueError(f"tiles.cut_car_fraction + tiles.small_car_fraction + tiles.car_part_fraction = "
                             f"{negatives:g} is invalid: expected <= 1")
        if not 0 < self.car_part_scale[0] <= self.car_part_scale[1] <= 1:
            raise ValueError(f"tiles.car_part_scale {self.car_part_scale} is invalid: expected 0 < low <= high <= 1")
        for name in ("car_scale", "cut_visible", "small_car_scale", "aspect", "jpeg_quality"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"tiles.{name} {(low, high)} is invalid: expected 0 < low <= high")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation.

    ``kind``: ``standard`` (horizontal flip and small random-resized crops),
    ``tiles`` (``training.synthesis``: crops made to look like runtime tiles,
    see ``TileAugmentConfig``; needs a binary run) or ``none``.
    """

    kind: str = "standard"
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    tiles: TileAugmentConfig = field(default_factory=TileAugmentConfig)

    def __post_init__(self) -> None:
        if self.kind not in AUGMENT_KINDS:
            raise ValueError(f"augment kind {self.kind!r} is unknown: expected one of {', '.join(AUGMENT_KINDS)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; written as ``config.yaml`` in the run folder.

    Data: ``data`` is an ImageFolder tree (one folder per class) or
    ``torchvision:CIFAR10`` / ``torchvision:STL10`` (downloaded into
    ``download_root``; needs internet). Binary (DisCNN) runs name a
    ``positive`` class and ``negatives``; multi-class runs name ``classes``
    (default: every class folder). Validation uses ``val_data`` when given,
    otherwise a seeded stratified ``val_fraction`` of the training images.
    """

    data: str = ""
    val_data: str | None = None
    val_fraction: float = 0.1
    positive: str | None = None
    negatives: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    max_per_class: int | None = None
    split: str = "random"
    extra_negatives: str | None = None
    extra_negative_classes: tuple[str, ...] = ()
    max_extra_per_class: int | None = None
    extra_positives: str | None = None
    extra_positive_classes: tuple[str, ...] = ()
    max_extra_positives_per_class: int | None = None
    data_terms: str | None = None
    download_root: str = "~/.cache/patchdet/datasets"

    arch: str = "discnn8"
    input_size: int = 96
    loss: str = "n2o"
    loss_options: dict[str, Any] = field(default_factory=dict)
    latent_dim: int | None = None

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    scheduler: str = "onecycle"
    seed: int = 0
    threshold: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    workers: int = 0
    threads: int | None = None
    out: str = "runs/train"
    resume: bool = False
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no training data given: expected --data DIR (an ImageFolder tree) or torchvision:CIFAR10")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError(f"epochs {self.epochs} and batch size {self.batch_size} must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} is invalid: expected 0 <= f < 1")
        if self.lr <= 0:
            raise ValueError(f"learning rate {self.lr} is invalid: expected > 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer {self.optimizer!r} is unknown: expected adamw or sgd")
        if self.scheduler not in ("onecycle", "cosine", "constant"):
            raise ValueError(f"scheduler {self.scheduler!r} is unknown: expected onecycle, cosine or constant")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp {self.amp!r} is unknown: expected auto, off, bf16 or fp16")
        if self.positive is not None and self.positive in self.negatives:
            raise ValueError(f"class {self.positive!r} is both the positive and a negative class")
        if self.max_per_class is not None and self.max_per_class < 1:  # 0 must not read as "unlimited"
            raise ValueError(f"max_per_class {self.max_per_class} is invalid: expected >= 1 (leave it out for all)")
        if not math.isfinite(self.threshold) or (self.loss.startswith("n2o") and self.threshold < 0):
            raise ValueError(f"threshold {self.threshold} is invalid: expected a finite number (>= 0 for n2o)")
        if self.split not in ("random", "blocks"):
            raise ValueError(f"split {self.split!r} is unknown: expected random or blocks")
        if self.extra_negatives and not self.extra_negative_classes:
            raise ValueError("extra_negatives needs extra_negative_classes: expected CLASS[,CLASS...]")
        if self.extra_positives and not self.extra_positive_classes:
            raise ValueError("extra_positives needs extra_positive_classes: expected CLASS[,CLASS...]")
        for name in ("max_extra_per_class", "max_extra_positives_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} is invalid: expected >= 1 (leave it out for all)")
        if self.extra_positives and self.positive is None:
            raise ValueError("extra_positives needs a binary run: expected --positive and --negatives")
        if self.augment.kind == "tiles" and (self.positive is None or not self.negatives) and not (
                BACKGROUND_CLASS in self.classes and self.classes[0] != BACKGROUND_CLASS):
            raise ValueError("augment kind 'tiles' needs a binary run (--positive and --negatives) or classes whose "
                             "first is the object and one is 'background' (e.g. --classes car,background)")
        if self.input_size <= 0:
            raise ValueError(f"input size {self.input_size} is invalid: expected a positive integer")
