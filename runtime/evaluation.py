"""Detection quality on a labelled frame set: ``evaluate_detections(cfg) -> dict``. No torch.

The labels are a COCO detection file (``images``, ``annotations``,
``categories`` with one category named ``car``); image paths are relative to
the JSON file (or to ``images_dir``). Boxes with ``iscrowd: 1`` mark cars too
small or too hidden to require: detections on them are neither hits nor false
alarms. Images with the field ``"car_free": true`` hold no car at all: every
detection there counts in ``empty_frame_detections``.

Any detector plugs in as a callable ``frame_bgr uint8 [H, W, 3] -> (xyxy
float32 [N, 4], score float32 [N])`` (:func:`score_detector`);
:func:`evaluate_detections` builds a ``patchdet.runtime.detector.Detector``
exactly as ``patchdet detect`` does and scores it.

Matching and AP come from pycocotools (COCO rules: greedy by score, IoU >= 0.5,
crowd boxes matched by the fraction of the detection they cover). ``ap50`` is
the area under the detector's precision-recall curve on the frames with cars,
from the boxes it outputs: a patch detector outputs only boxes above its
threshold, so its curve stops at its operating point. ``recall``,
``precision`` and ``false_alarms_per_frame`` are at the operating point (every
box the detector returned), on the frames with cars; the car-free frames only
count ``empty_frame_detections``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.settings import DetectorSettings

log = logging.getLogger(__name__)

__all__ = ["DetectionEvalConfig", "LabelledFrames", "DetectFn", "evaluate_detections", "load_labelled_frames",
           "score_detector"]

CATEGORY = "car"
IOU_THRESHOLD = 0.5
# COCOeval keeps the highest-scoring detections per image up to this many; no detector here comes close.
MAX_DETECTIONS_PER_FRAME = 1000
# A box may overhang its frame by this much (rounding of hand-typed or rescaled coordinates).
EDGE_TOLERANCE_PX = 0.5
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")

DetectFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DetectionEvalConfig:
    """Settings of one detection evaluation (``patchdet evaluate MODEL --labels SET.json``).

    Attributes:
        labels: COCO detection JSON with a ``car`` category.
        images_dir: Folder the image ``file_name`` entries are relative to (``None``: the JSON's folder).
        detector: How to build the detector (model, card, backend, threshold, tiling); its
            ``source`` and output fields are not used. Defaults resolve as in ``patchdet detect``
            on a non-built-in source: the model card's threshold, tiles of the model's input size.
        size_buckets_px: Edges of the box-width buckets for recall by size, in frame pixels.
    """

    labels: str
    images_dir: str | None = None
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    size_buckets_px: tuple[int, ...] = (48, 96, 160)

    def __post_init__(self) -> None:
        edges = self.size_buckets_px
        if any(isinstance(e, bool) or not isinstance(e, int) or e <= 0 for e in edges) or \
                list(edges) != sorted(set(edges)):
            raise ValueError(f"size buckets {edges!r} are invalid: expected increasing positive integers")


@dataclass
class LabelledFrames:
    """A validated COCO set reduced to what the evaluation needs.

    Attributes:
        labels: The JSON file.
        coco: The COCO document with only the ``car`` category (id 1) and its annotations.
        paths: Image id -> image file.
        car_free: Ids of the images marked ``car_free``.
        groups: Image id -> source group (a video, or a photo folder like ``cars/*``).
    """

    labels: Path
    coco: dict[str, Any]
    paths: dict[int, Path]
    car_free: set[int]
    groups: dict[int, str]

    @property
    def image_ids(self) -> list[int]:
        return [int(image["id"]) for image in self.coco["images"]]

    def boxes(self, crowd: bool = False) -> list[dict[str, Any]]:
        """Annotations that must be found (or only the ignored ones, ``crowd=True``)."""
        return [a for a in self.coco["annotations"] if bool(a.get("iscrowd", 0)) == crowd]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _source_group(image: dict[str, Any]) -> str:
    source = image.get("source")
    if not isinstance(source, str) or not source:
        return "all"
    if source.lower().endswith(VIDEO_SUFFIXES):
        return source
    parent = str(Path(source).parent)
    return f"{parent}/*" if parent != "." else "*"


def load_labelled_frames(labels: str | Path, images_dir: str | Path | None = None) -> LabelledFrames:
    """Read and check a COCO detection file.

    Raises:
        FileNotFoundError: The JSON or an image file does not exist.
        ValueError: Not a COCO detection file, no ``car`` category, an annotation on an
            unknown image, a box outside its frame or with no area, annotations on a
            ``car_free`` image. The message names the file and the field.
    """
    labels = Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(f"labels file {labels} does not exist")
    try:
        doc = json.loads(labels.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{labels} is not a COCO detection file: invalid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{labels} is not a COCO detection file: expected a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"{labels} is not a COCO detection file: expected a list under {key!r}")
    car_ids = [c.get("id") for c in doc["categories"] if isinstance(c, dict) and c.get("name") == CATEGORY]
    if not car_ids:
        names = [c.get("name") for c in doc["categories"] if isinstance(c, dict)]
        raise ValueError(f"{labels} has no {CATEGORY!r} category in 'categories' (found {names})")
    car_id = car_ids[0]
    root = Path(images_dir) if images_dir is not None else labels.parent
    if images_dir is not None and not root.is_dir():
        raise FileNotFoundError(f"images folder {root} does not exist")

    images, paths, car_free, groups, sizes = [], {}, set(), {}, {}
    for index, image in enumerate(doc["images"]):
        where = f"{labels} images[{index}]"
        if not isinstance(image, dict):
            raise ValueError(f"{where} is not an object")
        image_id, name = image.get("id"), image.get("file_name")
        width, height = image.get("width"), image.get("height")
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise ValueError(f"{where} has id {image_id!r}: expected an integer")
        if image_id in paths:
            raise ValueError(f"{where} repeats image id {image_id}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where} has file_name {name!r}: expected a relative path")
        for key, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{where} ({name}) has {key} {value!r}: expected a positive integer")
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"image {path} (image id {image_id} of {labels}) does not exist")
        paths[image_id] = path
        sizes[image_id] = (width, height)
        groups[image_id] = _source_group(image)
        if image.get("car_free", False) is True:
            car_free.add(image_id)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})

    annotations = []
    for index, ann in enumerate(doc["annotations"]):
        where = f"{labels} annotations[{index}]"
        if not isinstance(ann, dict):
            raise ValueError(f"{where} is not an object")
        if ann.get("category_id") != car_id:
            continue  # other categories are not scored
        image_id, bbox = ann.get("image_id"), ann.get("bbox")
        if image_id not in paths:
            raise ValueError(f"{where} has image_id {image_id!r}: no image with that id")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise ValueError(f"{where} has bbox {bbox!r}: expected [x, y, width, height] numbers")
        x, y, w, h = (float(v) for v in bbox)
        frame_w, frame_h = sizes[image_id]
        if w <= 0 or h <= 0:
            raise ValueError(f"{where} has bbox {bbox}: expected a positive width and height")
        if x < -EDGE_TOLERANCE_PX or y < -EDGE_TOLERANCE_PX or x + w > frame_w + EDGE_TOLERANCE_PX or \
                y + h > frame_h + EDGE_TOLERANCE_PX:
            raise ValueError(f"{where} has bbox {bbox} outside its {frame_w}x{frame_h} frame "
                             f"({paths[image_id].name})")
        if image_id in car_free:
            raise ValueError(f"{where} puts a box on image {image_id} ({paths[image_id].name}), which is "
                             "marked car_free: expected no annotations there")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, False, True):
            raise ValueError(f"{where} has iscrowd {crowd!r}: expected 0 or 1")
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(crowd)})
    if not images:
        raise ValueError(f"{labels} has no images")
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": CATEGORY}]}
    return LabelledFrames(labels, coco, paths, car_free, groups)


def read_frame(path: Path, expected_wh: tuple[int, int]) -> np.ndarray:
    """The image as BGR uint8; OSError if unreadable, ValueError if its size is not the JSON's."""
    import cv2

    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise OSError(f"cannot read image {path}")
    if (frame.shape[1], frame.shape[0]) != tuple(expected_wh):
        raise ValueError(f"image {path} is {frame.shape[1]}x{frame.shape[0]}: the labels say "
                         f"{expected_wh[0]}x{expected_wh[1]}")
    return frame


def _as_boxes(output: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        xyxy, score = output
    except (TypeError, ValueError):
        raise ValueError("detector returned an unexpected value: expected (xyxy [N, 4], score [N])") from None
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4) if np.size(xyxy) else np.zeros((0, 4))
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if len(score) != len(xyxy):
        raise ValueError(f"detector returned {len(xyxy)} boxes and {len(score)} scores: expected one score per box")
    return xyxy, score


def _coco_eval(gt: Any, detections: list[dict[str, Any]], image_ids: Sequence[int]):
    """A finished ``COCOeval`` (IoU 0.5, one area range), or None when there is nothing to match."""
    from pycocotools.cocoeval import COCOeval

    if not image_ids:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        dt = gt.loadRes(detections) if detections else None
        if dt is None:
            return None
        evaluator = COCOeval(gt, dt, "bbox")
        params = evaluator.params
        params.imgIds = list(image_ids)
        params.iouThrs = np.array([IOU_THRESHOLD])
        params.maxDets = [MAX_DETECTIONS_PER_FRAME]
        params.areaRng = [[0.0, 1e12]]
        params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _ap50(evaluator) -> float:
    if evaluator is None:
        return 0.0
    precision = evaluator.eval["precision"][0, :, 0, 0, -1]  # [iou, recall, category, area, maxDets]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0


def _operating_point(evaluator, frames: LabelledFrames, image_ids: set[int], detections_by_image: dict[int, int],
                     bucket_edges: Sequence[int]) -> dict[str, Any]:
    """Recall, precision, false alarms and recall by size at the detector's own threshold."""
    required = [a for a in frames.boxes() if a["image_id"] in image_ids]
    found_ids: set[int] = set()
    matched, false_alarms, scored = 0, 0, 0
    if evaluator is not None:
        for record in evaluator.evalImgs:
            if record is None or record["image_id"] not in image_ids or record["image_id"] in frames.car_free:
                continue
            gt_ignore = np.asarray(record["gtIgnore"], bool)
            gt_matches = np.asarray(record["gtMatches"])[0]
            found_ids.update(int(g) for g, m, ign in zip(record["gtIds"], gt_matches, gt_ignore, strict=True)
                             if m > 0 and not ign)
            dt_matches = np.asarray(record["dtMatches"])[0]
            dt_ignore = np.asarray(record["dtIgnore"], bool)[0]
            scored += int((~dt_ignore).sum())
            matched += int(((dt_matches > 0) & ~dt_ignore).sum())
            false_alarms += int(((dt_matches == 0) & ~dt_ignore).sum())
    frames_with_cars = [i for i in image_ids if i not in frames.car_free]
    recall = len(found_ids) / len(required) if required else None
    precision = matched / scored if scored else None
    labels = [f"<{bucket_edges[0]}"] + [f"{a}-{b}" for a, b in zip(bucket_edges, bucket_edges[1:], strict=False)] + \
        [f">={bucket_edges[-1]}"]
    by_size = {label: {"boxes": 0, "found": 0} for label in labels}
    for ann in required:
        label = labels[int(np.searchsorted(bucket_edges, ann["bbox"][2], side="right"))]
        by_size[label]["boxes"] += 1
        by_size[label]["found"] += int(ann["id"] in found_ids)
    for bucket in by_size.values():
        bucket["recall"] = bucket["found"] / bucket["boxes"] if bucket["boxes"] else None
    return {
        "recall": recall,
        "precision": precision,
        "false_alarms": false_alarms,
        "false_alarms_per_frame": false_alarms / len(frames_with_cars) if frames_with_cars else None,
        "empty_frame_detections": sum(detections_by_image.get(i, 0) for i in image_ids if i in frames.car_free),
        "boxes": len(required),
        "found": len(found_ids),
        "detections": sum(detections_by_image.get(i, 0) for i in image_ids),
        "recall_by_width_px": by_size,
    }


def score_detector(frames: LabelledFrames, detect_fn: DetectFn, size_buckets_px: Sequence[int] = (48, 96, 160),
                   warmup: bool = True) -> dict[str, Any]:
    """Run ``detect_fn`` on every frame and compute the detection metrics.

    Args:
        frames: The labelled set (:func:`load_labelled_frames`).
        detect_fn: ``frame_bgr uint8 [H, W, 3] -> (xyxy [N, 4] frame pixels, score [N])``.
        size_buckets_px: Edges of the box-width buckets of ``recall_by_width_px``.
        warmup: Call ``detect_fn`` once on the first frame before timing (first calls are slow).

    Returns:
        ``ap50``, ``recall``, ``precision``, ``false_alarms_per_frame``,
        ``empty_frame_detections``, ``frames``, ``frames_with_cars``,
        ``car_free_frames``, ``boxes`` (cars to find), ``ignored_boxes``,
        ``found``, ``detections``, ``false_alarms``, ``recall_by_width_px``,
        ``fps`` (frames per second of ``detect_fn`` calls), ``seconds``, and
        ``by_source`` (the same metrics per video or photo folder).
    """
    from pycocotools.coco import COCO

    images = {int(image["id"]): image for image in frames.coco["images"]}
    detections: list[dict[str, Any]] = []
    per_image: dict[int, int] = {}
    seconds = 0.0
    for n, image_id in enumerate(frames.image_ids):
        image = images[image_id]
        frame = read_frame(frames.paths[image_id], (image["width"], image["height"]))
        if warmup and n == 0:
            detect_fn(frame)
        start = time.perf_counter()
        output = detect_fn(frame)
        seconds += time.perf_counter() - start
        xyxy, score = _as_boxes(output)
        per_image[image_id] = len(xyxy)
        for (x0, y0, x1, y1), s in zip(xyxy.tolist(), score.tolist(), strict=True):
            detections.append({"image_id": image_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                               "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = frames.coco
        gt.createIndex()

    def metrics_for(image_ids: list[int]) -> dict[str, Any]:
        with_cars = [i for i in image_ids if i not in frames.car_free]
        evaluator = _coco_eval(gt, [d for d in detections if d["image_id"] in set(with_cars)], with_cars)
        point = _operating_point(evaluator, frames, set(image_ids), per_image, size_buckets_px)
        ignored = sum(1 for a in frames.boxes(crowd=True) if a["image_id"] in set(image_ids))
        return {"ap50": _ap50(evaluator) if point["boxes"] else None, **point, "frames": len(image_ids), "frames_with_cars": len(with_cars),
                "car_free_frames": len(image_ids) - len(with_cars), "ignored_boxes": ignored}

    report = metrics_for(frames.image_ids)
    groups: dict[str, list[int]] = {}
    for image_id in frames.image_ids:
        groups.setdefault(frames.groups[image_id], []).append(image_id)
    report["by_source"] = {} if len(groups) < 2 else {
        name: {k: v for k, v in metrics_for(ids).items() if k != "recall_by_width_px"} for name, ids in groups.items()
    }
    report["seconds"] = round(seconds, 3)
    report["fps"] = len(frames.image_ids) / seconds if seconds > 0 else None
    report["labels"] = str(frames.labels)
    return report


def detector_function(detector: Any) -> DetectFn:
    """Wrap a ``Detector`` as a detect function, keeping only its positive class when it has several."""
    names = detector.card.class_names
    keep = names.index(detector.card.positive_class) if detector.card.positive_class in names else None

    def detect(frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = detector(frame_bgr).detections
        if keep is not None and len(names) > 1:
            found = found[found.class_id == keep]
        return found.xyxy, found.score

    return detect


def evaluate_detections(cfg: DetectionEvalConfig) -> dict[str, Any]:
    """Evaluate the detector ``cfg.detector`` describes on the labelled set ``cfg.labels``.

    The detector is built by ``patchdet.runtime.settings.load_detector`` (the same
    defaults as ``patchdet detect``: the card's threshold, tiles of the model's
    input size, stride = tile).

    Returns:
        The report of :func:`score_detector` plus ``detector`` (artifact, model,
        backend, threshold, tiling).

    Raises:
        FileNotFoundError / OSError: missing labels, image or model; unreadable image.
        ValueError: invalid labels (see :func:`load_labelled_frames`) or detector settings.
    """
    from patchdet.runtime.loop import opencv_threads
    from patchdet.runtime.settings import load_detector

    frames = load_labelled_frames(cfg.labels, cfg.images_dir)
    detector = load_detector(cfg.detector)
    log.info("evaluating %s (%s, threshold %.4g, tiles %s stride %s scales %s) on %d frames of %s",
             detector.artifact.name, detector.backend_name, detector.threshold, detector.tiling.tile_wh,
             detector.tiling.stride_wh, detector.tiling.scales, len(frames.image_ids), frames.labels)
    with opencv_threads(None if detector.backend_name == "opencv" else 1):
        report = score_detector(frames, detector_function(detector), cfg.size_buckets_px)
    return {**report, "detector": detector.describe()}
