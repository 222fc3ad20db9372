"""The Detections result type and merging positive tiles into object boxes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchdet.runtime.detections import Detections, box_iou, merge_boxes, nms_indices


def _dets(boxes, scores=None, classes=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    scores = np.linspace(1.0, 0.5, n) if scores is None else scores
    classes = np.zeros(n, np.int64) if classes is None else classes
    return Detections(boxes, scores, classes, np.arange(n))


def test_detections_validation_and_dtypes():
    d = _dets([[0, 0, 1, 1], [1, 1, 2, 2]])
    assert len(d) == 2
    assert d.xyxy.dtype == np.float32 and d.score.dtype == np.float32
    assert d.class_id.dtype == np.int64 and d.tile_index.dtype == np.int64
    with pytest.raises(ValueError, match=r"xyxy has shape \(2, 3\)"):
        Detections(np.zeros((2, 3)), np.zeros(2), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="score has 1 rows for 2 boxes"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2), np.zeros(2))


def test_detections_indexing_empty_and_merge():
    d = _dets([[0, 0, 1, 1], [1, 1, 2, 2], [5, 5, 6, 6]], scores=[0.1, 0.9, 0.5])
    assert d[1].score.tolist() == pytest.approx([0.9])
    masked = d[np.array([True, False, True])]
    assert masked.tile_index.tolist() == [0, 2]
    assert d[[2, 0]].tile_index.tolist() == [2, 0]
    assert d[1:].tile_index.tolist() == [1, 2]
    assert len(d[[]]) == 0
    with pytest.raises(ValueError, match="mask has shape"):
        d[np.array([True, False])]
    empty = Detections.empty()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
    both = Detections.merge([d, empty, d[0]])
    assert len(both) == 4 and both.tile_index.tolist() == [0, 1, 2, 0]
    assert len(Detections.merge([])) == 0
    records = d.to_records()
    assert records["boxes"][2] == [5.0, 5.0, 6.0, 6.0] and records["class_ids"] == [0, 0, 0]


def test_merge_connected_unions_touching_tiles():
    # an L of three touching tiles and one separate tile
    tiles = _dets([[0, 0, 10, 10], [10, 0, 20, 10], [10, 10, 20, 20], [40, 40, 50, 50]],
                  scores=[0.2, 0.9, 0.3, 0.5])
    merged = merge_boxes(tiles, "connected")
    assert len(merged) == 2
    np.testing.assert_array_equal(merged.xyxy, [[0, 0, 20, 20], [40, 40, 50, 50]])
    assert merged.score.tolist() == pytest.approx([0.9, 0.5])
    assert merged.tile_index.tolist() == [1, 3]


def test_merge_connected_keeps_classes_apart():
    tiles = _dets([[0, 0, 10, 10], [10, 0, 20, 10]], classes=np.array([0, 1]))
    assert len(merge_boxes(tiles, "connected")) == 2


def test_merge_connected_joins_groups_whose_boxes_overlap():
    # two diagonal pairs whose bounding boxes overlap although their tiles do not touch
    tiles = _dets([[0, 0, 10, 10], [20, 20, 30, 30], [25, 0, 35, 10], [0, 24, 10, 34],
                   [10, 10, 20, 20]])
    merged = merge_boxes(tiles, "connected")
    assert len(merged) == 1 and merged.xyxy[0].tolist() == [0, 0, 35, 34]


def test_merge_nms_matches_opencv():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, size=(40, 2))
    wh = rng.uniform(10, 40, size=(40, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    ours = nms_indices(boxes, scores, 0.3)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    theirs = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, 0.3)).reshape(-1)
    assert sorted(ours.tolist()) == sorted(theirs.tolist())


def test_merge_none_and_bad_method():
    tiles = _dets([[0, 0, 10, 10], [5, 0, 15, 10]])
    assert len(merge_boxes(tiles, "none")) == 2
    assert len(merge_boxes(tiles, "nms", iou_threshold=0.2)) == 1
    with pytest.raises(ValueError, match="merge method 'union' is unknown"):
        merge_boxes(tiles, "union")
    with pytest.raises(ValueError, match="IoU threshold 1.5"):
        merge_boxes(tiles, "nms", iou_threshold=1.5)
    assert len(merge_boxes(Detections.empty(), "connected")) == 0
    assert len(merge_boxes(Detections.empty(), "nms")) == 0


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    assert iou[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


@st.composite
def tile_sets(draw):
    n = draw(st.integers(0, 25))
    cells = draw(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=n, max_size=n, unique=True))
    scores = draw(st.lists(st.floats(0.0, 10.0, allow_nan=False, width=32), min_size=len(cells),
                           max_size=len(cells)))
    classes = draw(st.lists(st.integers(0, 1), min_size=len(cells), max_size=len(cells)))
    size = draw(st.sampled_from([8, 12]))  # 12 with a step of 8: overlapping tiles
    boxes = [[8 * c, 8 * r, 8 * c + size, 8 * r + size] for r, c in cells]
    return _dets(boxes, np.asarray(scores, np.float32), np.asarray(classes, np.int64))


def _as_set(d: Detections):
    return sorted(zip(map(tuple, d.xyxy.tolist()), d.score.tolist(), d.class_id.tolist(), strict=True))


@settings(max_examples=80, deadline=None)
@given(tile_sets(), st.sampled_from(["connected", "nms", "none"]))
def test_merge_is_idempotent_and_keeps_every_tile_inside(tiles, method):
    once = merge_boxes(tiles, method)
    twice = merge_boxes(once, method)
    assert _as_set(once) == _as_set(twice)
    if method == "connected" and len(tiles):
        # every input tile lies inside a merged box of its class; max score preserved
        for box, cls in zip(tiles.xyxy, tiles.class_id, strict=True):
            same = once.xyxy[once.class_id == cls]
            assert ((same[:, :2] <= box[:2]).all(axis=1) & (same[:, 2:] >= box[2:]).all(axis=1)).any()
        assert once.score.max() == pytest.approx(tiles.score.max())


@pytest.mark.parametrize(
    ("boxes", "scores", "expected"),
    [
        # two tiles on one car, weights 3:1 -> the fused box leans to the stronger tile
        ([[0, 0, 40, 40], [10, 0, 50, 40]], [3.0, 1.0], [[2.5, 0, 42.5, 40]]),
        # two cars side by side (IoU 0): two boxes, each its own tile
        ([[0, 0, 40, 40], [40, 0, 80, 40]], [2.0, 1.0], [[0, 0, 40, 40], [40, 0, 80, 40]]),
        # a lone tile is kept as it is
        ([[5, 5, 37, 37]], [1.5], [[5, 5, 37, 37]]),
    ],
)
def test_fuse_merge_averages_overlapping_tiles_by_score(boxes, scores, expected):
    dets = Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                      np.zeros(len(scores), np.int64), np.arange(len(scores)))
    fused = merge_boxes(dets, "fuse", iou_threshold=0.3)
    np.testing.assert_allclose(fused.xyxy, np.asarray(expected, np.float32), atol=1e-4)
    assert fused.score.tolist() == sorted(scores, reverse=True)[:len(expected)]
    again = merge_boxes(fused, "fuse", iou_threshold=0.3)  # fusing fused boxes changes nothing
    np.testing.assert_allclose(again.xyxy, fused.xyxy, atol=1e-4)


def test_nms_drops_a_box_nested_in_a_better_one():
    # a scale-1 tile inside a scale-0.5 tile on the same car: IoU 0.25 (kept by NMS at 0.3), nested 100 %
    dets = Detections(np.asarray([[0, 0, 64, 64], [16, 16, 48, 48], [100, 0, 132, 32]], np.float32),
                      np.asarray([2.0, 1.5, 1.2], np.float32), np.zeros(3, np.int64), np.arange(3))
    merged = merge_boxes(dets, "nms", iou_threshold=0.3)
    assert merged.xyxy.tolist() == [[0, 0, 64, 64], [100, 0, 132, 32]]
    assert merge_boxes(merged, "nms", iou_threshold=0.3).xyxy.tolist() == merged.xyxy.tolist()  # idempotent


@pytest.mark.parametrize(("whole_car_score", "grows"), [(2.7, True), (1.5, False)])
def test_a_box_on_part_of_a_car_grows_to_the_window_holding_the_whole_car(whole_car_score, grows):
    # the front half of a near car (score 3) inside the window on the whole car: the whole car's box wins when
    # its window scores nearly as high (>= 0.85 of the part), and only then; the score stays the part's
    part, whole, other = [40, 10, 100, 50], [0, 0, 120, 80], [300, 0, 340, 30]
    dets = Detections(np.asarray([part, whole, other], np.float32),
                      np.asarray([3.0, whole_car_score, 2.0], np.float32), np.zeros(3, np.int64), np.arange(3))
    merged = merge_boxes(dets, "nms", iou_threshold=0.3)
    assert merged.xyxy.tolist() == [whole if grows else part, other]
    assert merged.score.tolist() == [3.0, 2.0] and merged.tile_index.tolist() == [0, 2]
    assert merge_boxes(merged, "nms", iou_threshold=0.3).xyxy.tolist() == merged.xyxy.tolist()  # idempotent
