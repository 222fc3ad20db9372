"""Where detections go: annotated video, JSON Lines, a window, crops; several at once.

Every sink has ``write(record, annotated)`` and an idempotent ``close()``;
:class:`SinkSet` fans one record out to all of them and closes all of them
even when one fails. Closing is what makes outputs whole:

- the video is written under a temporary name (``out.partial.mp4``) and renamed
  to ``out.mp4`` on close, so the final name only ever holds a finished,
  playable file, also after Ctrl-C (an ``mp4`` without its index is unplayable);
  a run that produced no frame leaves no video at all;
- JSON Lines are written one complete line per frame and flushed, so a run
  cut short leaves every line it wrote parseable.

Codecs: ``mp4v`` for ``.mp4/.m4v/.mov/.mkv``, ``MJPG`` for ``.avi``. H.264
(``avc1``) is not offered: the FFmpeg inside the opencv-python wheels cannot
encode it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from patchdet.runtime.atomic import atomic_output, check_replaceable, safe_file_stem
from patchdet.runtime.drawing import annotate, heatmap_overlay

__all__ = ["CropSink", "DisplaySink", "ImageSink", "JsonlSink", "SinkSet", "VideoSink", "annotate", "heatmap_overlay"]

if TYPE_CHECKING:  # the sinks only read a FrameResult's fields
    from patchdet.runtime.detector import FrameResult


log = logging.getLogger(__name__)

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


class Sink(Protocol):
    wants_annotated: bool

    def write(self, record: FrameResult, annotated: np.ndarray | None) -> None: ...

    def close(self) -> None: ...


def detections_to_json(record: FrameResult, class_names: tuple[str, ...] | list[str] = ()) -> dict:
    """The JSON Lines record of one frame (boxes xyxy in frame pixels)."""
    det = record.detections
    xyxy = np.asarray(det.xyxy, dtype=np.float64).reshape(-1, 4)
    class_ids = [int(c) for c in np.asarray(det.class_id).reshape(-1)]
    out = {
        "frame": int(record.frame.index),
        "timestamp": round(float(record.frame.timestamp), 4),
        "boxes": np.round(xyxy, 1).tolist(),
        "scores": [round(float(s), 4) for s in np.asarray(det.score).reshape(-1)],
        "class_ids": class_ids,
    }
    if class_names:
        out["classes"] = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in class_ids]
    if record.frame.name:
        out["name"] = record.frame.name
    out["latency_ms"] = {k: round(float(v), 3) for k, v in record.latency_ms.items()}
    return out


# -- sinks ---------------------------------------------------------------------
def partial_path(path: Path) -> Path:
    """``out.mp4`` -> ``out.partial.mp4`` (the suffix stays: it picks the container)."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def check_video_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in VIDEO_CODECS:
        raise ValueError(
            f"video output {path} has an unsupported suffix {path.suffix or '(none)'!r}: "
            f"expected one of {', '.join(VIDEO_CODECS)}"
        )
    return path


class VideoSink:
    """Annotated video, written to ``NAME.partial.SUFFIX`` and renamed to ``NAME.SUFFIX`` on close.

    Args:
        path: Output file; the suffix picks the codec (see ``VIDEO_CODECS``).
        fps: Frame rate written in the container: the rate of the frames handed to the sink
            (a file's rate divided by ``vid_stride``), or with ``timed`` the stream's nominal rate.
        timed: Place frames by their timestamps (live sources): a frame is repeated until the next
            one is due, so a stream processed at 5 frames/s plays at its real speed in a 25 fps
            container instead of 5x too fast. A gap longer than ``MAX_GAP_S`` (a reconnect) is
            shortened to it.
    """

    wants_annotated = True
    MAX_GAP_S = 2.0

    def __init__(self, path: str | os.PathLike[str], fps: float | None = None, timed: bool = False) -> None:
        self.path = check_replaceable(check_video_path(path))
        check_replaceable(partial_path(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path.parent, os.W_OK):
            raise OSError(f"cannot write video {self.path}: folder {self.path.parent} is not writable")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.fourcc = VIDEO_CODECS[self.path.suffix.lower()]
        self._tmp = partial_path(self.path)
        self._writer: cv2.VideoWriter | None = None
        self._frame_wh: tuple[int, int] | None = None
        self.timed = timed
        self._timeline_s = 0.0  # video time of the last frame written (timed mode)
        self._last_timestamp: float | None = None
        self.frames = 0  # frames in the container (repeats included)
        self.records = 0  # frames handed to the sink
        self._closed = False

    def _open(self, frame_wh: tuple[int, int]) -> None:
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, frame_wh)
        if not writer.isOpened():
            writer.release()
            self._tmp.unlink(missing_ok=True)
            raise OSError(f"cannot write video {self.path}: OpenCV could not open a {self.fourcc} writer")
        self._writer, self._frame_wh = writer, frame_wh

    def write(self, record: FrameResult, annotated: np.ndarray | None) -> None:
        if self._closed:
            raise RuntimeError(f"video sink {self.path} is closed")
        image = annotated if annotated is not None else record.frame.image
        wh = (image.shape[1], image.shape[0])
        if self._writer is None:
            self._open(wh)
        elif wh != self._frame_wh:  # one video needs one size
            image = cv2.resize(image, self._frame_wh, interpolation=cv2.INTER_AREA)
        for _ in range(self._copies(record)):
            self._writer.write(image)
            self.frames += 1
        self.records += 1

    def _copies(self, record: FrameResult) -> int:
        """How many times to write this frame: 1, or in timed mode as many as keep the timeline real."""
        timestamp = getattr(record.frame, "timestamp", None) if record.frame is not None else None
        if not self.timed or timestamp is None:
            return 1
        if self._last_timestamp is not None:
            self._timeline_s += min(max(0.0, float(timestamp) - self._last_timestamp), self.MAX_GAP_S)
        self._last_timestamp = float(timestamp)
        due = int(round(self._timeline_s * self.fps)) + 1  # container frames that should exist after this one
        return max(0, due - self.frames)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is None:
            log.info("no frame was written: no video at %s", self.path)
            return
        writer.release()
        os.replace(self._tmp, check_replaceable(self.path))
        log.info("wrote %d frames to %s (%.3g fps%s)", self.frames, self.path, self.fps,
                 f", {self.records} processed frames placed by their timestamps" if self.timed else "")


class JsonlSink:
    """One JSON object per frame, one line each, flushed as written."""

    wants_annotated = False

    def __init__(self, path: str | os.PathLike[str], class_names: tuple[str, ...] | list[str] = ()) -> None:
        self.path = Path(path)  # opened, not renamed over: /dev/stdout or a named pipe are fine destinations
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.class_names = tuple(class_names)
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.lines = 0

    def write(self, record: FrameResult, annotated: np.ndarray | None) -> None:
        if self._fh is None:
            raise RuntimeError(f"JSON Lines sink {self.path} is closed")
        self._fh.write(json.dumps(detections_to_json(record, self.class_names), separators=(",", ":")) + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


class ImageSink:
    """One annotated image per frame in a folder (``--save-images``): photos keep their name, size and format.

    A frame from an image source is written as ``DIR/<its file name>``; other frames as
    ``DIR/frame_000123.jpg``. Two photos with the same name (a recursive glob) get the frame index
    appended to the second. Each file is written atomically; a source photo is never overwritten
    (pointing ``DIR`` at the input folder is refused).
    """

    wants_annotated = True

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OSError(f"cannot write images to {self.folder}: it is a file, expected a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved = 0
        self._names: set[str] = set()

    def _target(self, record: FrameResult) -> Path:
        source = Path(record.frame.name) if record.frame.name else None
        name = source.name if source is not None else f"frame_{record.frame.index:06d}.jpg"
        if name in self._names:
            name = f"{Path(name).stem}_{record.frame.index}{Path(name).suffix}"
        target = self.folder / name
        if source is not None and target.exists() and target.resolve() == source.resolve():
            raise OSError(f"--save-images {self.folder} would overwrite the source photo {source}: "
                          "expected a different folder")
        return target

    def write(self, record: FrameResult, annotated: np.ndarray | None) -> None:
        image = annotated if annotated is not None else record.frame.image
        target = self._target(record)
        ok, data = cv2.imencode(target.suffix.lower() or ".jpg", image)
        if not ok:
            raise OSError(f"cannot encode {target.name} as {target.suffix or '.jpg'}")
        with atomic_output(target) as tmp:
            tmp.write_bytes(data.tobytes())
        self._names.add(target.name)
        self.saved += 1

    def close(self) -> None:
        if self.saved:
            log.info("wrote %d annotated images to %s", self.saved, self.folder)


class CropSink:
    """Saves each detection's box as ``{source}_{k:02d}_{class}_{score}.jpg`` in a folder.

    ``{source}`` is the photo's file stem for image sources (``IMG_0412_00_car_1.53.jpg``),
    else ``f{frame:06d}``.
    """

    wants_annotated = False

    def __init__(
        self, folder: str | os.PathLike[str], class_names: tuple[str, ...] | list[str] = (), max_per_frame: int = 32
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.class_names = tuple(class_names)
        self.max_per_frame = max_per_frame
        self.saved = 0

    def write(self, record: FrameResult, annotated: np.ndarray | None) -> None:
        image = record.frame.image
        h, w = image.shape[:2]
        det = record.detections
        xyxy = np.asarray(det.xyxy, dtype=np.float32).reshape(-1, 4)
        for k, ((x0, y0, x1, y1), score, class_id) in enumerate(zip(xyxy, det.score, det.class_id, strict=True)):
            if k >= self.max_per_frame:
                break
            x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
            x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
            if x1 <= x0 or y1 <= y0:
                continue
            cid = int(class_id)
            name = safe_file_stem(self.class_names[cid] if 0 <= cid < len(self.class_names) else str(cid))
            prefix = safe_file_stem(Path(record.frame.name).stem) if record.frame.name else f"f{record.frame.index:06d}"
            out = self.folder / f"{prefix}_{k:02d}_{name}_{float(score):.2f}.jpg"
            if cv2.imwrite(str(out), image[y0:y1, x0:x1]):
                self.saved += 1
            else:
                log.warning("could not write crop %s", out)

    def close(self) -> None:
        return None


class DisplaySink:
    """A window (``--show``); press ``q`` or Esc to stop the run."""

    wants_annotated = True

    def __init__(self, title: str = "patchdet") -> None:
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise OSError(
                "--show needs OpenCV with GUI support (pip install opencv-python); this OpenCV is headless"
            ) from None
        self.stop_requested = False
        self._closed = False

    def write(self, record: FrameResult, annotated: np.ndarray | None) -> None:
        cv2.imshow(self.title, annotated if annotated is not None else record.frame.image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:
                pass


class SinkSet:
    """Several sinks at once; draws the annotated frame once for all that want it.

    Args:
        sinks: The sinks, written in order.
        class_names: Names for labels.
        heatmap: Blend the score heatmap into annotated frames.
        threshold: Decision threshold, which scales the heatmap colours.
    """

    def __init__(self, sinks: list[Any], class_names: tuple[str, ...] | list[str] = (), heatmap: bool = False,
                 threshold: float = 0.0) -> None:
        self.sinks = list(sinks)
        self.class_names = tuple(class_names)
        self.heatmap = heatmap
        self.threshold = threshold
        self._closed = False

    @property
    def stop_requested(self) -> bool:
        return any(getattr(s, "stop_requested", False) for s in self.sinks)

    def write(self, record: FrameResult, caption: str = "") -> None:
        annotated = None
        if any(s.wants_annotated for s in self.sinks):
            heatmap = record.heatmap if self.heatmap else None
            annotated = annotate(record.frame.image, record.detections, self.class_names, heatmap,
                                 self.threshold, caption)  # fmt: skip
        for sink in self.sinks:
            sink.write(record, annotated)

    def close(self) -> None:
        """Close every sink; the first error is raised after all were tried."""
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others
                log.error("closing %s failed: %s", type(sink).__name__, exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> SinkSet:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
