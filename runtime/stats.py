"""Live statistics of a detection run: frame rate, per-stage latency, counters.

One definition of a run's frame rate, used by the progress log line, the
summary and the video overlay: ``RunStats.fps`` = frames finished / seconds
from the start of the first timed inference (after the model's warm-up) to
the last finished frame. Model loading and warm-up are not in it (they are in
the summary's ``seconds``); every frame's whole path (decode, tile, infer,
decide, draw, write) is.

``FpsMonitor`` measures a different thing: how fast frames *arrive* from a
live source (what the camera really sends, which a stream's nominal rate
often is not). Memory stays flat however long the run: its window is a
``deque(maxlen)`` of ``time.monotonic()`` stamps, and each stage keeps its
latest ``window`` latency samples in a preallocated float32 ring buffer, so
medians and p90s in the summary describe the last ``window`` frames (all of
them for runs shorter than that).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

STAGES = ("decode", "tile", "infer", "decide", "write")


class FpsMonitor:
    """Events per second over the last ``window`` events (supervision's FPSMonitor idea).

    Used for the arrival rate of a live source's frames (``source_fps`` in the summary).
    """

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

    def __init__(self, latency_window: int = 8192) -> None:
        self.latency = LatencyTracker(window=latency_window)
        self.frames = 0
        self.detections = 0
        self.frames_with_detections = 0
        self._started: float | None = None
        self._finished: float | None = None
        self._first_infer: float | None = None
        self._last_done: float | None = None
        self._last_log = 0.0

    def start(self, now: float | None = None) -> None:
        self._started = time.monotonic() if now is None else now
        self._last_log = self._started

    def stop(self, now: float | None = None) -> None:
        self._finished = time.monotonic() if now is None else now

    @property
    def seconds(self) -> float:
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else time.monotonic()
        return end - self._started

    def inference_started(self, now: float | None = None) -> None:
        """Mark the start of the first timed inference (after the warm-up); later calls are ignored."""
        if self._first_infer is None:
            self._first_infer = time.monotonic() if now is None else now

    def frame_done(self, detections: int, latency_ms: dict[str, float], now: float | None = None) -> None:
        """Record one finished frame: its detection count and its stage latencies."""
        now = time.monotonic() if now is None else now
        if self._first_infer is None:  # frames fed without inference_started: count from the first one
            self._first_infer = now
        self._last_done = now
        self.frames += 1
        self.detections += int(detections)
        self.frames_with_detections += int(detections > 0)
        for stage, ms in latency_ms.items():
            self.latency.add(stage, ms)

    @property
    def fps(self) -> float:
        """The run's frame rate: frames finished / (last finished frame - start of the first timed inference).

        Counted from the start of the first inference, not between finished
        frames: a writer that lags behind at the start and drains its queue at
        the end would otherwise squeeze frames into a shorter span and
        overstate the rate (two frames of 179 ms each once read as 97.6 fps).
        The model's loading and warm-up are excluded; the span includes the
        last frame's drawing and writing. 0.0 before the first frame.
        """
        if self.frames < 1 or self._last_done is None or self._first_infer is None:
            return 0.0
        span = self._last_done - self._first_infer
        return self.frames / span if span > 0 else 0.0

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
            f"frames {self.frames} | {self.fps:.1f} fps | infer {infer['median']:.1f} ms "
            f"(p90 {infer['p90']:.1f}) | detections {self.detections} | dropped {dropped_frames}"
            + (f" | reconnects {reconnects}" if reconnects else "")
        )

    def summary(self, **extra) -> dict:
        """The summary dict: ``frames``, ``seconds``, ``fps``, ``latency_ms``, ``detections`` plus ``extra``.

        ``fps`` is :attr:`fps`, the figure the log line and the overlay show;
        ``seconds`` is the wall time of the whole run, warm-up included.
        """
        return {
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 3),
            "latency_ms": self.latency.as_dict(),
            "detections": self.detections,
            "frames_with_detections": self.frames_with_detections,
            **extra,
        }
