"""The result type (struct of arrays) and merging positive tiles into object boxes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MERGE_METHODS = ("connected", "nms", "fuse", "none")


@dataclass
class Detections:
    """Boxes found in one frame, one row per box.

    Attributes:
        xyxy: float32 [N, 4] boxes in frame pixels (exclusive ends).
        score: float32 [N] detection score (modulus, max cosine or max probability).
        class_id: int64 [N] index into the model card's ``class_names``.
        tile_index: int64 [N] index of the tile (or dense window) the box came
            from; for merged boxes, the tile with the highest score.
    """

    xyxy: np.ndarray
    score: np.ndarray
    class_id: np.ndarray
    tile_index: np.ndarray

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if self.xyxy.size == 0:
            self.xyxy = self.xyxy.reshape(0, 4)
        self.score = np.asarray(self.score, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        self.tile_index = np.asarray(self.tile_index, dtype=np.int64).reshape(-1)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"Detections.xyxy has shape {self.xyxy.shape}: expected [N, 4]")
        n = len(self.xyxy)
        for name in ("score", "class_id", "tile_index"):
            length = len(getattr(self, name))
            if length != n:
                raise ValueError(f"Detections.{name} has {length} rows for {n} boxes: expected {n}")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int] | Sequence[bool]) -> Detections:
        """Select rows by an int, a slice, an int index array or a bool mask [N]."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.size == 0 and index.dtype != bool:
                index = index.astype(np.int64)
            if index.dtype == bool and index.shape != (len(self),):
                raise ValueError(f"Detections mask has shape {index.shape}: expected ({len(self)},)")
        return Detections(self.xyxy[index], self.score[index], self.class_id[index], self.tile_index[index])

    @classmethod
    def empty(cls) -> Detections:
        """No detections (all arrays with zero rows)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def merge(cls, items: Sequence[Detections]) -> Detections:
        """Concatenate several results (row order kept)."""
        items = list(items)
        if not items:
            return cls.empty()
        return cls(
            np.concatenate([d.xyxy for d in items]),
            np.concatenate([d.score for d in items]),
            np.concatenate([d.class_id for d in items]),
            np.concatenate([d.tile_index for d in items]),
        )

    def to_records(self) -> dict[str, list]:
        """Plain lists for JSON: ``boxes`` (xyxy), ``scores``, ``class_ids``, ``tile_indices``."""
        return {
            "boxes": [[round(float(v), 2) for v in box] for box in self.xyxy],
            "scores": [round(float(v), 5) for v in self.score],
            "class_ids": [int(v) for v in self.class_id],
            "tile_indices": [int(v) for v in self.tile_index],
        }


def box_area(xyxy: np.ndarray) -> np.ndarray:
    """float64 [..., ] areas of xyxy boxes [..., 4]."""
    xyxy = np.asarray(xyxy, dtype=np.float64)
    return (xyxy[..., 2] - xyxy[..., 0]) * (xyxy[..., 3] - xyxy[..., 1])


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU.

    Args:
        a_xyxy: float [N, 4].
        b_xyxy: float [M, 4].

    Returns:
        float32 [N, M].
    """
    a = np.asarray(a_xyxy, dtype=np.float64)[:, None, :]
    b = np.asarray(b_xyxy, dtype=np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def _raster_labels(xyxy: np.ndarray) -> np.ndarray:
    """Connected-component label per box (touching = overlap, shared edge or corner), via a compressed raster.

    Box edges are mapped to their rank among all distinct x (and y) edges, so
    the raster has at most (2N)^2 cells; two boxes with a gap between them
    keep at least one empty cell apart, so 8-connectivity on the raster is
    exactly the closed-interval touching relation.
    """
    xs, x_rank = np.unique(xyxy[:, [0, 2]], return_inverse=True)
    ys, y_rank = np.unique(xyxy[:, [1, 3]], return_inverse=True)
    x_rank = x_rank.reshape(-1, 2) * 2  # doubled: a zero-width box still paints one cell
    y_rank = y_rank.reshape(-1, 2) * 2
    # Paint every box at once: +1/-1 at its corners of a difference array, then a 2-D prefix sum
    # (a Python loop over boxes took 1.4 ms, this 0.5 ms, for the ~1,400 positive windows of a dense 720p frame).
    shape = (2 * len(ys) + 2, 2 * len(xs) + 2)
    corners_y = np.concatenate([y_rank[:, 0], y_rank[:, 0], y_rank[:, 1] + 1, y_rank[:, 1] + 1])
    corners_x = np.concatenate([x_rank[:, 0], x_rank[:, 1] + 1, x_rank[:, 0], x_rank[:, 1] + 1])
    signs = np.repeat(np.array([1, -1, -1, 1], np.int64), len(xyxy))
    diff = np.bincount(np.ravel_multi_index((corners_y, corners_x), shape), signs, shape[0] * shape[1])
    raster = (diff.reshape(shape).cumsum(axis=0).cumsum(axis=1)[:-1, :-1] > 0.5).astype(np.uint8)
    _, labels = cv2.connectedComponents(raster, connectivity=8)
    return labels[y_rank[:, 0], x_rank[:, 0]].astype(np.int64)


def _group_boxes(dets: Detections, labels: np.ndarray) -> Detections:
    """One box per label: the union box, the group's best score and that tile's index."""
    uniq, group = np.unique(labels, return_inverse=True)
    k = len(uniq)
    x0 = np.full(k, np.inf, np.float32)
    y0 = np.full(k, np.inf, np.float32)
    x1 = np.full(k, -np.inf, np.float32)
    y1 = np.full(k, -np.inf, np.float32)
    np.minimum.at(x0, group, dets.xyxy[:, 0])
    np.minimum.at(y0, group, dets.xyxy[:, 1])
    np.maximum.at(x1, group, dets.xyxy[:, 2])
    np.maximum.at(y1, group, dets.xyxy[:, 3])
    order = np.lexsort((-dets.score, group))  # per group, best score first
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    return Detections(np.stack([x0, y0, x1, y1], axis=1), dets.score[first], dets.class_id[first],
                      dets.tile_index[first])


def _merge_connected_once(dets: Detections) -> Detections:
    parts = []
    for cls in np.unique(dets.class_id):
        group = dets[dets.class_id == cls]
        parts.append(_group_boxes(group, _raster_labels(group.xyxy)))
    merged = Detections.merge(parts)
    return merged[np.argsort(-merged.score, kind="stable")]


def merge_connected(dets: Detections) -> Detections:
    """Union of touching or overlapping boxes of the same class.

    Each group of boxes connected by overlap or a shared edge/corner becomes
    its bounding box with the group's highest score (and that box's tile
    index). Repeated until no two results of a class touch, so the function
    is idempotent. Results are sorted by descending score.
    """
    if len(dets) == 0:
        return Detections.empty()
    merged = _merge_connected_once(dets)
    while True:
        again = _merge_connected_once(merged)
        if len(again) == len(merged):
            return again
        merged = again


def nms_indices(xyxy: np.ndarray, score: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression (numpy).

    Args:
        xyxy: float [N, 4] boxes.
        score: float [N] scores.
        iou_threshold: A box is dropped when its IoU with a kept, higher-scoring
            box is above this value.

    Returns:
        int64 [K] kept indices, by descending score.
    """
    order = np.argsort(-np.asarray(score), kind="stable")
    keep: list[int] = []
    boxes = np.asarray(xyxy, dtype=np.float32)
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def nested_fraction(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """float [N, M]: the intersection of each pair over the smaller box's area (1 = one box lies inside the other)."""
    a = np.asarray(a_xyxy, dtype=np.float64)[:, None, :]
    b = np.asarray(b_xyxy, dtype=np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    smaller = np.minimum(box_area(a), box_area(b))
    return np.where(smaller > 0, iw * ih / np.where(smaller > 0, smaller, 1), 0)


# A box that lies this much inside a higher-scoring box of its class (or holds one that much) is the same object
# seen at another scale: tiles of scale 1 and 0.5 nest with an IoU of only 0.25, under any NMS threshold.
NESTED_FRACTION = 0.8


# A kept box that lies this much inside a larger positive window whose score is at least this fraction of its own
# takes that window's box: training tiles include cars cut by the tile border, so a window on the front half of a
# near car can outscore the window that holds the whole car (dev set, threshold 3: false alarms per frame 0.27 ->
# 0.14, AP50 0.203 -> 0.247; `benchmarks/results/scenes_eval.md`).
ENCLOSING_SCORE_RATIO = 0.85
ENCLOSING_MIN_AREA_RATIO = 1.2


def _nms_drop_nested(dets: Detections, iou_threshold: float) -> Detections:
    keep = []
    for cls in np.unique(dets.class_id):
        idx = np.flatnonzero(dets.class_id == cls)
        boxes = dets.xyxy[idx].astype(np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        scores = dets.score[idx].astype(np.float64)
        scores = scores - scores.min() + 1.0  # OpenCV needs scores above a threshold >= 0; only the order matters
        kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, float(iou_threshold))
        keep.append(idx[np.asarray(kept, dtype=np.int64).reshape(-1)])
    kept = np.concatenate(keep)
    kept = kept[np.argsort(-dets.score[kept], kind="stable")]
    final: list[int] = []
    for i in kept:  # by descending score: keep a box unless it nests with a better one of its class
        same = [j for j in final if dets.class_id[j] == dets.class_id[i]]
        if not same or nested_fraction(dets.xyxy[[i]], dets.xyxy[same]).max() < NESTED_FRACTION:
            final.append(int(i))
    return dets[np.asarray(final, dtype=np.int64)]


def grow_to_enclosing(kept: Detections, windows: Detections) -> Detections:
    """Each kept box replaced by the largest window of its class that holds it (``NESTED_FRACTION`` of it inside),
    is at least ``ENCLOSING_MIN_AREA_RATIO`` times its area and scores at least ``ENCLOSING_SCORE_RATIO`` of its
    score; score, class and tile index stay the kept box's. Returns ``kept`` itself when no box grows."""
    if len(kept) == 0 or len(windows) == 0:
        return kept
    inside = nested_fraction(kept.xyxy, windows.xyxy)  # [K, N]: intersection / the smaller (the kept) box
    kept_area, window_area = box_area(kept.xyxy), box_area(windows.xyxy)
    candidate = ((inside >= NESTED_FRACTION)
                 & (window_area[None, :] >= ENCLOSING_MIN_AREA_RATIO * kept_area[:, None])
                 & (windows.score[None, :] >= ENCLOSING_SCORE_RATIO * kept.score[:, None])
                 & (windows.class_id[None, :] == kept.class_id[:, None]))
    if not candidate.any():
        return kept
    largest = np.argmax(np.where(candidate, window_area[None, :], -1.0), axis=1)
    grows = candidate.any(axis=1)
    xyxy = kept.xyxy.copy()
    xyxy[grows] = windows.xyxy[largest[grows]]
    return Detections(xyxy, kept.score, kept.class_id, kept.tile_index)


def merge_nms(dets: Detections, iou_threshold: float = 0.3) -> Detections:
    """Per-class non-maximum suppression (OpenCV's ``NMSBoxes``), nested boxes of one object dropped
    (``NESTED_FRACTION``), each kept box grown to the window that holds the whole object
    (:func:`grow_to_enclosing`), and the grown boxes merged again; sorted by descending score. Idempotent."""
    if len(dets) == 0:
        return Detections.empty()
    kept = _nms_drop_nested(dets, iou_threshold)
    grown = grow_to_enclosing(kept, dets)
    return kept if grown is kept else _nms_drop_nested(grown, iou_threshold)


def merge_fused(dets: Detections, iou_threshold: float = 0.3) -> Detections:
    """Per-class greedy clustering by IoU, each cluster fused into its members' score-weighted mean box.

    Positive tiles overlap a car from several sides and at several scales; the best tile alone is off by
    up to a stride, while the weighted mean of the tiles that see the same car fits it closer (the idea of
    weighted boxes fusion). The keeper's score and tile index are kept. Sorted by descending score.
    """
    if len(dets) == 0:
        return Detections.empty()
    rows, boxes = [], []
    for cls in np.unique(dets.class_id):
        idx = np.flatnonzero(dets.class_id == cls)
        order = idx[np.argsort(-dets.score[idx], kind="stable")]
        while order.size:
            iou = box_iou(dets.xyxy[order[:1]], dets.xyxy[order])[0]
            members = order[iou > iou_threshold] if order.size > 1 else order[:1]
            members = np.union1d(members, order[:1])
            weights = np.maximum(dets.score[members].astype(np.float64), 1e-6)
            boxes.append((dets.xyxy[members] * weights[:, None]).sum(axis=0) / weights.sum())
            rows.append(int(order[0]))
            order = order[~np.isin(order, members)]
    fused = dets[np.asarray(rows, dtype=np.int64)]
    fused = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), fused.score, fused.class_id, fused.tile_index)
    return fused[np.argsort(-fused.score, kind="stable")]


def merge_boxes(dets: Detections, method: str = "connected", iou_threshold: float = 0.3) -> Detections:
    """Turn positive tiles into object boxes.

    Args:
        dets: Positive tiles as detections (one row per tile).
        method: ``connected`` (union of touching/overlapping tiles, score = max),
            ``nms`` (keep the best of overlapping tiles), ``fuse`` (``merge_fused``: the score-weighted
            mean of overlapping tiles) or ``none`` (tiles as they are).
        iou_threshold: IoU above which ``nms`` suppresses a box.

    Returns:
        Merged detections.

    Raises:
        ValueError: For an unknown method or an IoU threshold outside [0, 1].
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method {method!r} is unknown: expected one of {', '.join(MERGE_METHODS)}")
    if method == "connected":
        return merge_connected(dets)
    if method in ("nms", "fuse"):
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"NMS IoU threshold {iou_threshold!r} is invalid: expected a number in [0, 1]")
        return merge_nms(dets, iou_threshold) if method == "nms" else merge_fused(dets, iou_threshold)
    return dets
