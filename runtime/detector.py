"""The detector: frame -> tiles -> one batched inference -> decisions -> object boxes. No torch.

``Detector(model)`` needs nothing but the exported artifact: the model card
beside it (or inside it) gives the input size, normalisation, threshold and
the tiling that suits the model (``runtime.tiling_config.tiling_for_card``), so the
Python API and ``patchdet detect`` run the same settings by default. The
pieces: ``runtime.preprocess.Tiler`` (frame -> batch), the backend (batch ->
outputs), ``runtime.decisions`` (outputs -> per-tile decisions) and
``runtime.detections.merge_boxes`` (positive tiles -> one box per object).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.backends import load_backend
from patchdet.runtime.backends.fastest import resolve_auto_backend
from patchdet.runtime.builtin import builtin_model
from patchdet.runtime.card import ModelCard, read_artifact_card, read_card
from patchdet.runtime.decisions import decide_tiles, decision_rule
from patchdet.runtime.detections import Detections, merge_boxes
from patchdet.runtime.inference import BatchInference
from patchdet.runtime.preprocess import BufferPool, Prepared, Tiler
from patchdet.runtime.tiling import coverage_max
from patchdet.runtime.tiling_config import TilingConfig, tiling_for_card

logger = logging.getLogger(__name__)

__all__ = ["Detector", "FrameResult", "Prepared", "TilingConfig"]

# Backend calls before the first real frame (see Detector.warmup).
WARMUP_CALLS = 2


@dataclass
class FrameResult:
    """Everything decided about one frame (what the sinks write and ``Detector.stream`` yields).

    Attributes:
        detections: Merged object boxes.
        tile_scores: float32 [N] score of every tile (or dense window).
        tile_xyxy: int32 [N, 4] boxes of every tile in frame pixels.
        positive_mask: bool [N] tiles that passed the decision.
        tile_class_id: int64 [N] predicted class of every tile.
        frame_wh: (width, height) of the frame.
        heatmap: float32 [H, W] per-pixel max tile score, filled by ``Detector.heatmap``.
        dense_map_hw: (rows, cols) of the dense score map, else None.
        frame: The source frame (``runtime.streams.Frame``) when it came from a source.
        latency_ms: Stage name -> milliseconds for this frame.
    """

    detections: Detections
    tile_scores: np.ndarray
    tile_xyxy: np.ndarray
    positive_mask: np.ndarray
    tile_class_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    frame_wh: tuple[int, int] = (0, 0)
    heatmap: np.ndarray | None = None
    dense_map_hw: tuple[int, int] | None = None
    frame: Any = None
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def positive_tiles(self) -> Detections:
        """Positive tiles before merging."""
        idx = np.flatnonzero(self.positive_mask)
        return Detections(self.tile_xyxy[idx], self.tile_scores[idx], self.tile_class_id[idx], idx)


class Detector:
    """Score every patch of a frame with an exported model and decide what is there.

    Args:
        model: Model file (``.onnx``, ``.xml``, ``.engine``) with its card; ``None``: the built-in car model.
        backend: ``auto`` (for ``.onnx``: the fastest of ONNX Runtime and OpenVINO f32 on this machine,
            ``runtime.backends.fastest``) or a name from ``runtime.backends.list_backends()``.
        threshold: A number, a card operating point name, or a dict class name -> number; None: the card's.
        tiling: Tiling and merging; None: the card's own (``runtime.tiling_config.tiling_for_card``).
        threads: CPU threads for inference (None: the backend's default).
        norm_gate: Latent norm below which a cosine head says background (None: the card's).
        card: A card to use instead of the artifact's own (e.g. a calibrated copy).
        backend_options: Extra backend settings (``runtime.backends.load_backend``).
        max_batch: Most tiles per backend call (None: one call per frame). It bounds memory: ONNX Runtime
            needs about 3 MB of activations per 96x96 DisCNN tile (``benchmarks/results/runtime_backends.md``).
        reuse_buffers: Recycle batch memory: :meth:`infer` hands a batch made by :meth:`preprocess` back to a
            pool, and a later :meth:`preprocess` may overwrite it. Copy ``prepared.batch`` first if you need it.
    """

    def __init__(self, model: str | Path | None = None, backend: str = "auto",
                 threshold: float | str | Mapping[str, float] | None = None, tiling: TilingConfig | None = None,
                 threads: int | None = None, norm_gate: float | None = None, card: ModelCard | str | Path | None = None,
                 backend_options: Mapping[str, Any] | None = None, max_batch: int | None = 256,
                 reuse_buffers: bool = True) -> None:
        self.artifact = Path(model) if model is not None else builtin_model(patch=tiling is not None and not tiling.dense)
        if card is None:
            card = read_artifact_card(self.artifact)
        elif not isinstance(card, ModelCard):
            card = read_card(card)
        self.card: ModelCard = card
        tiling = tiling if tiling is not None else tiling_for_card(card, dense=card.dense)
        if card.dense and not tiling.dense:  # a dense artifact can only run dense
            tiling = dataclasses.replace(tiling, dense=True, perspective=None)
        self.tiling = tiling
        if self.tiling.dense and not card.dense:
            raise ValueError(f"dense mode needs a dense export, but {self.artifact.name!r} is a patch model: "
                             "export with --dense or run without --dense")
        self.dense = card.dense
        self.rule = decision_rule(card, threshold, norm_gate)
        self.pool = BufferPool() if reuse_buffers else None
        self.tiler = Tiler(card, self.tiling, self.pool)
        if card.head == "modulus" and self.rule.threshold < 0:
            # the score is a norm: a negative threshold marks every patch (one whole-frame box), silently
            raise ValueError(f"threshold {self.rule.threshold:g} is invalid for {card.name!r}: a modulus head's "
                             "score is a norm, expected a number >= 0")
        backend, options = resolve_auto_backend(self.artifact, card, backend, threads, dict(backend_options or {}))
        self.backend = load_backend(self.artifact, backend, threads, **options)
        self.backend_name: str = self.backend.name
        check_card_matches_model(card, getattr(self.backend, "input_shape", None), self.artifact)
        self.inference = BatchInference(self.backend, max_batch, self.pool)
        if self.dense:
            logger.info("dense mode: windows of %s frame px at scales %s, every %d model px (a quarter of a "
                        "window at 64 px)", self.tiling.tile_wh, self.tiling.scales, card.dense_stride)

    # -- thresholds ---------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The main class's threshold (the positive class of a modulus head)."""
        return self.rule.threshold

    @property
    def class_thresholds(self) -> np.ndarray:
        return self.rule.class_thresholds

    def with_threshold(self, threshold: float | str | Mapping[str, float]) -> None:
        """Change the decision threshold(s) in place (validated)."""
        self.rule = decision_rule(self.card, threshold, self.rule.norm_gate)

    # -- stages ---------------------------------------------------------------
    def preprocess(self, frame_bgr: np.ndarray) -> Prepared:
        """Tiles of a uint8 BGR frame [H, W, 3] as one normalised batch (see ``runtime.preprocess.Tiler``)."""
        return self.tiler(frame_bgr)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Backend outputs for float32 [N, 3, H, W] (``runtime.inference.BatchInference.infer``)."""
        return self.inference.infer(batch)

    def submit(self, batch: np.ndarray, callback: Callable[[dict[str, np.ndarray]], None]) -> None:
        """Start inference without waiting (``runtime.inference.BatchInference.submit``)."""
        self.inference.submit(batch, callback)

    def wait(self) -> None:
        """Block until every :meth:`submit` call has called back."""
        self.inference.wait()

    def tile_decisions(self, outputs: Mapping[str, np.ndarray], dense: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-tile (score float32 [N], class id int64 [N], positive bool [N]) from model outputs."""
        return decide_tiles(self.rule, outputs, dense)

    def decide(self, outputs: Mapping[str, np.ndarray], prepared: Prepared) -> FrameResult:
        """Decisions per tile and merged object boxes for one frame."""
        map_hw = None
        if self.dense:
            score_map = np.asarray(outputs["score"])
            map_hw = (int(score_map.shape[-2]), int(score_map.shape[-1]))
            tile_xyxy = self.tiler.dense_boxes_for(map_hw, prepared.frame_wh)
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
        """Run the backend ``calls`` times on a frame's batch before real frames; returns milliseconds.

        ONNX Runtime plans its memory on the first call and allocates it on the second; both took
        1-4 s on a 1080p dense frame against 0.25 s later, so without warm-up a live camera starts
        seconds behind. Give ``frame_wh`` (a black frame through every stage) or ``batch`` (not pooled).
        """
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

    def stream(self, source: Any, max_frames: int | None = None) -> Iterator[FrameResult]:
        """Detect on every frame of a source; yields one ``FrameResult`` per frame (``result.frame`` is the frame).

        Args:
            source: Anything ``patchdet.open_source`` takes (camera index, file, URL, folder, glob) or an
                open ``runtime.streams.FrameSource`` (closed when the generator ends either way).
            max_frames: Stop after this many frames.
        """
        from patchdet.runtime.streams import FrameSource, open_source

        frames = source if isinstance(source, FrameSource) else open_source(source)
        with frames:
            for count, frame in enumerate(frames, start=1):
                start = time.perf_counter()
                result = self(frame.image)
                result.frame = frame
                result.latency_ms = {"decode": frame.decode_ms, "detect": (time.perf_counter() - start) * 1e3}
                yield result
                if max_frames is not None and count >= max_frames:
                    return

    def heatmap(self, result: FrameResult) -> np.ndarray:
        """float32 [H, W]: per pixel, the highest score of the tiles covering it (0 where none); kept in the result."""
        if result.heatmap is None:
            boxes, scores = result.tile_xyxy, result.tile_scores
            if result.dense_map_hw is not None:  # tens of thousands of windows: draw the ones that show
                keep = (scores > 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
                boxes, scores = boxes[keep], scores[keep]
            result.heatmap = coverage_max(result.frame_wh, boxes, scores)
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
            "tiling": self.tiling.to_dict(),
            "dense": self.dense,
        }


def check_card_matches_model(card: ModelCard, input_shape: tuple[int | None, ...] | None, artifact: Path) -> None:
    """A ``ValueError`` naming the card field that disagrees with the model's input ``[N, C, H, W]``.

    A card from another export (``--card``) would otherwise fail deep inside the engine, or silently
    score patches resized to the wrong size. Dynamic axes (``None``) and dense models are not checked.
    """
    if input_shape is None or len(input_shape) != 4 or card.dense:
        return
    channels, height, width = input_shape[1:]
    if channels is not None and channels != len(card.mean):
        raise ValueError(f"model card mean/std give {len(card.mean)} channels but {artifact.name} takes {channels}")
    if height is not None and width is not None and (width, height) != tuple(card.input_wh):
        raise ValueError(f"model card input_wh {card.input_wh[0]}x{card.input_wh[1]} does not match the model "
                         f"{artifact.name}, which takes {width}x{height} patches: use the card exported with it")
