"""Frame sources: webcam index, video file, RTSP/HTTP URL, image file, folder or glob of images.

``open_source(text, options)`` turns what a user types into a :class:`FrameSource`,
an iterator of :class:`Frame` that closes idempotently and works as a context
manager. Two ways of reading:

- **Files** (video files, images) are read in order without dropping a frame
  (``--vid-stride`` and ``--max-fps`` still apply); decode errors inside a file
  skip the frame and count it in ``counters.corrupt_frames``.
- **Live** sources (camera, URL, or a file when ``drop_frames=True``) are read by
  a background grabber thread (``runtime.grabber``) that keeps only the newest frame, so a slow
  consumer sees the present, not a growing backlog; frames it never sees are
  counted in ``counters.dropped_frames``. A stream that stops is reopened with
  exponential back-off; the gap is logged and recorded in ``counters.gaps``,
  ``counters.reconnects`` counts the successful reopenings. Losing a stream is
  never fatal unless ``reconnect_timeout_s`` is set and exceeded.

Opening a source that cannot be opened raises ``OSError`` naming the source
and the reason (no such file, no camera at index 0, connection refused).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from patchdet.runtime import capture
from patchdet.runtime.imagefolder import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


@dataclass(frozen=True)
class StreamOptions:
    """How a source is read.

    Attributes:
        vid_stride: Use every ``vid_stride``-th frame (1 = all).
        max_fps: Hand out at most this many frames per second (``None``: no cap).
            Files are slowed down; live streams drop the frames in between.
        drop_frames: Keep only the newest frame. ``None`` (default): live
            sources drop, files are read completely. ``True`` on a file plays it
            at its native rate like a camera.
        reconnect_initial_s: First wait before reopening a lost stream; doubles per failure.
        reconnect_max_s: Longest wait between two reopening attempts.
        reconnect_timeout_s: Give up (end the stream) after a gap this long; ``None``: never.
        open_timeout_s: FFmpeg open timeout for URLs.
        read_timeout_s: FFmpeg read timeout for URLs (a stalled server counts as a loss).
        max_consecutive_corrupt: A file with more undecodable frames in a row than this is treated as ended.
    """

    vid_stride: int = 1
    max_fps: float | None = None
    drop_frames: bool | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    reconnect_timeout_s: float | None = None
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    max_consecutive_corrupt: int = 50

    def __post_init__(self) -> None:
        if int(self.vid_stride) != self.vid_stride or self.vid_stride < 1:
            raise ValueError(f"vid_stride {self.vid_stride!r} is invalid: expected an integer >= 1")
        if self.max_fps is not None and not self.max_fps > 0:
            raise ValueError(f"max_fps {self.max_fps!r} is invalid: expected a positive number or None")
        for name in ("reconnect_initial_s", "reconnect_max_s", "open_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)!r} is invalid: expected a positive number of seconds")
        if self.reconnect_timeout_s is not None and not self.reconnect_timeout_s > 0:
            raise ValueError(f"reconnect_timeout_s {self.reconnect_timeout_s!r} is invalid: expected > 0 or None")


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: Frame number in the source, 0-based, counting frames skipped by ``vid_stride``.
        image: uint8 BGR [H, W, 3].
        timestamp: Seconds: position in the media for video files, UNIX time for live sources and images.
        decode_ms: Time spent reading and decoding this frame.
        name: File name for image sources, empty otherwise.
    """

    index: int
    image: np.ndarray
    timestamp: float
    decode_ms: float
    name: str = ""


@dataclass
class SourceCounters:
    """What went wrong while reading, reported in the run summary."""

    dropped_frames: int = 0
    corrupt_frames: int = 0
    reconnects: int = 0
    gaps: list[dict[str, float]] = field(default_factory=list)  # {"start": unix s, "seconds": gap}

    def as_dict(self) -> dict:
        return {
            "dropped_frames": self.dropped_frames,
            "corrupt_frames": self.corrupt_frames,
            "reconnects": self.reconnects,
            "gaps": [dict(g) for g in self.gaps],
        }


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: ``kind`` is ``camera``, ``url``, ``video``, ``image`` or ``images``."""

    kind: str
    target: str | int
    paths: tuple[Path, ...] = ()

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "url")


def parse_source(text: str | int) -> SourceSpec:
    """Classify what the user typed as ``--source``.

    Raises:
        OSError: a path that does not exist, or a folder/glob without images.
    """
    text = str(text).strip()
    if not text:
        raise ValueError("source is empty: expected a camera index, a URL, a video/image file, a folder or a glob")
    if text.isdigit():
        return SourceSpec("camera", int(text))
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme:
        if scheme not in URL_SCHEMES:
            raise ValueError(f"source URL scheme {scheme!r} is not supported: expected one of {', '.join(URL_SCHEMES)}")
        return SourceSpec("url", text)
    path = Path(text).expanduser()
    if path.is_dir():
        paths = tuple(list_images(path))
        if not paths:
            raise OSError(f"source {text} cannot be opened: the folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        return SourceSpec("images", str(path), paths)
    if any(ch in text for ch in "*?["):
        paths = tuple(
            sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        )
        if not paths:
            raise OSError(f"source {text} cannot be opened: no image files match this pattern")
        return SourceSpec("images", text, paths)
    if not path.exists():
        raise OSError(f"source {text} cannot be opened: no such file or directory")
    if not path.is_file():
        raise OSError(f"source {text} cannot be opened: not a regular file")
    if not os.access(path, os.R_OK):
        raise OSError(f"source {text} cannot be opened: permission denied")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return SourceSpec("image", str(path), (path,))
    return SourceSpec("video", str(path))

class FrameSource:
    """Iterator of :class:`Frame`; closes idempotently; a context manager.

    Attributes:
        name: What the user typed.
        live: True when frames may be dropped (newest frame wins).
        stills: True for image files, folders and globs: every frame is its own photo.
        fps: Native (nominal) frame rate of the source when known, else ``None``.
        measured_fps: The rate frames really arrived at (live sources; ``None`` elsewhere):
            an MJPEG camera sending 12 frames/s is often announced as 25.
        counters: Dropped / corrupt frames, reconnects and gaps so far.
    """

    measured_fps: float | None = None

    live = False
    stills = False

    def __init__(self, name: str, options: StreamOptions) -> None:
        self.name = name
        self.options = options
        self.fps: float | None = None
        self.counters = SourceCounters()
        self._closed = False
        self._next_due = 0.0

    def __iter__(self) -> FrameSource:
        return self

    def __next__(self) -> Frame:
        if self._closed:
            raise StopIteration
        frame = self._next_frame()
        if frame is None:
            raise StopIteration
        self._pace()
        return frame

    def _next_frame(self) -> Frame | None:
        raise NotImplementedError

    def _pace(self) -> None:
        """Sleep so that frames are handed out at most ``max_fps`` times per second."""
        if self.options.max_fps is None:
            return
        now = time.monotonic()
        if now < self._next_due:
            time.sleep(self._next_due - now)
            now = self._next_due
        self._next_due = max(now, self._next_due) + 1.0 / self.options.max_fps

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten source must not keep a camera open
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class VideoFileSource(FrameSource):
    """A video file read in order, every frame (no dropping)."""

    def __init__(self, spec: SourceSpec, options: StreamOptions) -> None:
        super().__init__(str(spec.target), options)
        self._cap = capture.open_capture(spec, options)
        if self._cap is None:
            raise OSError(f"source {spec.target} cannot be opened: not a video OpenCV/FFmpeg can decode")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else None
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and count > 0 else None
        self._index = -1  # index of the last frame read from the file
        self._frame_wh: tuple[int, int] | None = None
        self._frames_ok = 0  # frames read or grabbed successfully
        self._pending_skip = 0
        self._eof_checked = False
        self._lock = threading.Lock()  # close() from another thread waits for a read in progress

    def _read_one(self) -> tuple[bool, np.ndarray | None]:
        try:
            return self._cap.read()
        except cv2.error as exc:  # some FFmpeg builds raise on a broken packet
            log.debug("decode error in %s: %s", self.name, exc)
            return False, None

    def _next_frame(self) -> Frame | None:
        with self._lock:
            return self._next_frame_locked() if not self._closed else None

    def _next_frame_locked(self) -> Frame | None:
        corrupt_in_a_row = 0
        while not self._closed:
            skip, self._pending_skip = self._pending_skip, 0
            for _ in range(skip):  # grab without converting the frames vid_stride skips
                if not self._cap.grab():
                    if not self._more_expected():
                        return self._end_of_file()
                else:
                    self._frames_ok += 1
                self._index += 1
            start = time.perf_counter()
            ok, image = self._read_one()
            decode_ms = (time.perf_counter() - start) * 1000.0
            self._index += 1
            if ok and capture.valid_image(image) and self._same_size(image):
                self._frames_ok += 1
                if corrupt_in_a_row:
                    self.counters.corrupt_frames += corrupt_in_a_row
                    log.warning("skipped %d undecodable frame(s) of %s before frame %d",
                                corrupt_in_a_row, self.name, self._index)
                timestamp = self._index / self.fps if self.fps else self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                self._pending_skip = self.options.vid_stride - 1
                return Frame(self._index, image, float(timestamp), decode_ms)
            if not ok and not self._more_expected():
                return self._end_of_file()
            corrupt_in_a_row += 1
            if corrupt_in_a_row > self.options.max_consecutive_corrupt:
                log.error("%s: %d undecodable frames in a row, treating the file as ended", self.name, corrupt_in_a_row)
                self.counters.corrupt_frames += corrupt_in_a_row
                return None
        return None

    def _end_of_file(self) -> None:
        """Count frames the container announced but FFmpeg silently dropped as undecodable."""
        if self.frame_count is not None and not self._eof_checked:
            self._eof_checked = True
            missing = self.frame_count - self._frames_ok - self.counters.corrupt_frames
            if missing > 0:
                self.counters.corrupt_frames += missing
                log.warning("%s: %d of %d frames announced by the container could not be decoded (skipped)",
                            self.name, missing, self.frame_count)
        return None

    def _more_expected(self) -> bool:
        """True while the container says frames remain (a failed read there means a broken frame)."""
        return self.frame_count is not None and self._index + 1 < self.frame_count

    def _same_size(self, image: np.ndarray) -> bool:
        wh = (image.shape[1], image.shape[0])
        if self._frame_wh is None:
            self._frame_wh = wh
        return wh == self._frame_wh

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # a read loop in progress stops at its next check
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            cap, self._cap = self._cap, None
            if cap is not None:
                cap.release()


class ImageSource(FrameSource):
    """An image file, a folder of images or a glob, read in sorted order."""

    stills = True

    def __init__(self, spec: SourceSpec, options: StreamOptions) -> None:
        super().__init__(str(spec.target), options)
        self._paths = spec.paths
        self._position = 0

    def __len__(self) -> int:
        return len(range(0, len(self._paths), self.options.vid_stride))

    def _next_frame(self) -> Frame | None:
        while not self._closed and self._position < len(self._paths):
            index = self._position
            path = self._paths[index]
            self._position += self.options.vid_stride
            start = time.perf_counter()
            try:
                data = np.fromfile(str(path), dtype=np.uint8)
                image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
            except (OSError, cv2.error):
                image = None
            decode_ms = (time.perf_counter() - start) * 1000.0
            if not capture.valid_image(image):
                self.counters.corrupt_frames += 1
                log.warning("skipped unreadable image %s", path)
                continue
            return Frame(index, image, time.time(), decode_ms, name=str(path))
        return None


def open_source(text: str | int, options: StreamOptions | None = None) -> FrameSource:
    """Open what the user typed as ``--source``.

    Args:
        text: Camera index (``0``), URL (``rtsp://``, ``http://``), video file, image file, folder, or glob.
        options: Reading options; defaults to :class:`StreamOptions` ().

    Returns:
        A :class:`FrameSource`; use it as a context manager.

    Raises:
        OSError: the source cannot be opened; the message says which and why.
        ValueError: the text is not a source at all (empty, unknown URL scheme).
    """
    options = options or StreamOptions()
    capture.quiet_video_backends()
    spec = parse_source(text)
    if spec.kind in ("image", "images"):
        return ImageSource(spec, options)
    drop = spec.live if options.drop_frames is None else options.drop_frames
    if spec.kind == "video" and not drop:
        return VideoFileSource(spec, options)
    from patchdet.runtime.grabber import LiveSource  # imports this module: kept lazy

    return LiveSource(spec, options)
