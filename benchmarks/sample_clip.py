"""The built-in street clip as a list of frames, for benchmarks that synthesise longer or larger videos."""

from __future__ import annotations

from pathlib import Path

SAMPLE_CLIP = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "street_cam_sample.mp4"


def read_sample_clip(frame_wh: tuple[int, int] | None = None) -> list:
    """Decode every frame of the sample clip (BGR uint8), resized to ``frame_wh`` when given."""
    import cv2

    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    clip = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        clip.append(frame if frame_wh is None else cv2.resize(frame, frame_wh, interpolation=cv2.INTER_AREA))
    cap.release()
    if not clip:
        raise OSError(f"{SAMPLE_CLIP} is missing or unreadable")
    return clip
