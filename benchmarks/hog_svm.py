"""A classical baseline for the car detector: HOG features + a linear SVM, sliding windows, NMS.

The yardstick every patch model is compared against (issue 10, item 7). Trained
on the 64x64 crops of ``../shared/data/vehicles`` (Udacity vehicle-detection
set: GTI, KITTI and Udacity highway crops), evaluated on the labelled dev set
``benchmarks/data/scenes_dev`` by the same code as ``patchdet evaluate
--labels`` (``patchdet.runtime.evaluation.score_detector``).

Features: scikit-image HOG on each YCrCb channel (9 orientations, 8x8 px cells,
2x2 cell blocks, L2-Hys), 3 x 1764 = 5292 values per 64x64 window; standardised,
then scikit-learn ``LinearSVC``. Hold-out split: the GTI folders are
consecutive video frames, so every folder is split by contiguous blocks of
file index (the last ``--val-fraction`` of each folder, in numeric order),
never at random.

Detection: the frame is resized so that 64x64 model windows cover
``--windows`` frame pixels (default 48, 64, 96, 128, 192 px), HOG is computed
once per resized frame and every window two cells (25 % of a window) apart is
scored from it; windows with an SVM decision value above ``--threshold``
become boxes, merged by ``cv2.dnn.NMSBoxes`` (IoU 0.3).

    nice -n 10 .venv/bin/python -m benchmarks.hog_svm --json benchmarks/results/scenes_eval/hog_svm.json

Needs the ``[bench]`` extra (scikit-image, scikit-learn). Trained on data for
research and non-commercial use (GTI, KITTI CC BY-NC-SA 3.0): so is the model.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from patchdet.runtime.atomic import atomic_write_json
from patchdet.runtime.evaluation import load_labelled_frames, score_detector

log = logging.getLogger("benchmarks.hog_svm")

ROOT = Path(__file__).resolve().parents[1]
VEHICLES = ROOT.parent / "shared" / "data" / "vehicles"
LABELS = ROOT / "benchmarks" / "data" / "scenes_dev" / "scenes_dev.json"
WINDOW = 64
CELL = 8
BLOCK = 2
ORIENTATIONS = 9
BLOCKS_PER_WINDOW = WINDOW // CELL - BLOCK + 1  # 7
STEP_CELLS = 2
NMS_IOU = 0.3


def hog_map(image_ycrcb: np.ndarray) -> list[np.ndarray]:
    """Per channel, the HOG blocks [rows, cols, 2, 2, 9] of a YCrCb uint8 image."""
    from skimage.feature import hog

    return [hog(image_ycrcb[..., c], orientations=ORIENTATIONS, pixels_per_cell=(CELL, CELL),
                cells_per_block=(BLOCK, BLOCK), block_norm="L2-Hys", feature_vector=False) for c in range(3)]


def crop_features(crop_bgr: np.ndarray) -> np.ndarray:
    """float32 [5292] HOG features of one 64x64 BGR crop (the window layout of :func:`window_features`)."""
    blocks = hog_map(cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2YCrCb))
    return np.concatenate([b.ravel() for b in blocks]).astype(np.float32)


def window_features(image_ycrcb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features of every 64x64 window STEP_CELLS cells apart: (float32 [N, 5292], int [N, 2] window x, y in px)."""
    blocks = hog_map(image_ycrcb)
    rows, cols = blocks[0].shape[:2]
    if rows < BLOCKS_PER_WINDOW or cols < BLOCKS_PER_WINDOW:
        return np.zeros((0, 3 * BLOCKS_PER_WINDOW**2 * BLOCK**2 * ORIENTATIONS), np.float32), np.zeros((0, 2), int)
    ys = np.arange(0, rows - BLOCKS_PER_WINDOW + 1, STEP_CELLS)
    xs = np.arange(0, cols - BLOCKS_PER_WINDOW + 1, STEP_CELLS)
    parts = []
    for b in blocks:
        view = np.lib.stride_tricks.sliding_window_view(b, (BLOCKS_PER_WINDOW, BLOCKS_PER_WINDOW), axis=(0, 1))
        view = view[ys][:, xs]  # [ny, nx, 2, 2, 9, 7, 7] -> window-major in the crop's ravel order
        parts.append(np.moveaxis(view, (-2, -1), (2, 3)).reshape(len(ys) * len(xs), -1))
    origin = np.stack(np.meshgrid(xs * CELL, ys * CELL), axis=-1).reshape(-1, 2)
    return np.concatenate(parts, axis=1).astype(np.float32), origin


def _index(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else 0


def split_folder(folder: Path, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, validation) files of one source folder: contiguous blocks by numeric file index, never random."""
    files = sorted(folder.glob("*.png"), key=_index)
    cut = int(round(len(files) * (1 - val_fraction)))
    return files[:cut], files[cut:]


def load_split(root: Path, val_fraction: float):
    """Features and labels (1 = vehicle) of the train and validation splits, every source folder split alike."""
    sets = {"train": ([], []), "val": ([], [])}
    for label, kind in ((1, "vehicles"), (0, "non-vehicles")):
        folders = sorted(p for p in (root / kind).iterdir() if p.is_dir())
        if not folders:
            raise FileNotFoundError(f"no source folders under {root / kind}")
        for folder in folders:
            for name, files in zip(("train", "val"), split_folder(folder, val_fraction), strict=True):
                for path in files:
                    crop = cv2.imread(str(path), cv2.IMREAD_COLOR)
                    if crop is None or crop.shape[:2] != (WINDOW, WINDOW):
                        raise ValueError(f"{path} is not a {WINDOW}x{WINDOW} image")
                    sets[name][0].append(crop_features(crop))
                    sets[name][1].append(label)
            log.info("%s/%s: %d images", kind, folder.name, len(list(folder.glob("*.png"))))
    return {name: (np.stack(x), np.asarray(y)) for name, (x, y) in sets.items()}


@dataclass
class HogSvm:
    """A trained scaler + linear SVM and the detection settings."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    windows_px: tuple[int, ...] = (48, 64, 96, 128, 192)
    threshold: float = 0.0

    def decision(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def __call__(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes xyxy float32 [N, 4] and SVM decision values [N] after NMS."""
        height, width = frame_bgr.shape[:2]
        ycrcb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2YCrCb)
        boxes, scores = [], []
        for window in self.windows_px:
            factor = WINDOW / window  # model pixels per frame pixel
            size = (int(round(width * factor)), int(round(height * factor)))
            if size[0] < WINDOW or size[1] < WINDOW:
                continue
            resized = cv2.resize(ycrcb, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
            features, origin = window_features(resized)
            if not len(features):
                continue
            decision = self.decision(features)
            keep = decision > self.threshold
            xy = origin[keep] / factor
            boxes.append(np.concatenate([xy, xy + window], axis=1))
            scores.append(decision[keep])
        if not boxes or not sum(len(s) for s in scores):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes_xyxy = np.concatenate(boxes)
        boxes_xyxy[:, [0, 2]] = boxes_xyxy[:, [0, 2]].clip(0, width)
        boxes_xyxy[:, [1, 3]] = boxes_xyxy[:, [1, 3]].clip(0, height)
        score = np.concatenate(scores)
        xywh = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes_xyxy]
        kept = np.asarray(cv2.dnn.NMSBoxes(xywh, score.astype(float).tolist(), float(self.threshold), NMS_IOU),
                          dtype=int).reshape(-1)
        return boxes_xyxy[kept].astype(np.float32), score[kept].astype(np.float32)


def train(root: Path, val_fraction: float, c: float, seed: int) -> tuple[HogSvm, dict]:
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    start = time.perf_counter()
    data = load_split(root, val_fraction)
    x_train, y_train = data["train"]
    x_val, y_val = data["val"]
    log.info("features: train %s, val %s (%.0f s)", x_train.shape, x_val.shape, time.perf_counter() - start)
    scaler = StandardScaler().fit(x_train)
    svm = LinearSVC(C=c, random_state=seed, max_iter=5000).fit(scaler.transform(x_train), y_train)
    model = HogSvm(scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32),
                   svm.coef_.ravel().astype(np.float32), float(svm.intercept_[0]))
    predicted = model.decision(x_val) > 0
    report = {
        "train_crops": int(len(y_train)), "val_crops": int(len(y_val)),
        "val_accuracy": float((predicted == y_val.astype(bool)).mean()),
        "val_vehicle_recall": float(predicted[y_val == 1].mean()),
        "val_non_vehicle_false_positive_rate": float(predicted[y_val == 0].mean()),
        "train_seconds": round(time.perf_counter() - start, 1),
        "C": c, "val_fraction": val_fraction,
    }
    log.info("validation (last %.0f%% of every folder): %s", 100 * val_fraction, report)
    return model, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=Path, default=VEHICLES, help="the vehicles/non-vehicles crop folders")
    parser.add_argument("--labels", type=Path, default=LABELS, help="COCO dev set to evaluate on")
    parser.add_argument("--json", type=Path, help="write the evaluation report here")
    parser.add_argument("--model-cache", type=Path, help="pickle the trained model here (reused when it exists)")
    parser.add_argument("--windows", default="48,64,96,128,192", help="window sides in frame pixels")
    parser.add_argument("--threshold", type=float, default=0.0, help="SVM decision value a window must exceed")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--C", dest="c", type=float, default=0.01, help="LinearSVC regularisation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    cv2.setNumThreads(1)
    if args.model_cache and args.model_cache.is_file():
        with args.model_cache.open("rb") as f:
            model, training = pickle.load(f)
    else:
        model, training = train(args.vehicles, args.val_fraction, args.c, args.seed)
        if args.model_cache:
            args.model_cache.parent.mkdir(parents=True, exist_ok=True)
            with args.model_cache.open("wb") as f:
                pickle.dump((model, training), f)
    model.windows_px = tuple(int(w) for w in args.windows.split(","))
    model.threshold = args.threshold
    frames = load_labelled_frames(args.labels)
    report = score_detector(frames, model)
    report["detector"] = {"name": "hog_svm", "windows_px": list(model.windows_px), "threshold": model.threshold,
                          "step_px_at_64": STEP_CELLS * CELL, "nms_iou": NMS_IOU, "training": training}
    if args.json:
        atomic_write_json(args.json, report)
    print(f"HOG+SVM: AP50 {report['ap50']:.3f}, recall {report['recall']:.3f}, precision "
          f"{report['precision'] if report['precision'] is None else round(report['precision'], 3)}, "
          f"FA/frame {report['false_alarms_per_frame']:.2f}, car-free detections "
          f"{report['empty_frame_detections']}, {report['fps']:.2f} fps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
