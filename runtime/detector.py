"""The detector: frame -> tiles -> one batched inference -> decisions -> object boxes. No torch.

Decisions by head kind are in ``runtime.decisions`` (modulus threshold; POD
per-class cosine thresholds with the norm gate; softmax).

Thresholds: ``threshold`` may be one number, the name of one of the card's
operating points (``card.thresholds``, e.g. ``"paper"``), or a dict class
name -> number. Classes without an explicit value use the card's
``thresholds["class:NAME"]`` when present, else the card's ``threshold``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.artifact import read_artifact_card
from patchdet.runtime.backends import load_backend
from patchdet.runtime.card import ModelCard, read_card
from patchdet.runtime.decisions import DecisionRule, decide_tiles
from patchdet.runtime.detections import MERGE_METHODS, Detections, merge_boxes
from patchdet.runtime.preprocess import BufferPool, Normalization, as_bgr, frame_to_blob, tiles_to_blob
from patchdet.runtime.tiling import as_wh, coverage_max, dense_coverage_max, dense_window_boxes, multiscale_grid

logger = logging.getLogger(__name__)

__all__ = ["Detector", "FrameResult", "Prepared", "TilingConfig", "read_artifact_card", "validate_threshold"]

CLASS_THRESHOLD_PREFIX = "class:"
# Backend calls before the first real frame (see Detector.warmup).
WARMUP_CALLS = 2


@dataclass(frozen=True)
class TilingConfig:
    """How frames are cut into patches and how positive patches become boxes.

    Attributes:
        tile_wh: Tile size in frame pixels at scale 1 (resized to the model input).
        stride_wh: Step between tiles at scale 1; smaller than the tile = overlap.
        scales: Scale factors (see ``runtime.tiling.multiscale_grid``).
        dense: Score every window of the dense export's stride in one pass;
            needs an artifact exported with ``dense=True``. The frame is resized
            by ``input_wh / tile_wh`` so windows are ``tile_wh`` frame pixels;
            ``stride_wh`` does not apply (windows step by the card's
            ``dense_stride`` in model pixels).
        merge: ``connected``, ``nms`` or ``none`` (``runtime.detections.merge_boxes``).
        iou_threshold: IoU above which ``nms`` suppresses a box.
    """

    tile_wh: tuple[int, int] = (96, 96)
    stride_wh: tuple[int, int] = (96, 96)
    scales: tuple[float, ...] = (1.0,)
    dense: bool = False
    merge: str = "connected"
    iou_threshold: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile_wh", as_wh(self.tile_wh, "tile size"))
        object.__setattr__(self, "stride_wh", as_wh(self.stride_wh, "stride"))
        scales = tuple(self.scales) if not isinstance(self.scales, (int, float)) else (self.scales,)
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise ValueError(f"scale {s!r} is invalid: expected a positive finite number")
        if not scales:
            raise ValueError("scales () is invalid: expected at least one positive scale")
        if self.dense and len(scales) != 1:
            raise ValueError(f"scales {scales} are invalid in dense mode: expected one scale")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if self.merge not in MERGE_METHODS:
            raise ValueError(f"merge method {self.merge!r} is unknown: expected one of {', '.join(MERGE_METHODS)}")
        if not 0.0 <= float(self.iou_threshold) <= 1.0:
            raise ValueError(f"IoU threshold {self.iou_threshold!r} is invalid: expected a number in [0, 1]")


@dataclass
class Prepared:
    """One frame ready for inference.

    Attributes:
        batch: float32 [N, 3, H, W] tiles (or [1, 3, Hp, Wp] the padded frame, dense).
        tiles_xyxy: int32 [N, 4] tile boxes in frame pixels (dense: empty; the
            window boxes follow from the score map in ``decide``).
        frame_wh: (width, height) of the frame.
        dense_scale: Frame resize factor of dense mode (model pixels per frame pixel).
    """

    batch: np.ndarray
    tiles_xyxy: np.ndarray
    frame_wh: tuple[int, int]
    dense_scale: float | None = None


@dataclass
class FrameResult:
    """Everything decided about one frame.

    Attributes:
        detections: Merged object boxes.
        tile_scores: float32 [N] score of every tile (or dense window).
        tile_xyxy: int32 [N, 4] boxes of every tile in frame pixels.
        positive_mask: bool [N] tiles that passed the decision.
        tile_class_id: int64 [N] predicted class of every tile.
        frame_wh: (width, height) of the frame.
        heatmap: float32 [H, W] per-pixel max tile score, filled by ``Detector.heatmap``.
        dense_map_hw: (rows, cols) of the dense score map, else None.
    """

    detections: Detections
    tile_scores: np.ndarray
    tile_xyxy: np.ndarray
    positive_mask: np.ndarray
    tile_class_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    frame_wh: tuple[int, int] = (0, 0)
    heatmap: np.ndarray | None = None
    dense_map_hw: tuple[int, int] | None = None

    @property
    def positive_tiles(self) -> Detections:
        """Positive tiles before merging."""
        idx = np.flatnonzero(self.positive_mask)
        return Detections(self.tile_xyxy[idx], self.tile_scores[idx], self.tile_class_id[idx], idx)


def validate_threshold(value: Any, what: str = "threshold") -> float:
    """A finite float from a number or a numeric string; ValueError otherwise."""
    try:
        number = float(value)
        if isinstance(value, bool):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is invalid: expected a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is invalid: expected a finite number")
    return number


class Detector:
    """Score every patch of a frame with an exported model and decide what is there.

    Args:
        artifact: Model file (``.onnx``, ``.xml``, ``.engine``) with its card.
        backend: ``auto`` or a name from ``runtime.backends.list_backends()``.
        threshold: Decision threshold: a number, a card operating point name, or a
            dict class name -> number; None: the card's.
        tiling: Tiling and merging settings.
        threads: CPU threads for inference (None: the backend's default).
        norm_gate: Latent norm below which a cosine head says background (None: the card's).
        card: A card to use instead of the artifact's own (e.g. a calibrated copy).
        backend_options: Extra backend settings (``runtime.backends.load_backend``).
        max_batch: Most tiles per backend call; a frame with more tiles is scored in
            several calls of at most this many (None: always one call). It bounds
            memory: ONNX Runtime needs about 3 MB of activations per 96x96 DisCNN
            tile, so 1080p at stride 48 (858 tiles) in one call grew the process by
            2.6 GB, at about the same speed as calls of 256
            (``benchmarks/results/runtime_backends.md``).
        reuse_buffers: Recycle batch memory: :meth:`infer` hands a batch made by
            :meth:`preprocess` back to a pool once the backend is done with it, and
            a later :meth:`preprocess` may overwrite it. Copy ``prepared.batch``
            before ``infer`` if you need it afterwards, or pass False.
    """

    def __init__(
        self,
        artifact: str | Path,
        backend: str = "auto",
        threshold: float | str | Mapping[str, float] | None = None,
        tiling: TilingConfig = TilingConfig(),
        threads: int | None = None,
        norm_gate: float | None = None,
        card: ModelCard | str | Path | None = None,
        backend_options: Mapping[str, Any] | None = None,
        max_batch: int | None = 256,
        reuse_buffers: bool = True,
    ) -> None:
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0):
            raise ValueError(f"max_batch {max_batch!r} is invalid: expected a positive integer or None")
        self.max_batch = max_batch
        self.artifact = Path(artifact)
        self.pool = BufferPool() if reuse_buffers else None
        if card is None:
            card = read_artifact_card(self.artifact)
        elif not isinstance(card, ModelCard):
            card = read_card(card)
        self.card: ModelCard = card
        if tiling.dense and not card.dense:
            raise ValueError(
                f"dense mode needs a dense export, but {self.artifact.name!r} is a patch model: "
                "export with --dense or run without --dense"
            )
        self.tiling = tiling
        self.dense = card.dense
        names = card.class_names
        self.background_id = names.index(card.background_class) if card.background_class in names else -1
        self.class_thresholds = self._class_thresholds(threshold)
        self.threshold = float(self.class_thresholds[self._main_class()])
        self.norm_gate = validate_threshold(card.norm_gate if norm_gate is None else norm_gate, "norm gate")
        self.normalization = Normalization(card.mean, card.std, swap_rb=card.color_order.upper() == "RGB")
        self.backend = load_backend(self.artifact, backend, threads, **dict(backend_options or {}))
        self.backend_name: str = self.backend.name
        self._grid_cache: dict[tuple, np.ndarray] = {}
        if self.dense:
            (window_w, window_h), (tile_w, tile_h) = card.input_wh, tiling.tile_wh
            if window_w * tile_h != window_h * tile_w:
                raise ValueError(f"tile size {tile_w}x{tile_h} is invalid in dense mode: expected the model's aspect "
                                 f"ratio ({window_w}x{window_h})")
            self.dense_scale = window_w / tile_w * tiling.scales[0]
            logger.info("dense mode: windows of %s px every %.1f frame px", tiling.tile_wh,
                        card.dense_stride / self.dense_scale)

    @classmethod
    def from_card(cls, card: ModelCard | str | Path, artifact: str | Path, **kwargs: Any) -> Detector:
        """A detector for ``artifact`` using ``card`` (a ModelCard or a card JSON path) instead of its own."""
        return cls(artifact, card=card, **kwargs)

    # -- thresholds ---------------------------------------------------------
    def _main_class(self) -> int:
        """The class whose threshold is reported as ``threshold``: the positive class, else the first non-background."""
        names = self.card.class_names
        if self.card.positive_class in names:
            return names.index(self.card.positive_class)
        return next((i for i in range(len(names)) if i != self.background_id), 0)

    def _class_thresholds(self, threshold: float | str | Mapping[str, float] | None) -> np.ndarray:
        card = self.card
        default = validate_threshold(card.threshold, "model card threshold")
        per_class = {}
        for name in card.class_names:
            key = CLASS_THRESHOLD_PREFIX + name
            per_class[name] = validate_threshold(card.thresholds[key], f"model card threshold {key}") \
                if key in card.thresholds else default
        if isinstance(threshold, Mapping):
            unknown = [k for k in threshold if k not in card.class_names]
            if unknown:
                raise ValueError(f"threshold for class {unknown[0]!r} is invalid: expected one of "
                                 f"{', '.join(card.class_names)}")
            per_class.update({k: validate_threshold(v, f"threshold for {k}") for k, v in threshold.items()})
        elif isinstance(threshold, str) and threshold in card.thresholds:  # a named operating point, e.g. "paper"
            value = validate_threshold(card.thresholds[threshold], f"model card threshold {threshold}")
            per_class = dict.fromkeys(per_class, value)
        elif threshold is not None:
            named = [k for k in card.thresholds if not k.startswith(CLASS_THRESHOLD_PREFIX)]
            try:
                value = validate_threshold(threshold)
            except ValueError:
                if isinstance(threshold, str) and named:
                    raise ValueError(f"threshold {threshold!r} is invalid: expected a finite number or one of the "
                                     f"model card's operating points ({', '.join(named)})") from None
                raise
            per_class = dict.fromkeys(per_class, value)
        return np.array([per_class[n] for n in card.class_names], dtype=np.float32)

    def with_threshold(self, threshold: float | str | Mapping[str, float]) -> None:
        """Change the decision threshold(s) in place (validated)."""
        self.class_thresholds = self._class_thresholds(threshold)
        self.threshold = float(self.class_thresholds[self._main_class()])

    # -- stages ---------------------------------------------------------------
    def tiles_for(self, frame_wh: tuple[int, int]) -> np.ndarray:
        """int32 [N, 4] tile boxes for a frame size (cached per size)."""
        key = (int(frame_wh[0]), int(frame_wh[1]))
        grid = self._grid_cache.get(key)
        if grid is None:
            grid = multiscale_grid(key, self.tiling.tile_wh, self.tiling.stride_wh, self.tiling.scales)
            self._grid_cache[key] = grid
        return grid

    def dense_boxes_for(self, map_hw: tuple[int, int], frame_wh: tuple[int, int], dense_scale: float) -> np.ndarray:
        """int32 [rows * cols, 4] frame-pixel boxes of a dense score map's windows, clipped to the frame (cached)."""
        key = (map_hw, (int(frame_wh[0]), int(frame_wh[1])), float(dense_scale))
        boxes = self._grid_cache.get(key)
        if boxes is None:
            window_xyxy = dense_window_boxes(map_hw, self.card.input_wh, self.card.dense_stride)
            boxes = np.round(window_xyxy / dense_scale).astype(np.int32)
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, key[1][0])
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, key[1][1])
            boxes.setflags(write=False)  # shared by every frame of this size
            self._grid_cache[key] = boxes
        return boxes

    def preprocess(self, frame_bgr: np.ndarray) -> Prepared:
        """Tiles of a frame as one normalised batch (or the padded frame, dense).

        Args:
            frame_bgr: uint8 [H, W, 3] BGR frame (grey / BGRA accepted).

        Returns:
            The batch and the tile geometry.

        Raises:
            ValueError: For an invalid frame or a frame smaller than a tile.
        """
        frame = as_bgr(frame_bgr)
        frame_wh = (frame.shape[1], frame.shape[0])
        if self.dense:
            if frame_wh[0] < self.tiling.tile_wh[0] or frame_wh[1] < self.tiling.tile_wh[1]:
                raise ValueError(f"frame size {frame_wh[0]}x{frame_wh[1]} is smaller than the tile "
                                 f"{self.tiling.tile_wh[0]}x{self.tiling.tile_wh[1]}: expected a larger frame")
            blob, _ = frame_to_blob(frame, self.dense_scale, self.card.dense_stride, self.card.input_wh,
                                    self.normalization, self.pool)
            return Prepared(blob, np.zeros((0, 4), np.int32), frame_wh, self.dense_scale)
        tiles = self.tiles_for(frame_wh)
        in_w, in_h = self.card.input_wh
        out = self.pool.take((len(tiles), 3, in_h, in_w)) if self.pool is not None else None
        return Prepared(tiles_to_blob(frame, tiles, self.card.input_wh, self.normalization, out), tiles, frame_wh)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on a batch float32 [N, 3, H, W] (in calls of at most ``max_batch`` tiles).

        A batch from :meth:`preprocess` goes back to the buffer pool afterwards
        (see ``reuse_buffers``); backends copy or finish reading their input
        before they return, so the outputs never alias it.
        """
        try:
            if self.max_batch is None or len(batch) <= self.max_batch:
                return self.backend(batch)
            parts = [self.backend(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
            return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
        finally:
            if self.pool is not None:
                self.pool.give(batch)

    def submit(self, batch: np.ndarray, callback: Callable[[dict[str, np.ndarray]], None]) -> None:
        """Start inference without waiting; ``callback(outputs)`` runs when it is done.

        With OpenVINO's THROUGHPUT hint (``backend_options={"hint": "THROUGHPUT"}``)
        several batches are in flight at once and callbacks run on OpenVINO's
        threads, possibly out of order; other backends run the batch now and
        call back before returning. The batch is copied at submission, so it
        goes back to the buffer pool at once. Call :meth:`wait` before reading
        the last results. The batch is not split by ``max_batch``.
        """
        backend_submit = getattr(self.backend, "submit", None)
        if backend_submit is None:
            callback(self.infer(batch))
            return
        try:
            backend_submit(batch, callback)
        finally:
            if self.pool is not None:
                self.pool.give(batch)

    def wait(self) -> None:
        """Block until every :meth:`submit` call has called back (re-raises a callback's error)."""
        backend_wait = getattr(self.backend, "wait", None)
        if backend_wait is not None:
            backend_wait()

    def tile_decisions(self, outputs: Mapping[str, np.ndarray], dense: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-tile (score float32 [N], class id int64 [N], positive bool [N]) from model outputs."""
        rule = DecisionRule(self.card.head, self.class_thresholds, self.norm_gate, self.background_id,
                            self._main_class(), self.card.centroids)
        return decide_tiles(rule, outputs, dense)

    def decide(self, outputs: Mapping[str, np.ndarray], prepared: Prepared) -> FrameResult:
        """Decisions per tile and merged object boxes for one frame."""
        map_hw = None
        if self.dense:
            score_map = np.asarray(outputs["score"])
            map_hw = (int(score_map.shape[-2]), int(score_map.shape[-1]))
            tile_xyxy = self.dense_boxes_for(map_hw, prepared.frame_wh, prepared.dense_scale)
        else:
            tile_xyxy = prepared.tiles_xyxy
        score, class_id, positive = self.tile_decisions(outputs, dense=self.dense)
        if len(score) != len(tile_xyxy):
            raise ValueError(f"model returned {len(score)} scores for {len(tile_xyxy)} tiles: expected one per tile")
        if self.dense:  # windows over padding only (clipped to nothing) are never detections
            positive &= (tile_xyxy[:, 2] > tile_xyxy[:, 0]) & (tile_xyxy[:, 3] > tile_xyxy[:, 1])
        idx = np.flatnonzero(positive)
        tiles = Detections(tile_xyxy[idx], score[idx], class_id[idx], idx)
        merged = merge_boxes(tiles, self.tiling.merge, self.tiling.iou_threshold)
        return FrameResult(merged, score, tile_xyxy, positive, class_id, prepared.frame_wh, None, map_hw)

    def warmup(self, frame_wh: tuple[int, int] | None = None, batch: np.ndarray | None = None,
               calls: int = WARMUP_CALLS) -> float:
        """Run the backend ``calls`` times on a frame's batch before real frames (first calls are slow).

        ONNX Runtime plans its memory on the first call and allocates it on the
        second; both took 1-4 s on a 1080p dense frame, against 0.25 s for every
        later call, so a run without warm-up starts seconds behind a live
        camera and its first frames look like a stall.

        Args:
            frame_wh: Warm up on a black frame of this size (every stage runs once).
            batch: Warm up on this prepared batch instead (it is not modified or pooled).
            calls: Backend calls.

        Returns:
            Milliseconds taken.
        """
        import time

        if (frame_wh is None) == (batch is None):
            raise ValueError("warmup needs exactly one of frame_wh or batch")
        start = time.perf_counter()
        if batch is None:
            prepared = self.preprocess(np.zeros((int(frame_wh[1]), int(frame_wh[0]), 3), np.uint8))
            batch = prepared.batch
            self.decide(self.infer(batch.copy()), prepared)
            calls -= 1
        for _ in range(max(0, calls)):
            self.infer(np.array(batch, copy=True))  # a copy: infer() hands pooled batches back to the pool
        if frame_wh is not None and self.pool is not None:
            self.pool.give(batch)
        return (time.perf_counter() - start) * 1e3

    def __call__(self, frame_bgr: np.ndarray) -> FrameResult:
        prepared = self.preprocess(frame_bgr)
        return self.decide(self.infer(prepared.batch), prepared)

    def heatmap(self, result: FrameResult) -> np.ndarray:
        """float32 [H, W]: per pixel, the highest score of the tiles covering it (0 where none).

        Also stored in ``result.heatmap``.
        """
        if result.heatmap is None:
            if result.dense_map_hw is not None:
                result.heatmap = dense_coverage_max(
                    result.tile_scores.reshape(result.dense_map_hw), self.card.input_wh, self.card.dense_stride,
                    result.frame_wh, 1.0 / (self.dense_scale if self.dense else 1.0),
                )
            else:
                result.heatmap = coverage_max(result.frame_wh, result.tile_xyxy, result.tile_scores)
        return result.heatmap

    def describe(self) -> dict[str, Any]:
        """Plain-JSON summary of the detector's settings (for logs and run summaries)."""
        return {
            "artifact": str(self.artifact),
            "model": self.card.name,
            "head": self.card.head,
            "backend": self.backend_name,
            "threshold": self.threshold,
            "class_thresholds": {n: float(t) for n, t in zip(self.card.class_names, self.class_thresholds, strict=True)},
            "tiling": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.tiling).items()},
            "dense": self.dense,
        }
