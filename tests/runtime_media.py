"""Small media fixtures for the runtime application tests (videos, images, a corrupt frame), made with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def moving_square_frames(count: int, frame_wh: tuple[int, int] = (160, 96), side: int = 32) -> list[np.ndarray]:
    """``count`` black BGR frames with a white square moving right by 8 px per frame."""
    w, h = frame_wh
    frames = []
    for i in range(count):
        frame = np.zeros((h, w, 3), np.uint8)
        x0 = (8 * i) % (w - side)
        y0 = (h - side) // 2
        frame[y0:y0 + side, x0:x0 + side] = 255
        frames.append(frame)
    return frames


def square_box(index: int, frame_wh: tuple[int, int] = (160, 96), side: int = 32) -> tuple[int, int, int, int]:
    """xyxy of the square in frame ``index`` of :func:`moving_square_frames`."""
    w, h = frame_wh
    x0 = (8 * index) % (w - side)
    y0 = (h - side) // 2
    return x0, y0, x0 + side, y0 + side


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"test setup: cannot write {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def corrupt_mjpeg_frame(path: Path, frame_index: int) -> Path:
    """Zero the JPEG data of one frame of an MJPG AVI in place (the decoder rejects it)."""
    data = bytearray(path.read_bytes())
    starts = []
    pos = 0
    while (pos := data.find(b"\xff\xd8\xff", pos)) >= 0:
        starts.append(pos)
        pos += 3
    start = starts[frame_index]
    end = data.find(b"\xff\xd9", start) + 2
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))
    return path


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def detect_cfg(model, source, **changes):
    """A ``DetectConfig`` for the tiny fixtures: ONNX Runtime, one thread, 32 px tiles every 16 px, no progress log."""
    from patchdet.runtime.run import DetectConfig

    base = dict(model=str(model), source=str(source), backend="onnxruntime", threads=1, tile=32, stride=16,
                log_every_s=0)
    return DetectConfig(**{**base, **changes})
