"""Frames to model input: the dense (mosaic) frame blob against a plain numpy reference."""

import cv2
import numpy as np
import pytest

from patchdet.runtime.preprocess import BufferPool, Normalization, mosaic_to_blob
from patchdet.runtime.tiling import mosaic_layout, mosaic_window_boxes, skyline_pack

NORM = Normalization((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _reference(frame_bgr: np.ndarray, pad_wh: tuple[int, int]) -> np.ndarray:
    rgb = frame_bgr[:, :, ::-1].astype(np.float32) / 255.0
    norm = (rgb - np.asarray(NORM.mean, np.float32)) / np.asarray(NORM.std, np.float32)
    out = np.zeros((1, 3, pad_wh[1], pad_wh[0]), np.float32)
    out[0, :, : frame_bgr.shape[0], : frame_bgr.shape[1]] = norm.transpose(2, 0, 1)
    return out


@pytest.mark.parametrize(
    ("frame_wh", "padded_wh"),
    [
        ((128, 96), (128, 96)),  # already a multiple of the stride: no padding
        ((100, 97), (112, 112)),  # padded right and bottom to multiples of 16
    ],
)
def test_dense_blob_matches_reference_and_pads_with_zero(frame_wh, padded_wh):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (frame_wh[1], frame_wh[0], 3), dtype=np.uint8)
    layout = mosaic_layout(frame_wh, 96, 96, (1.0,), 16)
    blob = mosaic_to_blob(frame, layout, NORM)
    assert layout.levels[0].size_wh == frame_wh and blob.shape == (1, 3, padded_wh[1], padded_wh[0]) and blob.dtype == np.float32
    np.testing.assert_allclose(blob, _reference(frame, padded_wh), atol=1e-5)


def test_pooled_dense_blob_is_reused_and_its_padding_rewritten():
    pool = BufferPool()
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (97, 100, 3), dtype=np.uint8)
    layout = mosaic_layout((100, 97), 96, 96, (1.0,), 16)
    first = mosaic_to_blob(frame, layout, NORM, pool)
    first[...] = 7.0  # a later frame must not see this frame's values, padding included
    assert pool.give(first)
    second = mosaic_to_blob(frame, layout, NORM, pool)
    assert second is first
    np.testing.assert_allclose(second, _reference(frame, (112, 112)), atol=1e-5)


def test_mosaic_blob_holds_every_scale_where_its_layout_says():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (60, 120, 3), dtype=np.uint8)
    # wide tiles (48x32 frame px) on a 32x32 model: x and y scale differently
    layout = mosaic_layout((120, 60), 32, (48, 32), (1.0, 0.5), 8)
    blob = mosaic_to_blob(frame, layout, NORM)
    assert blob.shape == (1, 3, layout.canvas_wh[1], layout.canvas_wh[0])
    owned = np.zeros(blob.shape[2:], bool)
    for level in layout.levels:
        (w, h), (x, y) = level.size_wh, level.offset_xy
        resized = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(blob[:, :, y:y + h, x:x + w], _reference(resized, (w, h)), atol=1e-5)
        owned[y:y + h, x:x + w] = True
    assert not blob[0][:, ~owned].any()  # padding and unused canvas: the mean colour, 0 after normalisation


def test_mosaic_windows_map_back_to_frame_tiles():
    # model window 32, stride 8; tiles of 48x32 frame px at scale 1 -> frame resized by (2/3, 1)
    layout = mosaic_layout((200, 100), 32, (48, 32), (1.0, 0.5), 8)
    canvas_w, canvas_h = layout.canvas_wh
    map_hw = ((canvas_h - 32) // 8 + 1, (canvas_w - 32) // 8 + 1)
    boxes = mosaic_window_boxes(layout, map_hw, 32, 8)
    assert boxes.shape == (map_hw[0] * map_hw[1], 4)
    level = next(lv for lv in layout.levels if lv.scale_xy == (32 / 48, 1.0))
    x, y = level.offset_xy
    first = (y // 8) * map_hw[1] + x // 8  # the window at the level's top-left corner
    assert boxes[first].tolist() == [0, 0, 48, 32]
    sizes = boxes[:, 2:] - boxes[:, :2]
    full = sizes[(sizes > 0).all(axis=1)]
    # every window that lies inside one level is a 48x32 (scale 1) or 96x64 (scale 0.5) frame tile or its clipped part
    assert ((full[:, 0] <= 96) & (full[:, 1] <= 64)).all()
    assert {(48, 32), (96, 64)} <= {tuple(s) for s in full.tolist()}


def test_mosaic_of_a_frame_smaller_than_every_tile_is_refused():
    with pytest.raises(ValueError, match="smaller than the tile at every scale"):
        mosaic_layout((40, 30), 96, 96, (1.0, 0.5), 16)
    assert len(mosaic_layout((200, 100), 96, 96, (1.0, 0.5), 16).levels) == 1  # the 192 px scale is left out


def test_skyline_pack_places_every_rectangle_inside_the_width_without_overlap():
    sizes = [(64, 48), (32, 80), (96, 32), (16, 16), (48, 48), (64, 16)]
    offsets = skyline_pack(sizes, 128)
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(offsets, sizes, strict=True)]
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= 128 and a[1] >= 0
        for b in rects[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert all(x % 16 == 0 and y % 16 == 0 for x, y in offsets)  # sides on a stride give offsets on it
    assert max(r[3] for r in rects) < sum(h for _, h in sizes)  # side by side where they fit, not one column
    with pytest.raises(ValueError, match="wider than the canvas"):
        skyline_pack([(200, 10)], 128)


def test_mosaic_levels_are_one_stride_apart_and_the_canvas_is_smaller_than_one_shelf_per_level():
    # the built-in default's 9 scales on a 640x352 frame: 64 px model, 48x32 px windows, stride 16
    scales = (1.2, 0.96, 0.7619, 0.6, 0.48, 0.381, 0.3, 0.24, 0.1905)
    layout = mosaic_layout((640, 352), 64, (48, 32), scales, 16)
    assert len(layout.levels) == 9
    for i, a in enumerate(layout.levels):
        (ax, ay), (aw, ah) = a.offset_xy, a.padded_wh
        assert ax + aw <= layout.canvas_wh[0] and ay + ah <= layout.canvas_wh[1]
        for b in layout.levels[i + 1:]:  # a gutter of one stride of zeros between any two levels
            (bx, by), (bw, bh) = b.offset_xy, b.padded_wh
            assert ax + aw + 16 <= bx or bx + bw + 16 <= ax or ay + ah + 16 <= by or by + bh + 16 <= ay
    used = sum(w * h for w, h in (level.padded_wh for level in layout.levels))
    stacked = max(w for w, _ in (level.padded_wh for level in layout.levels)) * sum(
        h for _, h in (level.padded_wh for level in layout.levels))
    assert used / (layout.canvas_wh[0] * layout.canvas_wh[1]) > 0.85 and layout.canvas_wh[0] * layout.canvas_wh[1] < stacked
