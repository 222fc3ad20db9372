"""Baseline: an OpenCV Haar cascade for cars on the labelled dev set, the classic a new user tries first.

OpenCV ships no car cascade (its wheel's ``cv2/data`` holds faces, eyes, bodies, plates). The one people use
is ``cars.xml`` of andrewssobral/vehicle_detection_haarcascades (trained on 526 rear views of cars on
Californian freeways, after Oliveira and Santos). It is not part of patchdet and is not committed here: pass
the file with ``--cascade``. Evaluated by the same code as ``patchdet evaluate --labels``
(``patchdet.runtime.evaluation.score_detector``); a cascade gives no score, so every box scores 1 and AP50 is
that of one operating point. OpenCV 5 dropped ``CascadeClassifier`` from its main wheel: run this with
``opencv-python-headless<5`` (a separate environment: ``pip install 'opencv-python-headless<5' pycocotools
pyyaml onnxruntime && pip install --no-deps .``).

    python -m benchmarks.haar_cascade --cascade /tmp/cars.xml --json benchmarks/results/scenes_eval/haar_cascade.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from patchdet.runtime.atomic import atomic_write_json
from patchdet.runtime.evaluation import load_labelled_frames, score_detector

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "benchmarks" / "data" / "scenes_dev" / "scenes_dev.json"


class HaarCars:
    """``frame -> (xyxy, score)`` with ``cv2.CascadeClassifier.detectMultiScale`` on the grey frame."""

    def __init__(self, cascade: Path, scale_factor: float, min_neighbors: int, min_size: int) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise SystemExit(f"error: OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5): "
                             "run with opencv-python-headless<5")
        self.classifier = cv2.CascadeClassifier(str(cascade))
        if self.classifier.empty():
            raise SystemExit(f"error: {cascade} is not an OpenCV cascade file")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        found = self.classifier.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                                 minSize=(self.min_size, self.min_size))
        boxes = np.asarray(found, np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        return boxes, np.ones(len(boxes), np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade", type=Path, required=True, help="the cascade XML (e.g. cars.xml)")
    parser.add_argument("--labels", type=Path, default=LABELS, help="COCO dev set to evaluate on")
    parser.add_argument("--json", type=Path, help="write the evaluation report here")
    parser.add_argument("--scale-factor", type=float, default=1.1, help="detectMultiScale scaleFactor")
    parser.add_argument("--min-neighbors", type=int, default=3, help="detectMultiScale minNeighbors")
    parser.add_argument("--min-size", type=int, default=24, help="smallest window side in pixels")
    args = parser.parse_args()
    if not args.cascade.is_file():
        raise SystemExit(f"error: cascade file {args.cascade} does not exist")
    cv2.setNumThreads(1)
    detector = HaarCars(args.cascade, args.scale_factor, args.min_neighbors, args.min_size)
    report = score_detector(load_labelled_frames(args.labels), detector)
    report["detector"] = {"name": "haar_cascade", "cascade": args.cascade.name, "scale_factor": args.scale_factor,
                          "min_neighbors": args.min_neighbors, "min_size": args.min_size}
    if args.json:
        atomic_write_json(args.json, report)
    print(f"Haar cascade: AP50 {report['ap50']:.3f}, recall {report['recall']:.3f}, FA/frame "
          f"{report['false_alarms_per_frame']:.2f}, car-free detections {report['empty_frame_detections']}, "
          f"{report['fps']:.1f} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
