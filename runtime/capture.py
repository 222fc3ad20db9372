"""OpenCV captures: opening one for a camera, URL or video file, and what a usable decoded frame is.

Shared by the file reader (``runtime.streams``) and the live grabber (``runtime.grabber``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from patchdet.runtime.streams import SourceSpec, StreamOptions

log = logging.getLogger("patchdet.runtime.streams")


def quiet_video_backends() -> None:
    """Silence OpenCV's and FFmpeg's own console messages unless debug logging is on.

    patchdet says what went wrong in its own log lines (with the source and
    the reason); the libraries' raw messages only repeat it less clearly.
    """
    if log.isEnabledFor(logging.DEBUG):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # older OpenCV
        pass


# FFmpeg decoder threads per capture. FFmpeg's default (one per core) decodes on worker threads created when
# the source is opened, at the inference's priority; with 1 the decoding runs on the thread that reads the
# frames (the pipeline's lower-priority reader, or a live source's grabber), and it costs less CPU on a
# small machine: 1.4 instead of 2.05 CPU-ms per 720p mp4v frame.
DECODE_THREADS = 1


def open_capture(spec: SourceSpec, options: StreamOptions) -> cv2.VideoCapture | None:
    """Open a ``cv2.VideoCapture`` for a camera, URL or video file; ``None`` when it does not open."""
    if spec.kind == "camera":
        cap = cv2.VideoCapture(int(spec.target))
    elif spec.kind == "url":
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.read_timeout_s * 1000),
            cv2.CAP_PROP_N_THREADS, DECODE_THREADS,
        ]  # fmt: skip
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
    else:
        cap = cv2.VideoCapture(str(spec.target), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, DECODE_THREADS])
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def valid_image(image: np.ndarray | None) -> bool:
    """A decoded frame we can use: a non-empty 3-channel image."""
    return image is not None and image.ndim == 3 and image.shape[2] == 3 and image.size > 0
