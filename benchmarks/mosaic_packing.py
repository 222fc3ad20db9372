"""The dense default's mosaic packing: one shelf per row of levels (before 2026-12-03) against the skyline
packing of ``runtime.tiling.mosaic_layout``, side by side in one run, on the same frames in memory.

    OMP_NUM_THREADS=2 python -m benchmarks.mosaic_packing --clip ../shared/data/scenes/videos/ahmetozlu_street_cam.mp4 \
        --frames 40 --rounds 3 --json benchmarks/results/mosaic_packing.json

Per layout: canvas size, the share of it that holds levels, the detector's end-to-end time per frame
(preprocess + inference + decisions, one thread calling it, ONNX Runtime) and the detections it returns,
which must not change. The two layouts alternate ``--rounds`` times; medians over all frames of a layout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from patchdet.runtime.detector import Detector
from patchdet.runtime.tiling import MosaicLayout, MosaicLevel


def shelf_layout(layout: MosaicLayout) -> MosaicLayout:
    """The same levels placed as before: tallest first, left to right on shelves as wide as the widest level."""
    levels = sorted(layout.levels, key=lambda level: -level.padded_wh[1])
    canvas_w = max(level.padded_wh[0] for level in levels)
    placed, shelf_y, shelf_h, x = [], 0, 0, 0
    for level in levels:
        if x + level.padded_wh[0] > canvas_w:
            shelf_y, shelf_h, x = shelf_y + shelf_h, 0, 0
        placed.append(MosaicLevel(level.scale_xy, level.size_wh, (x, shelf_y), level.padded_wh))
        x += level.padded_wh[0]
        shelf_h = max(shelf_h, level.padded_wh[1])
    return MosaicLayout(layout.frame_wh, (canvas_w, shelf_y + shelf_h), tuple(placed))


def fill(layout: MosaicLayout) -> float:
    used = sum(w * h for w, h in (level.padded_wh for level in layout.levels))
    return used / float(layout.canvas_wh[0] * layout.canvas_wh[1])


def read_frames(clip: str, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(clip)
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise SystemExit(f"error: no frame could be read from {clip}")
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    frames = read_frames(args.clip, args.frames)
    frame_wh = (frames[0].shape[1], frames[0].shape[0])
    detectors = {}
    for name in ("shelf", "skyline"):
        detector = Detector(backend="onnxruntime", threads=args.threads)
        skyline = detector.tiler.layout_for(frame_wh)
        if name == "shelf":  # the layout cache decides what every later frame of this size gets
            detector.tiler._cache[("layout", *frame_wh)] = shelf_layout(skyline)
        detector.warmup(frame_wh)
        detectors[name] = detector
    times: dict[str, list[float]] = {name: [] for name in detectors}
    detections: dict[str, list[list]] = {name: [] for name in detectors}
    for _ in range(args.rounds):
        for name, detector in detectors.items():
            found = []
            for frame in frames:
                start = time.perf_counter()
                result = detector(frame)
                times[name].append((time.perf_counter() - start) * 1e3)
                found.append(np.round(result.detections.xyxy).astype(int).tolist())
            detections[name] = found
    rows = {}
    for name, detector in detectors.items():
        layout = detector.tiler.layout_for(frame_wh)
        rows[name] = {"canvas_wh": list(layout.canvas_wh), "fill": round(fill(layout), 3),
                      "ms_per_frame_p50": round(float(np.median(times[name])), 1),
                      "detections": sum(len(d) for d in detections[name])}
    same = detections["shelf"] == detections["skyline"]
    result = {"command": "python -m benchmarks.mosaic_packing " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "frame_wh": list(frame_wh), "frames": len(frames), "rounds": args.rounds, "layouts": rows,
        "speedup": round(rows["shelf"]["ms_per_frame_p50"] / rows["skyline"]["ms_per_frame_p50"], 3),
        "same_detections": same}
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
