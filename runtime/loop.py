"""The detection loop: three threads joined by small bounded queues.

Decoding and drawing/writing overlap with inference instead of adding to it::

    reader thread:  source -> decode -> tile (Detector.preprocess)  --q_in-->
    main thread:    Detector.infer (warmed up on the first batch)    --q_out-->
    writer thread:  Detector.decide -> sinks (video, JSON Lines, window, crops) -> stats

Inference gets the CPU first. On a small CPU the inference engine already
uses every core, and a reader or writer thread that preempts one of its
threads in mid-layer stalls the others at the next barrier. So the reader
and writer run at a lower priority (``io_nice``, Linux): they fill the gaps
inference leaves, and the bounded queues make them catch up when they fall
behind (inference blocks on a full queue and frees the CPU). A live source's
grabber thread keeps normal priority, so a camera is still drained on time.

The queues hold at most ``queue_size`` frames (one for live sources, whose
grabber keeps only the newest frame), so memory stays flat and a live source
is never read far ahead of inference. Ctrl-C, the end of the stream,
``max_frames`` or ``q`` in the window all end the run the same way: the reader
stops, queued frames are finished and written, and :meth:`Pipeline.run` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2

from patchdet.runtime.sinks import SinkSet
from patchdet.runtime.stats import RunStats
from patchdet.runtime.streams import FrameSource

log = logging.getLogger(__name__)


class _End:
    """End-of-stream marker in the queues."""


@dataclass
class _Failure:
    error: BaseException


_END = _End()
# Nice value of the reader and writer threads (0-19; 0: same as inference). With a CPU-bound thread beside
# a 2-thread inference call on 2 cores (720p dense INT8 DisCNN-8), ONNX Runtime took 120 ms at nice 0 and
# 92 ms at nice 10 or 19 (92 ms alone); OpenVINO, whose threads wait less politely, 65 / 52 / 43-47 ms
# (35-36 ms alone). End to end: benchmarks/results/runtime_e2e.md.
IO_NICE = 19


def lower_thread_priority(nice: int) -> bool:
    """Run the calling thread at nice value ``nice`` or lower priority; True when it took effect.

    Linux keeps a nice value per thread, so this leaves the rest of the
    process alone; a thread already at a higher nice value keeps it. Elsewhere,
    or when the call is refused, nothing changes.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), min(19, int(nice))))
    except OSError as exc:
        log.debug("could not lower the priority of %s: %s", threading.current_thread().name, exc)
        return False
    return True


@contextlib.contextmanager
def stop_requested_by_signals(requested: threading.Event) -> Iterator[None]:
    """While inside, SIGINT (and SIGTERM / SIGHUP when a Python handler is installed for them, as the CLI does)
    set ``requested`` instead of raising, so the loop stops between frames and no lock is left half-taken.

    A second signal raises ``KeyboardInterrupt`` as before (for a run stuck on the way out). Signals left
    at their defaults, or ignored, are not touched; off the main thread nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and callable(signal.getsignal(signum)):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def opencv_threads(threads: int | None) -> Iterator[None]:
    """Set OpenCV's worker-thread count (process-wide: ``cv2.setNumThreads``) for a block, then restore it.

    ``None`` leaves it alone. The detection loop runs OpenCV single-threaded
    unless OpenCV is the inference engine: tiling, resizing and drawing then
    stay on the reader and writer threads instead of waking a worker pool that
    competes with the inference threads for the same cores. (FFmpeg's decoder
    threads are set per capture: ``runtime.capture.DECODE_THREADS``.)
    """
    if threads is None:
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(int(threads))
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _put(q: queue.Queue, item: Any, stop: threading.Event, alive: threading.Thread | None = None) -> bool:
    """Put without blocking forever: gives up when ``stop`` is set or the consumer thread died."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if stop.is_set() or (alive is not None and not alive.is_alive()):
                return False


class Pipeline:
    """The three-thread loop of one run (see the module docstring).

    Args:
        detector: A ``runtime.detector.Detector`` (``preprocess``, ``infer``, ``decide``, ``heatmap``).
        source: Where frames come from; closed by :meth:`run`.
        sinks: Where results go; the caller closes them.
        stats: Filled in as frames finish.
        max_frames: Stop after this many frames (``None``: end of stream).
        queue_size: Frames in flight between the threads (1 waiting frame for live sources).
        log_every_s: Period of the progress log line (0: never).
        io_nice: Nice value of the reader and writer threads (see the module docstring; 0: unchanged).
        warmup: Before the first frame, run the backend on its batch untimed
            (``Detector.warmup``), so one-off first-call costs are neither
            counted as inference latency nor make a live source fall behind.
    """

    def __init__(self, detector: Any, source: FrameSource, sinks: SinkSet, stats: RunStats, *,
                 max_frames: int | None = None, queue_size: int = 4, log_every_s: float = 5.0,
                 io_nice: int = IO_NICE, warmup: bool = True) -> None:
        self.detector, self.source, self.sinks, self.stats = detector, source, sinks, stats
        self.max_frames, self.log_every_s = max_frames, log_every_s
        # A live source must not queue up stale frames: one waits while inference runs, the grabber keeps the newest.
        self.q_in: queue.Queue = queue.Queue(maxsize=1 if source.live else queue_size)
        self.q_out: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.writer_error: BaseException | None = None
        self.frame_wh: tuple[int, int] | None = None
        self.stopped_by = "end of stream"
        # The heatmap is the sink set's choice; it is computed only when some sink draws.
        self.need_heatmap = sinks.heatmap and any(s.wants_annotated for s in sinks.sinks)
        self.warmup = warmup
        self.io_nice = io_nice
        self.warmup_ms = 0.0

    # -- reader ----------------------------------------------------------------
    def _read(self) -> None:
        lower_thread_priority(self.io_nice)
        count = 0
        try:
            for frame in self.source:
                if self.stop.is_set():
                    return
                start = time.perf_counter()
                prepared = self.detector.preprocess(frame.image)
                tile_ms = (time.perf_counter() - start) * 1000.0
                if not _put(self.q_in, (frame, prepared, tile_ms), self.stop):
                    return
                count += 1
                if self.max_frames is not None and count >= self.max_frames:
                    self.stopped_by = "max_frames"
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            _put(self.q_in, _Failure(exc), self.stop)
        finally:
            _put(self.q_in, _END, self.stop)

    # -- writer ----------------------------------------------------------------
    def _write(self) -> None:
        detector, stats, source = self.detector, self.stats, self.source
        lower_thread_priority(self.io_nice)
        try:
            while True:
                item = self.q_out.get()
                if item is _END:
                    return
                frame, prepared, outputs, latency = item
                start = time.perf_counter()
                result = detector.decide(outputs, prepared)
                if self.need_heatmap:
                    detector.heatmap(result)  # kept in result.heatmap
                latency["decide"] = (time.perf_counter() - start) * 1000.0
                self.frame_wh = prepared.frame_wh
                result.frame, result.latency_ms = frame, dict(latency)
                start = time.perf_counter()
                # The run's frame rate (the log's and the summary's figure); meaningless on still photos.
                caption = "" if source.stills or stats.frames == 0 else f"{stats.fps:.1f} fps"
                self.sinks.write(result, caption=caption)
                latency["write"] = (time.perf_counter() - start) * 1000.0
                stats.frame_done(len(result.detections), latency)
                if stats.due(self.log_every_s):
                    log.info("%s", stats.log_line(source.counters.dropped_frames, source.counters.reconnects))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.writer_error = exc
            self.stop.set()
            while True:  # keep draining so the main thread never blocks on a full queue
                try:
                    if self.q_out.get(timeout=0.5) is _END:
                        return
                except queue.Empty:
                    return

    # -- main ------------------------------------------------------------------
    def run(self) -> bool:
        """Run to the end; True when interrupted by Ctrl-C (or SIGTERM / SIGHUP where the CLI handles them)."""
        reader = threading.Thread(target=self._read, name="patchdet-reader", daemon=True)
        writer = threading.Thread(target=self._write, name="patchdet-writer", daemon=True)
        interrupted = False
        failure: BaseException | None = None
        requested = threading.Event()
        self.stats.start()
        reader.start()
        writer.start()
        try:
            with stop_requested_by_signals(requested):
                while True:
                    if requested.is_set():
                        raise KeyboardInterrupt
                    try:
                        item = self.q_in.get(timeout=0.2)
                    except queue.Empty:
                        if self.writer_error is not None:
                            break
                        continue
                    if item is _END:
                        break
                    if isinstance(item, _Failure):
                        failure = item.error
                        break
                    frame, prepared, tile_ms = item
                    if self.warmup:
                        self.warmup = False
                        self.warmup_ms = self.detector.warmup(batch=prepared.batch)
                        log.debug("warm-up: %.0f ms", self.warmup_ms)
                    self.stats.inference_started()
                    start = time.perf_counter()
                    outputs = self.detector.infer(prepared.batch)
                    infer_ms = (time.perf_counter() - start) * 1000.0
                    latency = {"decode": frame.decode_ms, "tile": tile_ms, "infer": infer_ms}
                    if self.writer_error is not None or not _put(self.q_out, (frame, prepared, outputs, latency),
                                                                 self.stop, writer):
                        break
                    if self.sinks.stop_requested:
                        self.stopped_by = "window closed"
                        break
        except KeyboardInterrupt:
            interrupted = True
            self.stopped_by = "interrupted"
            log.warning("interrupted: finishing the frames in flight and closing the outputs")
        finally:
            self.stop.set()
            self.source.close()  # safe from this thread; unblocks a reader waiting for a live frame
            reader.join(timeout=30.0)
            _put(self.q_out, _END, threading.Event(), writer)
            writer.join()
            self.stats.stop()
        if failure is not None:
            raise failure
        if self.writer_error is not None:
            raise self.writer_error
        return interrupted
