"""Training crops that look like runtime tiles (``augment.kind: tiles``).

At run time ``patchdet detect`` cuts frames into a fixed grid of tiles, so a
car is seldom centred and full-size in its tile: it is off-centre, cut by the
tile border, 0.5-1.5x the tile, sometimes next to a second car, and a tile
next to a car holds a sliver of it. Datasets of centred car crops (the
vehicles set, CIFAR-10) teach none of that. ``TileSynthesis`` builds such
tiles per sample from an in-memory ``ImageSet``: class 0 is the positive
(car) class; samples of ``background_labels`` (road background crops) are
negatives and the canvas cars are pasted on; other negative classes (e.g.
CIFAR-10 extras) are used as they are. Geometry and photometric helpers are
pure numpy/OpenCV functions on uint8 HWC RGB arrays.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from patchdet.training.config import AugmentConfig, TileAugmentConfig
from patchdet.training.data import ImageSet


def feather_ramp(length: int, ramp: float = 0.12) -> np.ndarray:
    """float32 [length]: 1 inside, falling linearly to ~0 over ``ramp`` of the length at both ends."""
    width = max(1.0, ramp * length)
    return np.clip((np.minimum(np.arange(length), np.arange(length)[::-1]) + 0.5) / width, 0.0, 1.0).astype(np.float32)


def feather_mask(side: int | tuple[int, int], ramp: float = 0.12) -> np.ndarray:
    """float32 [height, width] alpha (``side`` or (width, height)): 1 inside, ~0 at every border."""
    width, height = (side, side) if isinstance(side, (int, np.integer)) else side
    return np.minimum.outer(feather_ramp(height, ramp), feather_ramp(width, ramp))


def paste(canvas: np.ndarray, patch: np.ndarray, center_xy: tuple[float, float],
          side: int | tuple[int, int]) -> np.ndarray:
    """Blend ``patch`` resized to ``side`` onto ``canvas`` centred at ``center_xy``; clipped at the borders.

    Args:
        canvas: uint8 [H, W, 3].
        patch: uint8 [h, w, 3] (any size).
        center_xy: centre of the pasted rectangle in canvas pixels (may lie outside the canvas).
        side: pasted side in pixels (> 0), or (width, height).

    Returns:
        A new uint8 [H, W, 3] array; ``canvas`` is not modified.
    """
    side_w, side_h = (side, side) if isinstance(side, (int, np.integer)) else (int(side[0]), int(side[1]))
    if side_w <= 0 or side_h <= 0:
        raise ValueError(f"paste side {side} is invalid: expected positive integers")
    out = canvas.copy()
    height, width = canvas.shape[:2]
    x0 = int(round(center_xy[0] - side_w / 2))
    y0 = int(round(center_xy[1] - side_h / 2))
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + side_w, width), min(y0 + side_h, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return out
    interpolation = cv2.INTER_AREA if side_w < patch.shape[1] else cv2.INTER_LINEAR
    resized = cv2.resize(patch, (side_w, side_h), interpolation=interpolation).astype(np.float32)
    alpha = feather_mask((side_w, side_h))[..., None]
    part = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    region = out[cy0:cy1, cx0:cx1].astype(np.float32)
    blended = alpha[part] * resized[part] + (1.0 - alpha[part]) * region
    out[cy0:cy1, cx0:cx1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def cut_car_center(tile_side: int, car_side: int, visible: float, border: int, along: float) -> tuple[float, float]:
    """Centre that leaves ``visible`` of a ``car_side`` car inside a ``tile_side`` tile across ``border``.

    Args:
        border: 0 left, 1 right, 2 top, 3 bottom: the tile border the car sticks out of.
        along: centre position along that border as a fraction of the tile side.
    """
    inside = visible * car_side
    outward = inside - car_side / 2  # centre coordinate for the left/top border
    across = {0: outward, 1: tile_side - outward, 2: outward, 3: tile_side - outward}[border]
    along_px = along * tile_side
    return (across, along_px) if border in (0, 1) else (along_px, across)


def stretched(side: int, aspect: float) -> tuple[int, int]:
    """(width, height) of a ``side`` square stretched horizontally by ``aspect`` at the same area."""
    root = float(np.sqrt(aspect))
    return max(2, int(round(side * root))), max(2, int(round(side / root)))


def stretch_crop(image: np.ndarray, aspect: float) -> np.ndarray:
    """``image`` (square) stretched horizontally by ``aspect``, cropped back to its own size, centred.

    A wide runtime tile resized to the square input shows its car narrower; the
    centre crop keeps the car's middle when it is widened.
    """
    side = image.shape[0]
    width, height = max(side, int(round(side * aspect))), max(side, int(round(side / aspect)))
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return np.ascontiguousarray(resized[y0:y0 + side, x0:x0 + side])


def random_crop(image: np.ndarray, rng: np.random.Generator, area: tuple[float, float], side: int) -> np.ndarray:
    """A random square crop covering ``area`` (fractions) of ``image``, resized to ``side``."""
    height, width = image.shape[:2]
    crop = int(round(min(height, width) * np.sqrt(rng.uniform(*area))))
    crop = max(2, min(crop, height, width))
    y, x = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    return cv2.resize(image[y:y + crop, x:x + crop], (side, side), interpolation=cv2.INTER_LINEAR)


def car_part(car: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]) -> np.ndarray:
    """A window of ``scale`` of a car crop's side, anywhere inside it, enlarged back to the crop's size."""
    side = car.shape[0]
    window = max(2, int(round(side * rng.uniform(*scale))))
    y, x = (int(v) for v in rng.integers(0, side - window + 1, 2))
    return cv2.resize(car[y:y + window, x:x + window], (side, side), interpolation=cv2.INTER_LINEAR)


def photometric(image: np.ndarray, rng: np.random.Generator, tiles: TileAugmentConfig) -> np.ndarray:
    """Brightness/contrast jitter, then maybe blur, low resolution and JPEG; uint8 HWC in and out."""
    out = image.astype(np.float32)
    contrast = 1.0 + rng.uniform(-tiles.contrast, tiles.contrast)
    brightness = rng.uniform(-tiles.brightness, tiles.brightness) * 100.0
    out = (out - out.mean()) * contrast + out.mean() + brightness
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    side_h, side_w = out.shape[:2]
    if rng.random() < tiles.blur:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.4, 1.3))
    if rng.random() < tiles.low_resolution:
        factor = rng.uniform(0.35, 0.8)
        small = cv2.resize(out, (max(2, int(side_w * factor)), max(2, int(side_h * factor))),
                           interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (side_w, side_h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < tiles.jpeg:
        quality = int(rng.integers(tiles.jpeg_quality[0], tiles.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(out)


class TileSynthesis(Dataset):
    """Tile-like samples from an ``ImageSet``; yields (uint8 [3, S, S], class index) like ``AugmentedImages``.

    Class 0 is the positive class. Labels stay as they are: a positive sample is
    always a tile that holds a car (centred enough), a negative one never holds
    more than a ``cut_visible`` sliver of one.
    """

    def __init__(self, image_set: ImageSet, augment: AugmentConfig, background_labels: tuple[int, ...]) -> None:
        height, width = image_set.images.shape[-2:]
        if height != width:
            raise ValueError(f"tile synthesis needs square images, got {width}x{height}")
        labels = image_set.labels.numpy()
        self.images = image_set.images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, S, S, 3] RGB
        self.labels = labels
        self.side = int(height)
        self.augment = augment
        self.tiles = augment.tiles
        self.cars = np.flatnonzero(labels == 0)
        self.backgrounds = np.flatnonzero(np.isin(labels, background_labels))
        if self.cars.size == 0 or self.backgrounds.size == 0:
            raise ValueError(f"tile synthesis needs positives (class 0) and background classes {background_labels}: "
                             f"got {self.cars.size} positives and {self.backgrounds.size} backgrounds")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # One draw from torch's global generator seeds numpy per sample: seeded runs repeat, workers differ.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        tile = self.sample(index, rng)
        return torch.from_numpy(tile.transpose(2, 0, 1).copy()), int(self.labels[index])

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        image = self.images[self.backgrounds[rng.integers(self.backgrounds.size)]]
        return random_crop(image, rng, (0.4, 1.0), self.side)

    def _car(self, rng: np.random.Generator) -> np.ndarray:
        return self.images[self.cars[rng.integers(self.cars.size)]]

    def sample(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The tile for sample ``index`` drawn with ``rng``: uint8 [S, S, 3] RGB."""
        tiles, side = self.tiles, self.side
        image = self.images[index]
        label = int(self.labels[index])
        if label == 0:
            aspect = float(np.exp(rng.uniform(*np.log(tiles.aspect))))
            if rng.random() < tiles.plain_fraction:
                tile = stretch_crop(random_crop(image, rng, (0.8, 1.0), side), aspect)
            else:
                tile = self._background(rng)
                if rng.random() < tiles.two_cars:
                    other = int(round(side * rng.uniform(*tiles.car_scale)))
                    tile = paste(tile, self._car(rng), tuple(rng.uniform(0.1, 0.9, 2) * side), stretched(other, aspect))
                car_side = int(round(side * rng.uniform(*tiles.car_scale)))
                center = side / 2 + rng.uniform(-tiles.max_offset, tiles.max_offset, 2) * side
                tile = paste(tile, image, tuple(center), stretched(car_side, aspect))
        elif index in self._background_set:
            tile = random_crop(image, rng, (0.4, 1.0), side)
            draw = rng.random()
            if draw < tiles.cut_car_fraction:
                car_side = int(round(side * rng.uniform(0.7, 1.3)))
                center = cut_car_center(side, car_side, rng.uniform(*tiles.cut_visible), int(rng.integers(4)),
                                        rng.uniform(0.2, 0.8))
                tile = paste(tile, self._car(rng), center, car_side)
            elif draw < tiles.cut_car_fraction + tiles.small_car_fraction:
                for _ in range(int(rng.integers(1, 4))):
                    car_side = max(2, int(round(side * rng.uniform(*tiles.small_car_scale))))
                    tile = paste(tile, self._car(rng), tuple(rng.uniform(0.15, 0.85, 2) * side), car_side)
            elif draw < tiles.cut_car_fraction + tiles.small_car_fraction + tiles.car_part_fraction:
                tile = car_part(self._car(rng), rng, tiles.car_part_scale)
        else:
            tile = image.copy()
        if self.augment.hflip and rng.random() < 0.5:
            tile = tile[:, ::-1]
        return photometric(tile, rng, tiles)

    @property
    def _background_set(self) -> set[int]:
        if not hasattr(self, "_background_cache"):
            self._background_cache = set(self.backgrounds.tolist())
        return self._background_cache


def synthesize_tiles(image_set: ImageSet, augment: AugmentConfig, background_labels: tuple[int, ...],
                     seed: int) -> ImageSet:
    """One fixed tile per sample of ``image_set`` (e.g. a held-out split), for validation on tile-like patches."""
    dataset = TileSynthesis(image_set, augment, background_labels)
    rng = np.random.default_rng(seed)
    tiles = np.stack([dataset.sample(i, rng) for i in range(len(dataset))])
    images = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2)))
    return ImageSet(images, image_set.labels.clone(), image_set.class_names, [], {})
