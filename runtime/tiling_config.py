"""``TilingConfig``: how frames are cut into patches and positive patches become boxes; the model card's defaults.

The geometry itself is pure numpy in ``runtime.tiling``; this module holds the settings and where their defaults
come from (``tiling_for_card``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchdet.runtime.detections import MERGE_METHODS
from patchdet.runtime.tiling import as_wh, multiscale_grid, perspective_grid


@dataclass(frozen=True)
class TilingConfig:
    """How frames are cut into patches and how positive patches become boxes.

    Attributes:
        tile_wh: Tile size in frame pixels at scale 1 (resized to the model input).
        stride_wh: Step between tiles at scale 1; smaller than the tile = overlap.
        scales: Scale factors (see ``multiscale_grid``; 0.5 = tiles twice as large).
        dense: Score every window of the dense export's stride in one pass;
            needs an artifact exported with ``dense=True``. The frame is resized
            by ``input_wh * scale / tile_wh`` per axis so windows are ``tile_wh / scale``
            frame pixels, and all scales are packed into one canvas (``runtime.tiling.mosaic_layout``);
            ``stride_wh`` does not apply (windows step by the card's
            ``dense_stride`` in model pixels, a quarter of a 64 px window).
        merge: ``connected``, ``nms``, ``fuse`` or ``none`` (``runtime.detections.merge_boxes``).
        iou_threshold: IoU above which ``nms`` suppresses a box.
        perspective: ``(a, b)``: tiles of side ``a + b * y`` frame pixels instead of a fixed tile size
            (``perspective_grid``; fitted to a fixed camera by ``patchdet calibrate --video``); the step is
            ``stride_wh / tile_wh`` of each row's tile, and ``scales`` multiply the side.
        reference_height: Frame height the tile sizes are meant for: a taller frame gets tiles larger by
            ``frame height / reference_height`` (the same tiles as that frame downscaled to this height), so a
            1080p camera costs what a 360p one does and sees the same share of its picture. ``None``: tile
            sizes are frame pixels at every resolution. Not applied to a fitted ``perspective`` (that is in the
            camera's own pixels already).
    """

    tile_wh: tuple[int, int] = (96, 96)
    stride_wh: tuple[int, int] = (96, 96)
    scales: tuple[float, ...] = (1.0,)
    dense: bool = False
    merge: str = "connected"
    iou_threshold: float = 0.3
    perspective: tuple[float, float] | None = None
    reference_height: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile_wh", as_wh(self.tile_wh, "tile size"))
        object.__setattr__(self, "stride_wh", as_wh(self.stride_wh, "stride"))
        scales = tuple(self.scales) if not isinstance(self.scales, (int, float)) else (self.scales,)
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise ValueError(f"scale {s!r} is invalid: expected a positive finite number")
        if not scales:
            raise ValueError("scales () is invalid: expected at least one positive scale")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"merge method {self.merge!r} is unknown: expected one of {', '.join(MERGE_METHODS)}")
        if not 0.0 <= float(self.iou_threshold) <= 1.0:
            raise ValueError(f"IoU threshold {self.iou_threshold!r} is invalid: expected a number in [0, 1]")
        if self.perspective is not None:
            values = tuple(float(v) for v in self.perspective)
            if len(values) != 2 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"perspective {self.perspective!r} is invalid: expected two finite numbers (a, b)")
            if self.dense:
                raise ValueError("perspective tiling is invalid in dense mode: expected a patch model")
            object.__setattr__(self, "perspective", values)
        if self.reference_height is not None and (isinstance(self.reference_height, bool) or not isinstance(
                self.reference_height, (int, np.integer)) or self.reference_height <= 0):
            raise ValueError(f"reference height {self.reference_height!r} is invalid: expected a positive integer")

    def scales_for(self, frame_wh: Sequence[int]) -> tuple[float, ...]:
        """The scales a frame of this size is tiled at: ``scales`` shrunk for frames taller than ``reference_height``."""
        if self.reference_height is None or self.perspective is not None or frame_wh[1] <= self.reference_height:
            return self.scales
        factor = self.reference_height / float(frame_wh[1])
        return tuple(s * factor for s in self.scales)

    def grid(self, frame_wh: Sequence[int]) -> np.ndarray:
        """int32 [N, 4] tile boxes of a frame (``multiscale_grid``, or ``perspective_grid`` at every scale)."""
        if self.perspective is None:
            return multiscale_grid(frame_wh, self.tile_wh, self.stride_wh, self.scales_for(frame_wh))
        a, b = self.perspective
        fraction = self.stride_wh[0] / self.tile_wh[0]
        return np.concatenate([perspective_grid(frame_wh, (a / s, b / s), fraction) for s in self.scales])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (lists for tuples), the form model cards and summaries store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def tiling_for_card(card: Any, tile: int | None = None, stride: int | None = None,
                    scales: Sequence[float] | None = None, dense: bool = False, merge: str | None = None
                    ) -> TilingConfig:
    """The tiling a model should run with: the card's own defaults, each overridable.

    A card's ``tiling`` (keys of ``TilingConfig``) holds what suits the model;
    a card without it gets tiles of the model's input size without overlap.
    ``tile`` without ``stride`` means no overlap at that tile size. ``None``
    means "not given" everywhere.
    """
    base: Mapping[str, Any] = dict(getattr(card, "tiling", None) or {})
    unknown = sorted(set(base) - {f.name for f in dataclasses.fields(TilingConfig)})
    if unknown:
        raise ValueError(f"model card tiling key(s) {', '.join(unknown)} are unknown: expected keys of TilingConfig")
    settings = {**base, "dense": bool(dense)}
    if "tile_wh" not in settings:
        settings["tile_wh"] = tuple(card.input_wh)
    if tile is not None:
        settings["tile_wh"] = (tile, tile)
        settings["stride_wh"] = (stride or tile, stride or tile)
    elif stride is not None:
        settings["stride_wh"] = (stride, stride)
    settings.setdefault("stride_wh", settings["tile_wh"])
    if scales is not None:
        settings["scales"] = tuple(scales)
    if merge is not None:
        settings["merge"] = merge
    if tile is not None or stride is not None:  # fixed tiles asked for: a fitted perspective no longer applies
        settings.pop("perspective", None)
    for key in ("tile_wh", "stride_wh", "scales", "perspective"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    return TilingConfig(**settings)
