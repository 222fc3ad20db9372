"""Live statistics of a detection run: frame rate, per-stage latency, counters.

Memory stays flat however long the run: the frame-rate window is a
``deque(maxlen)`` of ``time.monotonic()`` stamps and each stage keeps its
latest ``window`` samples in a preallocated float32 ring buffer, so medians
and p90s in the summary describe the last ``window`` frames (all of them for
runs shorter than that).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

STAGES = ("decode", "tile", "infer", "decide", "write")


class FpsMonitor:
    """Frames per second over the last ``window`` frames (supervision's FPSMonitor idea)."""

    def __init__(self, window: int = 60) -> None:
        if window < 2:
            raise ValueError(f"fps window {window} is invalid: expected at least 2 frames")
        self._stamps: deque[float] = deque(maxlen=window)

    def tick(self, now: float | None = None) -> None:
        self._stamps.append(time.monotonic() if now is None else now)

    @property
    def fps(self) -> float:
        if len(self._stamps) < 2:
            return 0.0
        span = self._stamps[-1] - self._stamps[0]
        return (len(self._stamps) - 1) / span if span > 0 else 0.0

    def reset(self) -> None:
        self._stamps.clear()


class LatencyTracker:
    """Per-stage latency samples in milliseconds, in fixed-size ring buffers.

    Args:
        stages: Stage names, in report order.
        window: Samples kept per stage (older ones are overwritten).
    """

    def __init__(self, stages: tuple[str, ...] = STAGES, window: int = 8192) -> None:
        if window < 1:
            raise ValueError(f"latency window {window} is invalid: expected >= 1")
        self.stages = tuple(stages)
        self._buffers = {s: np.zeros(window, dtype=np.float32) for s in self.stages}
        self._counts = dict.fromkeys(self.stages, 0)
        self._totals = dict.fromkeys(self.stages, 0.0)
        self._window = window

    def add(self, stage: str, ms: float) -> None:
        if stage not in self._buffers:
            raise KeyError(f"unknown stage {stage!r}: expected one of {', '.join(self.stages)}")
        count = self._counts[stage]
        self._buffers[stage][count % self._window] = ms
        self._counts[stage] = count + 1
        self._totals[stage] += float(ms)

    def samples(self, stage: str) -> np.ndarray:
        """float32 [min(count, window)]: the kept samples of one stage (unordered once wrapped)."""
        return self._buffers[stage][: min(self._counts[stage], self._window)]

    def summary(self, stage: str) -> dict[str, float]:
        """``median``, ``p90`` over the kept window; ``mean`` and ``count`` over the whole run."""
        count = self._counts[stage]
        if count == 0:
            return {"median": 0.0, "p90": 0.0, "mean": 0.0, "count": 0}
        kept = self.samples(stage)
        median, p90 = np.percentile(kept, [50, 90])
        return {
            "median": round(float(median), 3),
            "p90": round(float(p90), 3),
            "mean": round(self._totals[stage] / count, 3),
            "count": count,
        }

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {stage: self.summary(stage) for stage in self.stages}


class RunStats:
    """Everything the periodic log line and the end-of-run summary report.

    Counters that belong to the source (dropped, corrupt, reconnects) are read
    from it at report time; the rest is counted here by the pipeline.
    """

    def __init__(self, fps_window: int = 60, latency_window: int = 8192) -> None:
        self.fps_monitor = FpsMonitor(fps_window)
        self.latency = LatencyTracker(window=latency_window)
        self.frames = 0
        self.detections = 0
        self.frames_with_detections = 0
        self._started: float | None = None
        self._finished: float | None = None
        self._first_done: float | None = None
        self._first_infer: float | None = None
        self._last_done: float | None = None
        self._last_log = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._last_log = self._started

    def stop(self) -> None:
        self._finished = time.monotonic()

    @property
    def seconds(self) -> float:
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else time.monotonic()
        return end - self._started

    def inference_started(self) -> None:
        """Mark the start of the first timed inference (after the warm-up); later calls are ignored."""
        if self._first_infer is None:
            self._first_infer = time.monotonic()

    def frame_done(self, detections: int, latency_ms: dict[str, float]) -> None:
        """Record one finished frame: its detection count and its stage latencies."""
        now = time.monotonic()
        if self._first_done is None:
            self._first_done = now
        self._last_done = now
        self.frames += 1
        self.detections += int(detections)
        self.frames_with_detections += int(detections > 0)
        for stage, ms in latency_ms.items():
            self.latency.add(stage, ms)
        self.fps_monitor.tick(now)

    @property
    def steady_fps(self) -> float:
        """Frames per second once the model is warm: frames / (last finished frame - first timed inference).

        Counted from the start of the first inference, not from the first
        finished frame: a writer that lags behind at the start and drains its
        queue at the end would otherwise squeeze the run into a shorter span
        and overstate the rate (by up to the queue length over a short run).
        The span includes one frame's drawing and writing, so the figure errs
        low. Without :meth:`inference_started` it counts from the first
        finished frame.
        """
        if self.frames < 1 or self._last_done is None:
            return 0.0
        if self._first_infer is not None and self._last_done > self._first_infer:
            return self.frames / (self._last_done - self._first_infer)
        if self.frames < 2 or self._last_done == self._first_done:
            return 0.0
        return (self.frames - 1) / (self._last_done - self._first_done)

    def due(self, every_s: float) -> bool:
        """True once every ``every_s`` seconds (for the periodic log line)."""
        now = time.monotonic()
        if every_s > 0 and now - self._last_log >= every_s:
            self._last_log = now
            return True
        return False

    def log_line(self, dropped_frames: int = 0, reconnects: int = 0) -> str:
        infer = self.latency.summary("infer")
        return (
            f"frames {self.frames} | {self.fps_monitor.fps:.1f} fps | infer {infer['median']:.1f} ms "
            f"(p90 {infer['p90']:.1f}) | detections {self.detections} | dropped {dropped_frames}"
            + (f" | reconnects {reconnects}" if reconnects else "")
        )

    def summary(self, **extra) -> dict:
        """The summary dict: ``frames``, ``seconds``, ``fps``, ``latency_ms``, ``detections`` plus ``extra``.

        ``fps`` is frames / wall seconds of the whole run (model warm-up and
        pipeline fill included); ``fps_steady`` counts from the first timed
        inference to the last finished frame, the rate a long run settles at.
        """
        seconds = self.seconds
        return {
            "frames": self.frames,
            "seconds": round(seconds, 3),
            "fps": round(self.frames / seconds, 3) if seconds > 0 else 0.0,
            "fps_steady": round(self.steady_fps, 3),
            "latency_ms": self.latency.as_dict(),
            "detections": self.detections,
            "frames_with_detections": self.frames_with_detections,
            **extra,
        }
