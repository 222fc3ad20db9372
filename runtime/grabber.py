"""Live sources: a grabber thread that keeps only the newest frame and reconnects with back-off.

Cameras and URLs (and files played with ``drop_frames=True``) are read here.
The grabber thread owns the ``cv2.VideoCapture``: it reads as fast as the
source delivers, replaces the one waiting frame (counting the replaced one in
``dropped_frames``), and when a read fails it releases the capture and reopens
it with exponential back-off, recording the gap. ``close()`` may be called
from any thread; the grabber releases the capture itself, so a read in
progress is never pulled out from under it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from patchdet.runtime import capture
from patchdet.runtime.stats import FpsMonitor
from patchdet.runtime.streams import Frame, FrameSource, SourceSpec, StreamOptions

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935}

def describe_url_failure(url: str, timeout_s: float = 3.0) -> str:
    """Why a URL could not be opened, found by trying a plain TCP connection to its host."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return "the URL has no host"
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return "the URL's port is not a number"
    if port is None or parts.scheme.lower() in ("udp", "srt"):
        return "the stream could not be read (no data received)"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port}"
    except socket.gaierror:
        return f"host {host!r} not found"
    except TimeoutError:
        return f"connection to {host}:{port} timed out"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return f"{host}:{port} accepts connections but sends no video OpenCV/FFmpeg can decode"


def describe_camera_failure(index: int) -> str:
    device = Path(f"/dev/video{index}")
    if os.name == "posix" and Path("/dev").is_dir() and not device.exists():
        return f"no camera at index {index} ({device} does not exist)"
    return f"camera at index {index} could not be opened (missing, busy, or no permission)"


class LiveSource(FrameSource):
    """Camera, URL (or a file played in real time): a grabber thread keeps only the newest frame."""

    live = True

    def __init__(self, spec: SourceSpec, options: StreamOptions) -> None:
        super().__init__(str(spec.target), options)
        self._spec = spec
        self._reconnect = spec.live  # a file played live simply ends
        self._cap = capture.open_capture(spec, options)
        if self._cap is None:
            if spec.kind == "camera":
                reason = describe_camera_failure(int(spec.target))
            elif spec.kind == "url":
                reason = describe_url_failure(str(spec.target))
            else:
                reason = "not a video OpenCV/FFmpeg can decode"
            raise OSError(f"source {spec.target} cannot be opened: {reason}")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 and np.isfinite(fps) else None
        self._pace_fps = self.fps if spec.kind == "video" else None
        self._arrivals = FpsMonitor(window=300)  # what the source really delivers, vs its nominal fps
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab_loop, name=f"grabber:{spec.target}", daemon=True)
        self._thread.start()

    # -- grabber thread ------------------------------------------------------
    def _grab_loop(self) -> None:
        index = -1
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._cap is None and not self._reopen():
                    break
                start = time.perf_counter()
                try:
                    ok, image = self._cap.read()
                except cv2.error:
                    ok, image = False, None
                decode_ms = (time.perf_counter() - start) * 1000.0
                if not ok or image is None:
                    if not self._reconnect:
                        break
                    log.warning("source %s: stream lost, reconnecting", self.name)
                    self._release()
                    continue
                index += 1
                self._arrivals.tick()
                if not capture.valid_image(image):
                    self.counters.corrupt_frames += 1
                    continue
                if index % self.options.vid_stride:
                    continue
                frame = Frame(index, image, time.time(), decode_ms)
                with self._cond:
                    if self._latest is not None:
                        self.counters.dropped_frames += 1  # the consumer never saw it
                    self._latest = frame
                    self._cond.notify_all()
                if self._pace_fps:
                    next_due = max(next_due + 1.0 / self._pace_fps, time.monotonic() - 1.0)
                    self._stop.wait(max(0.0, next_due - time.monotonic()))
        except Exception:  # noqa: BLE001 - a grabber must end the stream, not die silently
            log.exception("source %s: grabber stopped", self.name)
        finally:
            self._release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _reopen(self) -> bool:
        """Reopen with exponential back-off; False when stopped or the gap exceeded the timeout."""
        lost_at_wall, lost_at = time.time(), time.monotonic()
        delay = self.options.reconnect_initial_s
        attempts = 0
        while not self._stop.wait(delay):
            attempts += 1
            cap = capture.open_capture(self._spec, self.options)
            if cap is not None:
                gap = time.monotonic() - lost_at
                self._cap = cap
                self.counters.reconnects += 1
                self.counters.gaps.append({"start": lost_at_wall, "seconds": round(gap, 3)})
                log.warning(
                    "source %s: reconnected after a gap of %.1f s (%d attempt(s), reconnect #%d)",
                    self.name, gap, attempts, self.counters.reconnects,
                )  # fmt: skip
                return True
            timeout = self.options.reconnect_timeout_s
            if timeout is not None and time.monotonic() - lost_at >= timeout:
                log.error("source %s: gave up after %.1f s without a frame", self.name, time.monotonic() - lost_at)
                self.counters.gaps.append({"start": lost_at_wall, "seconds": round(time.monotonic() - lost_at, 3)})
                return False
            log.info("source %s: still unreachable, next attempt in %.1f s", self.name, delay)
            delay = min(delay * 2.0, self.options.reconnect_max_s)
        return False

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    @property
    def measured_fps(self) -> float | None:
        """Frames per second the source delivered over its last 300 frames (``None`` before two)."""
        fps = self._arrivals.fps
        return fps if fps > 0 else None

    # -- consumer side -------------------------------------------------------
    def _next_frame(self) -> Frame | None:
        with self._cond:
            while self._latest is None and not self._ended and not self._closed:
                self._cond.wait(timeout=0.5)
            frame, self._latest = self._latest, None
        return frame

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop = getattr(self, "_stop", None)
        if stop is None:  # constructor failed before the thread existed
            return
        stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.options.read_timeout_s + 1.0)
        if self._thread.is_alive():
            log.warning("source %s: grabber thread still blocked in a read; leaving it (daemon)", self.name)
