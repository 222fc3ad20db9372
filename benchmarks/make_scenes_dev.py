"""Regenerate the frames of the labelled dev set ``benchmarks/data/scenes_dev`` from ``../shared/data/scenes``.

The hand-checked boxes live in ``benchmarks/data/scenes_dev/scenes_dev.json``
(COCO). Every image entry names where its pixels come from:

- ``source`` + ``frame_index``: frame ``frame_index`` (0-based, decode order) of a video;
- ``source`` + ``plate``: a background plate, the per-pixel median of frames
  ``range(*plate["frames"])`` of a video, cropped to ``plate["crop_xyxy"]``;
- ``source`` alone: a photo.

This script reads that JSON and writes the images beside it, all re-encoded
as JPEG quality 90 (the set stays small: one source photo alone is 1.4 MB),
checking that every size matches the JSON.

    .venv/bin/python -m benchmarks.make_scenes_dev [--scenes ../shared/data/scenes]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "benchmarks" / "data" / "scenes_dev" / "scenes_dev.json"
SCENES = ROOT.parent / "shared" / "data" / "scenes"
JPEG_QUALITY = 90


def read_video(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """The frames of ``path`` whose 0-based decode index is in ``wanted``."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open video {path}")
    frames, index = {}, 0
    try:
        while len(frames) < len(wanted):
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                frames[index] = frame
            index += 1
    finally:
        cap.release()
    missing = sorted(wanted - frames.keys())
    if missing:
        raise ValueError(f"video {path} has no frame {missing[0]} (it has {index})")
    return frames


def make_images(labels: Path, scenes: Path) -> int:
    doc = json.loads(labels.read_text(encoding="utf-8"))
    out_dir = labels.parent
    wanted: dict[str, set[int]] = {}
    for image in doc["images"]:
        if "frame_index" in image:
            wanted.setdefault(image["source"], set()).add(int(image["frame_index"]))
        elif "plate" in image:
            wanted.setdefault(image["source"], set()).update(range(*image["plate"]["frames"]))
    videos = {source: read_video(scenes / source, indices) for source, indices in wanted.items()}
    for image in doc["images"]:
        target = out_dir / image["file_name"]
        if "frame_index" in image:
            pixels = videos[image["source"]][int(image["frame_index"])]
        elif "plate" in image:
            plate = image["plate"]
            stack = np.stack([videos[image["source"]][i] for i in range(*plate["frames"])])
            x0, y0, x1, y1 = plate["crop_xyxy"]
            pixels = np.median(stack, axis=0).astype(np.uint8)[y0:y1, x0:x1]
        else:
            pixels = cv2.imread(str(scenes / image["source"]), cv2.IMREAD_COLOR)
            if pixels is None:
                raise OSError(f"cannot read image {scenes / image['source']}")
        if not cv2.imwrite(str(target), pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"cannot write {target}")
        height, width = cv2.imread(str(target)).shape[:2]
        if (width, height) != (image["width"], image["height"]):
            raise ValueError(f"{target.name} is {width}x{height}: expected {image['width']}x{image['height']}")
    return len(doc["images"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--scenes", type=Path, default=SCENES)
    args = parser.parse_args()
    count = make_images(args.labels, args.scenes)
    print(f"wrote {count} images beside {args.labels}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
