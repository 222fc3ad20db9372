"""Measure real-data car models: patch metrics, speed and scene detection; feeds ``results/real_car_models.{md,json}``.

Three parts, each printing one JSON object per model or setting:

``patches``: an exported ONNX model on the held-out part of the vehicles set
(the last 15 % of every source folder, the training run's own block split),
as plain crops and as fixed tile-like patches made from them
(``training.synthesis.synthesize_tiles``, seed 0): F1 of the positive class at
the threshold, share of negatives at the origin; plus batch inference time per
patch in ONNX Runtime.

``scenes``: the runtime ``Detector`` on a COCO-labelled frame set for a few
tilings; per threshold: recall and false alarms per frame at IoU 0.5, boxes on
car-free frames, and AP50 (pycocotools) over the boxes kept at the lowest
threshold.

Usage::

    python -m benchmarks.real_car_models patches --model exports/car64.onnx --data ../shared/data/vehicles
    python -m benchmarks.real_car_models scenes --model exports/car64.onnx --labels dev/scenes_dev.json \
        --tiling 64,32,1:0.5:0.25 --thresholds 0.5,1,1.5,2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from patchdet.runtime.card import read_artifact_card
from patchdet.runtime.detections import Detections, merge_boxes
from patchdet.runtime.detector import Detector, TilingConfig

# -- patches ----------------------------------------------------------------------------------------------


def _f1_and_origin(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = scores > threshold
    tp = float(np.sum(predicted & positive))
    precision = tp / max(float(np.sum(predicted)), 1.0)
    recall = tp / max(float(np.sum(positive)), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4),
            "negatives_at_origin": round(float(np.mean(scores[~positive] == 0.0)), 4),
            "positives_at_origin": round(float(np.mean(scores[positive] == 0.0)), 4)}


def _onnx_scores(session, batch_nchw: np.ndarray, chunk: int = 512) -> np.ndarray:
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    parts = []
    for start in range(0, len(batch_nchw), chunk):
        result = dict(zip(outputs, session.run(None, {name: batch_nchw[start:start + chunk]}), strict=True))
        parts.append(result["score"].reshape(-1))
    return np.concatenate(parts)


def patches(model: str, data: str, val_fraction: float, threshold: float | None, threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from patchdet.runtime.imagefolder import normalize_batch
    from patchdet.training.config import AugmentConfig
    from patchdet.training.data import load_block_split
    from patchdet.training.synthesis import synthesize_tiles

    card = read_artifact_card(model)
    side = card.input_wh[0]
    threshold = card.threshold if threshold is None else threshold
    with contextlib.redirect_stderr(io.StringIO()):
        _, held_out = load_block_split(data, ["vehicles", "non-vehicles"], side, val_fraction)
    tiles = synthesize_tiles(held_out, AugmentConfig(kind="tiles"), (1,), seed=0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    report: dict[str, Any] = {"model": model, "input": side, "threshold": threshold}
    for name, image_set in (("held_out_crops", held_out), ("held_out_tiles", tiles)):
        images = image_set.images.permute(0, 2, 3, 1).numpy()
        batch = normalize_batch(images, card.mean, card.std)
        scores = _onnx_scores(session, batch)
        report[name] = _f1_and_origin(scores, image_set.labels.numpy() == 0, threshold) | {"n": len(scores)}
    batch = normalize_batch(held_out.images[:256].permute(0, 2, 3, 1).numpy(), card.mean, card.std)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        session.run(None, {session.get_inputs()[0].name: batch})
        times.append(time.perf_counter() - start)
    report["us_per_patch_batch256"] = round(float(np.median(times[2:])) / len(batch) * 1e6, 1)
    report["ort_threads"] = threads
    del torch
    return report


# -- scenes -----------------------------------------------------------------------------------------------


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def _match(dets: Detections, truth_xyxy: np.ndarray, match_iou: float = 0.5) -> tuple[int, int]:
    """(true positives, false alarms) at IoU ``match_iou``, greedy by score (COCO's rule)."""
    used = np.zeros(len(truth_xyxy), dtype=bool)
    tp = 0
    for i in np.argsort(-dets.score, kind="stable"):
        if len(truth_xyxy) == 0:
            break
        iou = _iou(dets.xyxy[i].astype(np.float64), truth_xyxy)
        iou[used] = -1
        best = int(np.argmax(iou))
        if iou[best] >= match_iou:
            used[best] = True
            tp += 1
    return tp, len(dets) - tp


def _ap50(labels: dict, results: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = labels
        truth.createIndex()
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.params.maxDets = [1, 10, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return round(float(evaluation.stats[1]), 4)


def scenes(model: str, labels_path: str, tiling: TilingConfig, thresholds: list[float], threads: int,
           exclude: tuple[str, ...] = (), match_iou: float = 0.5) -> dict[str, Any]:
    labels = json.loads(Path(labels_path).read_text(encoding="utf-8"))
    labels["images"] = [im for im in labels["images"] if not im["file_name"].startswith(exclude)]
    kept_ids = {im["id"] for im in labels["images"]}
    labels["annotations"] = [a for a in labels["annotations"] if a["image_id"] in kept_ids]
    car_id = next(c["id"] for c in labels["categories"] if c["name"] == "car")
    low = min(thresholds)
    detectors: dict[tuple[float, ...], Detector] = {}
    per_image = []
    started = time.perf_counter()
    tiles_total = 0
    for image in labels["images"]:
        frame = cv2.imread(str(Path(labels_path).parent / image["file_name"]))
        # The runtime refuses a scale whose tile is larger than the frame (576x240 plates): skip those scales here.
        fits = tuple(s for s in tiling.scales
                     if tiling.tile_wh[0] / s <= frame.shape[1] and tiling.tile_wh[1] / s <= frame.shape[0])
        if fits not in detectors:
            detectors[fits] = Detector(model, backend="onnxruntime", threshold=low, threads=threads,
                                       tiling=dataclasses.replace(tiling, scales=fits))
        result = detectors[fits](frame)
        tiles_total += len(result.tile_scores)
        truth = np.asarray([a["bbox"] for a in labels["annotations"]
                            if a["image_id"] == image["id"] and a["category_id"] == car_id], dtype=np.float64)
        truth_xyxy = np.concatenate([truth[:, :2], truth[:, :2] + truth[:, 2:]], axis=1) if len(truth) else \
            np.zeros((0, 4))
        per_image.append((image, result, truth_xyxy))
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {"model": model, "labels": labels_path, "frames": len(per_image),
                              "cars": int(sum(len(t) for _, _, t in per_image)),
                              "car_free_frames": int(sum(len(t) == 0 for _, _, t in per_image)),
                              "excluded_prefixes": list(exclude), "match_iou": match_iou,
                              "tiling": {"tile_wh": list(tiling.tile_wh), "stride_wh": list(tiling.stride_wh),
                                         "scales": list(tiling.scales), "merge": tiling.merge,
                                         "iou_threshold": tiling.iou_threshold},
                              "tiles_per_frame": round(tiles_total / max(len(per_image), 1), 1),
                              "seconds_per_frame": round(seconds / max(len(per_image), 1), 3),
                              "thresholds": {}}
    results_low: list[dict] = []
    for threshold in sorted(thresholds):
        tp = fa = car_free_boxes = car_free_hit = 0
        for image, result, truth_xyxy in per_image:
            keep = np.flatnonzero(result.tile_scores > threshold)
            tiles = Detections(result.tile_xyxy[keep].astype(np.float32), result.tile_scores[keep],
                               np.zeros(len(keep), np.int64), keep)
            dets = merge_boxes(tiles, tiling.merge, tiling.iou_threshold)
            hit, false = _match(dets, truth_xyxy, match_iou)
            tp += hit
            fa += false
            if len(truth_xyxy) == 0:
                car_free_boxes += len(dets)
                car_free_hit += int(len(dets) > 0)
            if threshold == low:
                for box, score in zip(dets.xyxy.tolist(), dets.score.tolist(), strict=True):
                    results_low.append({"image_id": image["id"], "category_id": car_id, "score": float(score),
                                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
        report["thresholds"][str(threshold)] = {
            "recall": round(tp / max(report["cars"], 1), 4),
            "false_alarms_per_frame": round(fa / max(len(per_image), 1), 3),
            "boxes_on_car_free_frames": car_free_boxes,
            "car_free_frames_with_a_box": car_free_hit,
        }
    report["ap50"] = _ap50(labels, results_low)
    return report


def _tiling(text: str, iou: float) -> TilingConfig:
    """``TILE,STRIDE,S1:S2:...`` -> TilingConfig with NMS."""
    tile, stride, scales = text.split(",")
    return TilingConfig(tile_wh=int(tile), stride_wh=int(stride), scales=tuple(float(s) for s in scales.split(":")),
                        merge="nms", iou_threshold=iou)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("patches")
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--threshold", type=float)
    p.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("scenes")
    s.add_argument("--model", action="append", required=True)
    s.add_argument("--labels", required=True)
    s.add_argument("--tiling", action="append", required=True, help="TILE,STRIDE,S1:S2:... (repeatable)")
    s.add_argument("--iou", type=float, default=0.3)
    s.add_argument("--thresholds", default="0.5,1,1.5,2,3")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--match-iou", type=float, default=0.5, help="IoU for recall / false alarms (AP50 stays at 0.5)")
    s.add_argument("--exclude", default="", help="skip frames whose file names start with these, comma separated")
    args = parser.parse_args(argv)
    for model in args.model:
        if args.part == "patches":
            print(json.dumps(patches(model, args.data, args.val_fraction, args.threshold, args.threads)), flush=True)
            continue
        for text in args.tiling:
            exclude = tuple(e for e in args.exclude.split(",") if e)
            report = scenes(model, args.labels, _tiling(text, args.iou),
                            [float(t) for t in args.thresholds.split(",")], args.threads, exclude,
                            args.match_iou)
            print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
