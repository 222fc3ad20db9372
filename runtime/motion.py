"""Motion-gated tile cache for fixed cameras (``patchdet detect --motion-gate``).

A fixed camera sees mostly the same pixels from frame to frame, so most tiles
would get the same score again. ``MotionGate`` keeps, per tile, a small grey
copy of the pixels it had when it was last scored; a tile is re-scored only
when the mean absolute difference to that copy passes ``threshold`` grey
levels, and every tile is re-scored every ``refresh_every`` frames (and when
the frame size changes). The other tiles reuse their cached model outputs, so
decisions, merging and sinks see a full frame as before.

``MotionGatedDetector`` wraps a ``Detector`` with the same stage methods
(``preprocess`` -> ``infer`` -> ``decide``) so ``runtime.loop.Pipeline`` runs
it unchanged: the gate picks tiles in ``preprocess`` (reader thread, frame
order) and the cache is filled in ``decide`` (writer thread, frame order).
Patch models only (a dense model scores the whole frame in one pass).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from patchdet.runtime.preprocess import Prepared, as_bgr, tiles_to_blob

# Grey copies are kept at 1/4 resolution: enough to see a car move, 16x less to compare.
DOWNSCALE = 4


class MotionGate:
    """Which tiles changed since they were last scored.

    Args:
        threshold: Mean absolute grey difference (0-255) over a tile that makes it re-scored.
        refresh_every: Re-score every tile every this many frames (bounds how stale a score can get).
    """

    def __init__(self, threshold: float = 3.0, refresh_every: int = 50) -> None:
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold < 255):
            raise ValueError(f"motion threshold {threshold!r} is invalid: expected grey levels in [0, 255)")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"motion refresh {refresh_every!r} is invalid: expected a positive number of frames")
        self.threshold, self.refresh_every = float(threshold), refresh_every
        self._references: list[np.ndarray] = []
        self._key: tuple | None = None
        self._since_refresh = 0

    def select(self, frame_bgr: np.ndarray, tiles_xyxy: np.ndarray) -> np.ndarray:
        """bool [N]: tiles to re-score in this frame (their references are updated now)."""
        h, w = frame_bgr.shape[:2]
        small = cv2.resize(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY), (max(1, w // DOWNSCALE),
                           max(1, h // DOWNSCALE)), interpolation=cv2.INTER_AREA)
        boxes = np.maximum(np.asarray(tiles_xyxy) // DOWNSCALE, 0)
        crops = [small[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] for x0, y0, x1, y1 in boxes.tolist()]
        key = ((w, h), len(crops))
        if key != self._key or self._since_refresh + 1 >= self.refresh_every:
            self._key, self._since_refresh = key, 0
            self._references = [c.copy() for c in crops]
            return np.ones(len(crops), bool)
        self._since_refresh += 1
        changed = np.zeros(len(crops), bool)
        for i, (crop, reference) in enumerate(zip(crops, self._references, strict=True)):
            if cv2.norm(crop, reference, cv2.NORM_L1) > self.threshold * crop.size:
                changed[i] = True
                self._references[i] = crop.copy()
        return changed


@dataclass
class GatedPrepared(Prepared):
    """A ``Prepared`` whose ``batch`` holds only the re-scored tiles (``rescored``: their indices)."""

    rescored: np.ndarray = None  # int64 [M]


class MotionGatedDetector:
    """A ``Detector`` that re-scores only changed tiles and reuses cached outputs for the rest.

    Args:
        detector: A patch (non-dense) ``runtime.detector.Detector``.
        gate: The ``MotionGate`` (default settings when None).
    """

    def __init__(self, detector: Any, gate: MotionGate | None = None) -> None:
        if detector.dense:
            raise ValueError("--motion-gate needs a patch model: a dense model scores the whole frame in one pass")
        self.detector, self.gate = detector, gate or MotionGate()
        self._cache: dict[str, np.ndarray] | None = None
        self.tiles_scored = 0
        self.tiles_seen = 0

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped detector's
        return getattr(self.detector, name)

    def preprocess(self, frame_bgr: np.ndarray) -> GatedPrepared:
        frame = as_bgr(frame_bgr)
        frame_wh = (frame.shape[1], frame.shape[0])
        tiles = self.detector.tiler.tiles_for(frame_wh)
        rescored = np.flatnonzero(self.gate.select(frame, tiles))
        card = self.detector.card
        batch = tiles_to_blob(frame, tiles[rescored], card.input_wh, self.detector.tiler.normalization) if \
            rescored.size else np.zeros((0, 3, card.input_wh[1], card.input_wh[0]), np.float32)
        return GatedPrepared(batch, tiles, frame_wh, rescored)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.detector.infer(batch) if len(batch) else {}

    def decide(self, outputs: dict[str, np.ndarray], prepared: GatedPrepared) -> Any:
        """Cached outputs with the re-scored tiles' new ones written in, then the detector's decisions."""
        count = len(prepared.tiles_xyxy)
        if self._cache is None or any(len(v) != count for v in self._cache.values()):
            if len(prepared.rescored) != count:
                raise ValueError("motion gate cache is empty but not every tile was scored")
            self._cache = {name: np.array(value, copy=True) for name, value in outputs.items()}
        else:
            for name, value in outputs.items():
                self._cache[name][prepared.rescored] = value
        self.tiles_scored += len(prepared.rescored)
        self.tiles_seen += count
        return self.detector.decide(self._cache, prepared)

    def __call__(self, frame_bgr: np.ndarray) -> Any:
        prepared = self.preprocess(frame_bgr)
        return self.decide(self.infer(prepared.batch), prepared)

    def describe(self) -> dict[str, Any]:
        return {**self.detector.describe(), "motion_gate": {"threshold": self.gate.threshold,
                                                             "refresh_every": self.gate.refresh_every}}


def gated_agreement(detector: Any, frames: list[np.ndarray], gate: MotionGate | None = None) -> dict[str, Any]:
    """Frames/s of the gated detector on ``frames`` and its decision agreement with scoring every tile.

    Agreement: the fraction of tile decisions (positive or not) equal to those of the ungated detector, over
    every tile of every frame. The first frame is always fully scored (it fills the cache).
    """
    gated = MotionGatedDetector(detector, gate)
    masks, start = [], time.perf_counter()
    for frame in frames:
        masks.append(gated(frame).positive_mask.copy())
    seconds = time.perf_counter() - start
    same = total = 0
    for frame, mask in zip(frames, masks, strict=True):
        full = detector(frame).positive_mask
        same += int(np.sum(full == mask))
        total += len(full)
    return {"fps": round(len(frames) / seconds, 2), "agreement": round(same / max(total, 1), 5),
            "rescored_fraction": round(gated.tiles_scored / max(gated.tiles_seen, 1), 4),
            "threshold": gated.gate.threshold, "refresh_every": gated.gate.refresh_every, "frames": len(frames)}
