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

A dense model (``DenseMotionGatedDetector``) has no tiles to pick: its windows
are the cells of one score map over the mosaic canvas. The gate then compares
the frame with its reference in blocks of ``BLOCK_PX`` pixels
(``MotionGate.changed_blocks``); every window that overlaps a changed block is
stale. Per mosaic level, the stale windows are grouped into rectangles
(connected regions), each cut from the canvas with one stride of real pixels
around it as context, packed into a canvas as wide as the mosaic and a few
eighths of its height (``runtime.tiling.skyline_pack``) and scored in one
call; the windows of each rectangle are written into the cached score map.
When the cuts need most of the mosaic, the whole mosaic is scored instead.
``gate_detector`` picks the wrapper for a detector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from patchdet.runtime.preprocess import Prepared, as_bgr, tiles_to_blob
from patchdet.runtime.tiling import skyline_pack

# Grey copies are kept at 1/4 resolution: enough to see a car move, 16x less to compare.
DOWNSCALE = 4
# Dense models: change is measured in blocks of 8x8 grey pixels (32x32 frame pixels) ...
BLOCK_PX = 8 * DOWNSCALE
# ... stale windows closer than this many cells are re-scored as one rectangle (fewer, larger cuts: each cut
# costs a window's overlap around it) ...
JOIN_CELLS = 1
# ... packed into a canvas as wide as the whole mosaic and a whole number of eighths of its height (so the
# engine meets at most a few input shapes, each planned once); when the cuts need more than MAX_SHARE of the
# mosaic's height, the whole mosaic is scored instead (no gain left, and its shape is warmed up).
HEIGHT_STEPS = 8
MAX_SHARE = 0.75

# Defaults of every motion gate (``patchdet detect --motion-gate``, serve's ``motion_gate``): the mean grey-level
# change of a block that makes its tiles stale, and how many frames pass before everything is scored again.
MOTION_THRESHOLD = 3.0
MOTION_REFRESH = 50


class MotionGate:
    """Which tiles changed since they were last scored.

    Args:
        threshold: Mean absolute grey difference (0-255) over a tile that makes it re-scored.
        refresh_every: Re-score every tile every this many frames (bounds how stale a score can get).
    """

    def __init__(self, threshold: float = MOTION_THRESHOLD, refresh_every: int = MOTION_REFRESH) -> None:
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold < 255):
            raise ValueError(f"motion threshold {threshold!r} is invalid: expected grey levels in [0, 255)")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"motion refresh {refresh_every!r} is invalid: expected a positive number of frames")
        self.threshold, self.refresh_every = float(threshold), refresh_every
        self._references: list[np.ndarray] = []
        self._key: tuple | None = None
        self._since_refresh = 0
        self._block_reference: np.ndarray | None = None
        self._block_area: np.ndarray | None = None

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


    def changed_blocks(self, frame_bgr: np.ndarray) -> np.ndarray | None:
        """bool [rows, cols] of ``BLOCK_PX`` frame-pixel blocks whose mean grey change passes the threshold, or
        None when everything is to be scored (first frame, new frame size, refresh). Each block's reference is
        updated when it changes, so a window whose blocks all stayed put saw at most twice the threshold."""
        h, w = frame_bgr.shape[:2]
        small = cv2.resize(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY), (max(1, w // DOWNSCALE),
                           max(1, h // DOWNSCALE)), interpolation=cv2.INTER_AREA)
        side = BLOCK_PX // DOWNSCALE
        rows, cols = -(-small.shape[0] // side), -(-small.shape[1] // side)
        padded = np.zeros((rows * side, cols * side), np.uint8)
        padded[:small.shape[0], :small.shape[1]] = small
        key = ((w, h), "blocks")
        if key != self._key or self._since_refresh + 1 >= self.refresh_every or self._block_reference is None:
            self._key, self._since_refresh, self._block_reference = key, 0, padded
            # each block's frame pixels (edge blocks are partly padding, which holds no change)
            inside = np.zeros((rows * side, cols * side), np.float32)
            inside[:small.shape[0], :small.shape[1]] = 1.0
            self._block_area = np.maximum(inside.reshape(rows, side, cols, side).sum(axis=(1, 3)), 1.0)
            return None
        self._since_refresh += 1
        diff = cv2.absdiff(padded, self._block_reference).reshape(rows, side, cols, side)
        changed = diff.sum(axis=(1, 3), dtype=np.float64) > self.threshold * self._block_area
        if changed.any():
            expand = np.repeat(np.repeat(changed, side, axis=0), side, axis=1)
            np.copyto(self._block_reference, padded, where=expand)
        return changed


def windows_touching(blocks: np.ndarray, windows_xyxy: np.ndarray, block_px: int = BLOCK_PX) -> np.ndarray:
    """bool [N]: windows (frame-pixel boxes, empty ones never) that overlap a True block of ``blocks``."""
    boxes = np.asarray(windows_xyxy, dtype=np.int64)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    rows, cols = blocks.shape
    x0 = np.clip(boxes[:, 0] // block_px, 0, cols - 1)
    y0 = np.clip(boxes[:, 1] // block_px, 0, rows - 1)
    x1 = np.clip((boxes[:, 2] - 1) // block_px, 0, cols - 1) + 1
    y1 = np.clip((boxes[:, 3] - 1) // block_px, 0, rows - 1) + 1
    table = cv2.integral(blocks.astype(np.uint8))  # int32 [rows + 1, cols + 1]
    count = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return valid & (count > 0)


@dataclass
class GatedPrepared(Prepared):
    """A ``Prepared`` whose ``batch`` holds only the re-scored tiles (``rescored``: their indices)."""

    rescored: np.ndarray = None  # int64 [M]


class _GatedDetector:
    """What both gated wrappers share: the wrapped detector, the gate, the output cache and its counters."""

    def __init__(self, detector: Any, gate: MotionGate | None = None) -> None:
        self.detector, self.gate = detector, gate or MotionGate()
        self._cache: dict[str, np.ndarray] | None = None
        self.tiles_scored = 0  # tiles (dense: windows) scored again
        self.tiles_seen = 0

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped detector's
        return getattr(self.detector, name)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.detector.infer(batch) if len(batch) else {}

    def __call__(self, frame_bgr: np.ndarray) -> Any:
        prepared = self.preprocess(frame_bgr)
        return self.decide(self.infer(prepared.batch), prepared)

    def describe(self) -> dict[str, Any]:
        return {**self.detector.describe(), "motion_gate": {"threshold": self.gate.threshold,
                                                             "refresh_every": self.gate.refresh_every}}


class MotionGatedDetector(_GatedDetector):
    """A ``Detector`` that re-scores only changed tiles and reuses cached outputs for the rest.

    Args:
        detector: A patch (non-dense) ``runtime.detector.Detector``.
        gate: The ``MotionGate`` (default settings when None).
    """

    def __init__(self, detector: Any, gate: MotionGate | None = None) -> None:
        if detector.dense:
            raise ValueError("MotionGatedDetector needs a patch model: use DenseMotionGatedDetector (gate_detector)")
        super().__init__(detector, gate)

    def preprocess(self, frame_bgr: np.ndarray) -> GatedPrepared:
        frame = as_bgr(frame_bgr)
        frame_wh = (frame.shape[1], frame.shape[0])
        tiles = self.detector.tiler.tiles_for(frame_wh)
        rescored = np.flatnonzero(self.gate.select(frame, tiles))
        card = self.detector.card
        batch = tiles_to_blob(frame, tiles[rescored], card.input_wh, self.detector.tiler.normalization) if \
            rescored.size else np.zeros((0, 3, card.input_wh[1], card.input_wh[0]), np.float32)
        return GatedPrepared(batch, tiles, frame_wh, rescored)

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


@dataclass
class DensePrepared(Prepared):
    """A dense frame for the gate: ``batch`` is the whole canvas (``regions`` None) or the small canvas of cuts.

    Attributes:
        regions: int64 [M, 6] per cut: score-map row and column of its first stale window, rows and columns
            of stale windows, and the row and column of that first window in the small canvas's score map.
        cells: Windows the cuts re-score.
    """

    regions: np.ndarray | None = None
    cells: int = 0


def stale_rectangles(stale: np.ndarray, join_cells: int = JOIN_CELLS) -> list[tuple[int, int, int, int]]:
    """(row, col, rows, cols) rectangles that cover the True cells of a mask; cells closer than ``join_cells``
    share one rectangle (connected regions of the mask dilated by that much, then clipped back to the mask's
    own extent)."""
    mask = stale.astype(np.uint8)
    if join_cells > 0:
        mask = cv2.dilate(mask, np.ones((2 * join_cells + 1, 2 * join_cells + 1), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rectangles = []
    for x, y, w, h, _ in stats[1:count].tolist():
        inside = np.argwhere(stale[y:y + h, x:x + w])
        if len(inside):
            (r0, c0), (r1, c1) = inside.min(axis=0), inside.max(axis=0)
            rectangles.append((y + int(r0), x + int(c0), int(r1 - r0) + 1, int(c1 - c0) + 1))
    return rectangles


@dataclass(frozen=True)
class Cut:
    """Stale windows of one mosaic level, cut from the canvas with up to one stride of context around them.

    Attributes:
        map_rc: Score-map row and column of the first stale window.
        cells_hw: Stale windows down and across.
        context_tl: Strides of context above and left of them (0 at the level's edge).
        canvas_yx: Top-left of the cut in the mosaic canvas (context included), pixels.
        size_hw: The cut's size in pixels (context included).
    """

    map_rc: tuple[int, int]
    cells_hw: tuple[int, int]
    context_tl: tuple[int, int]
    canvas_yx: tuple[int, int]
    size_hw: tuple[int, int]


class DenseMotionGatedDetector(_GatedDetector):
    """A dense ``Detector`` that re-scores only the windows of its canvas that saw motion.

    Args:
        detector: A dense ``runtime.detector.Detector`` (its mosaic canvas is one score map).
        gate: The ``MotionGate`` (default settings when None).
    """

    def __init__(self, detector: Any, gate: MotionGate | None = None) -> None:
        if not detector.dense:
            raise ValueError("DenseMotionGatedDetector needs a dense model: use MotionGatedDetector (gate_detector)")
        super().__init__(detector, gate)
        self.stride = int(detector.card.dense_stride)
        self.window_wh = tuple(int(v) for v in detector.card.input_wh)
        self._maps: dict[tuple[int, int], tuple[tuple[int, int], list[tuple[int, int, int, int]]]] = {}

    def score_map(self, frame_wh: tuple[int, int]) -> tuple[tuple[int, int], list[tuple[int, int, int, int]]]:
        """The score map's (rows, cols) for a frame size and each level's window cells (row, col, rows, cols)."""
        known = self._maps.get(frame_wh)
        if known is None:
            layout = self.detector.tiler.layout_for(frame_wh)
            (win_w, win_h), s = self.window_wh, self.stride
            map_hw = ((layout.canvas_wh[1] - win_h) // s + 1, (layout.canvas_wh[0] - win_w) // s + 1)
            levels = [(level.offset_xy[1] // s, level.offset_xy[0] // s, (level.padded_wh[1] - win_h) // s + 1,
                       (level.padded_wh[0] - win_w) // s + 1) for level in layout.levels]
            known = self._maps[frame_wh] = (map_hw, levels)
        return known

    def preprocess(self, frame_bgr: np.ndarray) -> DensePrepared:
        frame = as_bgr(frame_bgr)
        frame_wh = (frame.shape[1], frame.shape[0])
        blocks = self.gate.changed_blocks(frame)
        map_hw, levels = self.score_map(frame_wh)
        if blocks is None:
            canvas = self.detector.preprocess(frame)
            return DensePrepared(canvas.batch, canvas.tiles_xyxy, frame_wh, None, map_hw[0] * map_hw[1])
        windows = self.detector.tiler.dense_boxes_for(map_hw, frame_wh)
        stale = windows_touching(blocks, windows).reshape(map_hw)
        cuts: list[Cut] = []
        (win_w, win_h), s = self.window_wh, self.stride
        for row0, col0, rows, cols in levels:
            for r, c, h, w in stale_rectangles(stale[row0:row0 + rows, col0:col0 + cols], JOIN_CELLS):
                # one stride of the level's own pixels around the cut, where the level has them
                top, left = min(1, r), min(1, c)
                bottom, right = min(1, rows - r - h), min(1, cols - c - w)
                cuts.append(Cut((row0 + r, col0 + c), (h, w), (top, left), ((row0 + r - top) * s, (col0 + c - left) * s),
                                ((h + top + bottom - 1) * s + win_h, (w + left + right - 1) * s + win_w)))
        if not cuts:  # nothing moved: no canvas to build, no engine call
            empty = np.zeros((0, 3, win_h, win_w), np.float32)
            return DensePrepared(empty, np.zeros((0, 4), np.int32), frame_wh, np.zeros((0, 6), np.int64), 0)
        canvas = self.detector.preprocess(frame)
        full_h, full_w = canvas.batch.shape[2:]
        # a stride of gutter right of and below each cut, so no window sees another cut
        offsets = skyline_pack([(cut.size_hw[1] + s, cut.size_hw[0] + s) for cut in cuts], full_w + s)
        used_h = max(oy + cut.size_hw[0] for cut, (_, oy) in zip(cuts, offsets, strict=True))
        step_h = -(-full_h // (HEIGHT_STEPS * s)) * s
        small_h, small_w = -(-used_h // step_h) * step_h, full_w
        if small_h > MAX_SHARE * full_h:  # cutting buys nothing: score the whole mosaic
            return DensePrepared(canvas.batch, canvas.tiles_xyxy, frame_wh, None, map_hw[0] * map_hw[1])
        batch = np.zeros((1, canvas.batch.shape[1], small_h, small_w), np.float32)
        regions = np.zeros((len(cuts), 6), np.int64)
        for n, (cut, (ox, oy)) in enumerate(zip(cuts, offsets, strict=True)):
            (y, x), (ch, cw), (top, left) = cut.canvas_yx, cut.size_hw, cut.context_tl
            batch[0, :, oy:oy + ch, ox:ox + cw] = canvas.batch[0, :, y:y + ch, x:x + cw]
            regions[n] = (*cut.map_rc, *cut.cells_hw, oy // s + top, ox // s + left)
        if self.detector.pool is not None:
            self.detector.pool.give(canvas.batch)
        cells = int((regions[:, 2] * regions[:, 3]).sum())
        return DensePrepared(batch, canvas.tiles_xyxy, frame_wh, regions, cells)

    def decide(self, outputs: dict[str, np.ndarray], prepared: DensePrepared) -> Any:
        """The cached score map with the re-scored windows written in, then the detector's decisions."""
        map_hw, _ = self.score_map(prepared.frame_wh)
        if prepared.regions is None:  # the whole mosaic was scored
            self._cache = {name: np.array(value, copy=True) for name, value in outputs.items()}
        elif self._cache is None or tuple(self._cache["score"].shape[-2:]) != map_hw:
            raise ValueError("motion gate cache is empty but not every window was scored")
        else:
            for map_r, map_c, h, w, small_r, small_c in prepared.regions.tolist():
                for name, value in outputs.items():
                    self._cache[name][0, ..., map_r:map_r + h, map_c:map_c + w] = \
                        value[0, ..., small_r:small_r + h, small_c:small_c + w]
        self.tiles_scored += prepared.cells
        self.tiles_seen += map_hw[0] * map_hw[1]
        return self.detector.decide(self._cache, prepared)


def gate_detector(detector: Any, gate: MotionGate | None = None) -> MotionGatedDetector | DenseMotionGatedDetector:
    """The motion-gated wrapper for a detector: per tile for a patch model, per canvas piece for a dense one."""
    return DenseMotionGatedDetector(detector, gate) if detector.dense else MotionGatedDetector(detector, gate)


def gated_agreement(detector: Any, frames: list[np.ndarray], gate: MotionGate | None = None) -> dict[str, Any]:
    """Frames/s of the gated detector on ``frames`` and its decision agreement with scoring every tile.

    Agreement: the fraction of tile decisions (positive or not) equal to those of the ungated detector, over
    every tile of every frame. The first frame is always fully scored (it fills the cache).
    """
    gated = gate_detector(detector, gate)
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
