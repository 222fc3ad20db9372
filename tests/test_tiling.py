"""Tiling geometry: a labelled table of expected grids and hypothesis properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchdet.runtime.tiling import (
    coverage_max,
    dense_window_boxes,
    multiscale_grid,
    pad_to_multiple,
    tile_grid,
)

GRID_TABLE = [
    pytest.param((4, 4), (2, 2), (2, 2), [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 2, 4], [2, 2, 4, 4]], id="exact-fit"),
    pytest.param((5, 2), (2, 2), (2, 2), [[0, 0, 2, 2], [2, 0, 4, 2], [3, 0, 5, 2]], id="last-column-snapped"),
    pytest.param((4, 2), (2, 2), (1, 1), [[0, 0, 2, 2], [1, 0, 3, 2], [2, 0, 4, 2]], id="overlap"),
    pytest.param((3, 3), (3, 3), (1, 1), [[0, 0, 3, 3]], id="frame-equals-tile"),
    pytest.param((6, 2), (2, 2), (3, 3), [[0, 0, 2, 2], [3, 0, 5, 2], [4, 0, 6, 2]], id="stride-larger-than-tile"),
    pytest.param((3, 5), (3, 2), (3, 2), [[0, 0, 3, 2], [0, 2, 3, 4], [0, 3, 3, 5]], id="last-row-snapped"),
]


@pytest.mark.parametrize(("frame_wh", "tile_wh", "stride_wh", "expected"), GRID_TABLE)
def test_tile_grid_table(frame_wh, tile_wh, stride_wh, expected):
    boxes = tile_grid(frame_wh, tile_wh, stride_wh)
    assert boxes.dtype == np.int32
    np.testing.assert_array_equal(boxes, np.array(expected, np.int32))


def test_tile_grid_1080p_counts():
    # 1920 = 20 * 96; 1080 = 11 * 96 + 24 -> one snapped 12th row
    assert len(tile_grid((1920, 1080), 96, 96)) == 20 * 12
    assert len(tile_grid((1280, 720), 96, 48)) == 26 * 14


@pytest.mark.parametrize(
    ("frame_wh", "tile", "stride", "match"),
    [
        ((100, 100), 0, 10, "tile size 0 is invalid"),
        ((100, 100), -4, 10, "tile size -4 is invalid"),
        ((100, 100), 10, 0, "stride 0 is invalid"),
        ((100, 100), (10, 10, 10), 10, "tile size"),
        ((100, 100), 10.5, 10, "tile size 10.5 is invalid"),
        ((50, 100), 96, 96, "frame size 50x100 is smaller than the tile 96x96"),
    ],
)
def test_tile_grid_rejects_bad_input(frame_wh, tile, stride, match):
    with pytest.raises(ValueError, match=match):
        tile_grid(frame_wh, tile, stride)


def test_multiscale_grid_sizes_and_index():
    boxes, index = multiscale_grid((200, 100), 50, 50, (1.0, 0.5), return_scale_index=True)
    sizes = boxes[:, 2:] - boxes[:, :2]
    assert set(map(tuple, sizes[index == 0].tolist())) == {(50, 50)}
    assert set(map(tuple, sizes[index == 1].tolist())) == {(100, 100)}
    assert (index == 1).sum() == 2  # 200x100 holds two 100x100 tiles


@pytest.mark.parametrize("scales", [(), (0.0,), (-1.0,), (float("nan"),)])
def test_multiscale_grid_rejects_bad_scales(scales):
    with pytest.raises(ValueError, match="scale"):
        multiscale_grid((100, 100), 10, 10, scales)


def test_multiscale_grid_skips_scales_too_coarse_for_the_frame():
    boxes, index = multiscale_grid((100, 100), 50, 50, (1.0, 0.25), return_scale_index=True)
    assert len(boxes) == 4 and set(index.tolist()) == {0}  # 200 px tiles do not fit a 100 px frame
    with pytest.raises(ValueError, match="at scale 0.25"):  # no scale fits: say which
        multiscale_grid((100, 100), 50, 50, (0.25,))


def test_dense_window_boxes_layout_and_clip():
    boxes = dense_window_boxes((2, 3), (32, 32), 16)
    np.testing.assert_array_equal(boxes[:4], [[0, 0, 32, 32], [16, 0, 48, 32], [32, 0, 64, 32], [0, 16, 32, 48]])
    clipped = dense_window_boxes((2, 3), (32, 32), 16, frame_wh=(50, 40))
    assert clipped[:, 2].max() == 50 and clipped[:, 3].max() == 40


def test_pad_to_multiple():
    assert pad_to_multiple((1920, 1080), 16) == (1920, 1088)
    assert pad_to_multiple((16, 17), 16) == (16, 32)


@st.composite
def grids(draw):
    tile_w = draw(st.integers(1, 40))
    tile_h = draw(st.integers(1, 40))
    frame_w = draw(st.integers(tile_w, 120))
    frame_h = draw(st.integers(tile_h, 120))
    stride_w = draw(st.integers(1, tile_w))  # stride <= tile: full coverage is promised
    stride_h = draw(st.integers(1, tile_h))
    return (frame_w, frame_h), (tile_w, tile_h), (stride_w, stride_h)


def _coordinate_frame(frame_wh):
    w, h = frame_wh
    ys, xs = np.mgrid[0:h, 0:w]
    return xs.astype(np.int64), ys.astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_grid_covers_every_pixel_and_stays_inside(params):
    frame_wh, tile_wh, stride_wh = params
    boxes = tile_grid(frame_wh, tile_wh, stride_wh)
    w, h = frame_wh
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) == np.array(tile_wh)).all()
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


@settings(max_examples=60, deadline=None)
@given(grids(), st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0]), min_size=1, max_size=3, unique=True))
def test_multiscale_boxes_map_back_exactly(params, scales):
    frame_wh, tile_wh, stride_wh = params
    try:
        boxes, index = multiscale_grid(frame_wh, tile_wh, stride_wh, scales, return_scale_index=True)
    except ValueError as exc:  # a coarse scale whose tiles do not fit: allowed to refuse, with a reason
        assert "smaller than the tile" in str(exc)
        return
    xs, ys = _coordinate_frame(frame_wh)
    w, h = frame_wh
    for (x0, y0, x1, y1), k in zip(boxes.tolist(), index.tolist(), strict=True):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        crop_x, crop_y = xs[y0:y1, x0:x1], ys[y0:y1, x0:x1]
        # the crop is exactly the box: its pixels carry the box's own coordinates
        assert (crop_x[0, 0], crop_y[0, 0], crop_x[-1, -1] + 1, crop_y[-1, -1] + 1) == (x0, y0, x1, y1)
        expected_w = max(1, round(tile_wh[0] / scales[k]))
        assert x1 - x0 == expected_w
    for k in set(index.tolist()):  # every scale that fits covers the whole frame
        covered = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in boxes[index == k]:
            covered[y0:y1, x0:x1] = True
        assert covered.all()


def test_coverage_max_matches_brute_force():
    rng = np.random.default_rng(0)
    boxes = tile_grid((40, 30), (10, 10), (5, 5))
    values = rng.random(len(boxes)).astype(np.float32)
    out = coverage_max((40, 30), boxes, values)
    expected = np.zeros((30, 40), np.float32)
    for (x0, y0, x1, y1), v in zip(boxes, values, strict=True):
        expected[y0:y1, x0:x1] = np.maximum(expected[y0:y1, x0:x1], v)
    np.testing.assert_array_equal(out, expected)

