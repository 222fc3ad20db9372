"""Tiling geometry: which patches of a frame the model scores. Pure numpy.

Boxes are ``xyxy`` in frame pixels with exclusive ends: a tile ``(x0, y0, x1, y1)``
covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``, so
``frame[y0:y1, x0:x1]`` is exactly the tile. Tiles are ordered row by row
(top to bottom, left to right within a row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def as_wh(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """Normalise ``N`` or ``(w, h)`` to a pair of positive ints.

    Args:
        value: One positive integer (square) or a pair ``(w, h)``.
        what: Name used in the error message, e.g. ``"tile size"``.

    Returns:
        ``(w, h)`` as Python ints.

    Raises:
        ValueError: If a value is not a positive integer.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            items = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"{what} {value!r} is invalid: expected a positive integer or (w, h)") from None
        if len(items) != 2:
            raise ValueError(f"{what} {value!r} is invalid: expected a positive integer or (w, h)")
        pair = items  # type: ignore[assignment]
    out = []
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) <= 0:
            raise ValueError(f"{what} {value!r} is invalid: expected a positive integer or (w, h)")
        out.append(int(v))
    return out[0], out[1]


def axis_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles along one axis, the last one snapped inside.

    Args:
        length: Frame length along the axis (pixels), ``>= tile``.
        tile: Tile length (pixels), ``> 0``.
        stride: Step between tile starts (pixels), ``> 0``.

    Returns:
        int64 [M] increasing starts; ``starts[-1] + tile == length`` always.
    """
    starts = np.arange(0, length - tile + 1, stride, dtype=np.int64)
    if starts[-1] + tile < length:
        starts = np.append(starts, length - tile)
    return starts


def tile_grid(frame_wh: Sequence[int], tile_wh: int | Sequence[int], stride_wh: int | Sequence[int]) -> np.ndarray:
    """Grid of tiles covering a frame.

    Tiles start every ``stride`` pixels; when the grid does not end exactly on
    the frame border, one more row/column is added flush with the border
    (overlapping its neighbour), so every pixel is covered and no tile leaves
    the frame. A stride larger than the tile leaves gaps, which is allowed.

    Args:
        frame_wh: Frame size ``(width, height)`` in pixels.
        tile_wh: Tile size ``N`` or ``(w, h)`` in pixels.
        stride_wh: Step ``N`` or ``(w, h)`` in pixels.

    Returns:
        int32 [N, 4] tile boxes ``xyxy`` (exclusive ends), row-major order.

    Raises:
        ValueError: For a non-positive size or stride, or a frame smaller than a tile.
    """
    frame_w, frame_h = as_wh(tuple(frame_wh), "frame size")
    tile_w, tile_h = as_wh(tile_wh, "tile size")
    stride_w, stride_h = as_wh(stride_wh, "stride")
    if frame_w < tile_w or frame_h < tile_h:
        raise ValueError(
            f"frame size {frame_w}x{frame_h} is smaller than the tile {tile_w}x{tile_h}: "
            "expected a frame at least one tile wide and high (use a smaller --tile)"
        )
    xs = axis_starts(frame_w, tile_w, stride_w)
    ys = axis_starts(frame_h, tile_h, stride_h)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    x0 = grid_x.ravel()
    y0 = grid_y.ravel()
    return np.stack([x0, y0, x0 + tile_w, y0 + tile_h], axis=1).astype(np.int32)


def scaled_wh(wh: tuple[int, int], scale: float) -> tuple[int, int]:
    """``wh / scale`` rounded to whole pixels (at least 1)."""
    return max(1, int(round(wh[0] / scale))), max(1, int(round(wh[1] / scale)))


def multiscale_grid(
    frame_wh: Sequence[int],
    tile_wh: int | Sequence[int],
    stride_wh: int | Sequence[int],
    scales: Sequence[float] = (1.0,),
    *,
    return_scale_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Tile grids at several scales, concatenated in the order of ``scales``.

    A scale ``s`` means the frame is looked at ``s`` times as large: tiles of
    ``tile_wh / s`` frame pixels (with stride ``stride_wh / s``) that are
    resized to the model input. ``s = 0.5`` finds objects twice as large as
    the model's patch; ``s = 2`` objects half as large.

    Args:
        frame_wh: Frame size ``(width, height)``.
        tile_wh: Model input size ``N`` or ``(w, h)`` (the tile size at scale 1).
        stride_wh: Step at scale 1, ``N`` or ``(w, h)``.
        scales: Positive finite scale factors.
        return_scale_index: Also return which scale each tile came from.

    Returns:
        int32 [N, 4] boxes ``xyxy`` in frame pixels; with ``return_scale_index``
        also int64 [N] indices into ``scales``.

    Raises:
        ValueError: For an empty or invalid scale list, or when no scale's tile
            fits in the frame (scales whose tile is larger than the frame are skipped).
    """
    tile = as_wh(tile_wh, "tile size")
    stride = as_wh(stride_wh, "stride")
    scales = tuple(scales)
    if not scales:
        raise ValueError("scales () is invalid: expected at least one positive scale")
    boxes, index = [], []
    first_error = None
    for i, scale in enumerate(scales):
        if not isinstance(scale, (int, float, np.floating, np.integer)) or not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale {scale!r} is invalid: expected a positive finite number")
        try:
            grid = tile_grid(frame_wh, scaled_wh(tile, float(scale)), scaled_wh(stride, float(scale)))
        except ValueError as exc:
            # A coarse scale's tile can be larger than a small frame: that scale has nothing to look at.
            first_error = first_error or f"at scale {scale}: {exc}"
            continue
        boxes.append(grid)
        index.append(np.full(len(grid), i, dtype=np.int64))
    if not boxes:
        raise ValueError(first_error)
    all_boxes = np.concatenate(boxes, axis=0)
    if return_scale_index:
        return all_boxes, np.concatenate(index)
    return all_boxes


def dense_window_boxes(
    map_hw: Sequence[int],
    window_wh: int | Sequence[int],
    stride: int,
    frame_wh: Sequence[int] | None = None,
) -> np.ndarray:
    """Boxes of the windows behind each cell of a dense score map.

    Cell ``(i, j)`` of a map produced with step ``stride`` covers the window
    ``x0 = j * stride``, ``y0 = i * stride`` of size ``window_wh``.

    Args:
        map_hw: Score map size ``(rows, cols)``.
        window_wh: Window (model patch) size ``N`` or ``(w, h)`` in pixels.
        stride: Pixel step between neighbouring cells.
        frame_wh: If given, boxes are clipped to this frame (windows over the
            padding of a padded frame shrink to the visible part).

    Returns:
        int32 [rows * cols, 4] boxes ``xyxy``, row-major (same order as
        ``score_map.ravel()``).
    """
    rows, cols = (int(v) for v in map_hw)
    if rows < 0 or cols < 0:
        raise ValueError(f"score map size {tuple(map_hw)!r} is invalid: expected non-negative (rows, cols)")
    win_w, win_h = as_wh(window_wh, "window size")
    (step, _) = as_wh(stride, "dense stride")
    grid_y, grid_x = np.meshgrid(np.arange(rows, dtype=np.int64) * step, np.arange(cols, dtype=np.int64) * step,
                                 indexing="ij")
    x0, y0 = grid_x.ravel(), grid_y.ravel()
    boxes = np.stack([x0, y0, x0 + win_w, y0 + win_h], axis=1)
    if frame_wh is not None:
        frame_w, frame_h = as_wh(tuple(frame_wh), "frame size")
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, frame_w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, frame_h)
    return boxes.astype(np.int32)


def pad_to_multiple(frame_wh: Sequence[int], multiple: int) -> tuple[int, int]:
    """Smallest ``(w, h)`` not below ``frame_wh`` that are multiples of ``multiple``."""
    w, h = (int(v) for v in frame_wh)
    (m, _) = as_wh(multiple, "padding multiple")
    return -(-w // m) * m, -(-h // m) * m


def coverage_max(frame_wh: Sequence[int], boxes_xyxy: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-pixel maximum of ``values`` over the boxes that cover each pixel.

    Args:
        frame_wh: Frame size ``(width, height)``.
        boxes_xyxy: int [N, 4] boxes (clipped to the frame here).
        values: float [N] value per box.

    Returns:
        float32 [H, W]; pixels no box covers hold 0.
    """
    w, h = (int(v) for v in frame_wh)
    out = np.zeros((h, w), dtype=np.float32)
    boxes = np.asarray(boxes_xyxy, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float32)
    # Ascending order: larger values are written last and win without a max per pixel.
    for k in np.argsort(vals, kind="stable"):
        x0, y0, x1, y1 = boxes[k]
        x0, x1 = max(0, x0), min(w, x1)
        y0, y1 = max(0, y0), min(h, y1)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = vals[k]
    return out


def dense_coverage_max(
    score_map: np.ndarray,
    window_wh: int | Sequence[int],
    stride: int,
    frame_wh: Sequence[int],
    frame_per_model_px: float = 1.0,
) -> np.ndarray:
    """Per-pixel maximum score of the dense windows covering each pixel.

    Works on cells of ``stride`` pixels: cell (a, b) is covered by windows
    (i, j) with ``a - k < i <= a`` (``k = ceil(window / stride)`` cells per
    window side), so a separable sliding maximum gives the cell map, which is
    then expanded to pixels. Cost is independent of the window size.

    Args:
        score_map: float [Hs, Ws] window scores.
        window_wh: Window size in model pixels.
        stride: Window step in model pixels.
        frame_wh: Output size ``(width, height)`` in frame pixels.
        frame_per_model_px: Frame pixels per model pixel (``1 / dense_scale``).

    Returns:
        float32 [H, W]; pixels no window covers hold 0.
    """
    scores = np.asarray(score_map, dtype=np.float32)
    rows, cols = scores.shape
    win_w, win_h = as_wh(window_wh, "window size")
    (step, _) = as_wh(stride, "dense stride")
    kx, ky = -(-win_w // step), -(-win_h // step)
    cells = np.full((rows + ky - 1, cols + kx - 1), -np.inf, dtype=np.float32)
    out_rows = np.full((rows + ky - 1, cols), -np.inf, dtype=np.float32)
    for dy in range(ky):
        np.maximum(out_rows[dy:dy + rows], scores, out=out_rows[dy:dy + rows])
    for dx in range(kx):
        np.maximum(cells[:, dx:dx + cols], out_rows, out=cells[:, dx:dx + cols])
    cells[~np.isfinite(cells)] = 0.0
    pixels = np.repeat(np.repeat(cells, step, axis=0), step, axis=1)  # model pixels of the padded frame
    w, h = (int(v) for v in frame_wh)
    if frame_per_model_px != 1.0:
        import cv2

        size = (max(1, int(round(pixels.shape[1] * frame_per_model_px))),
                max(1, int(round(pixels.shape[0] * frame_per_model_px))))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_NEAREST)
    out = np.zeros((h, w), dtype=np.float32)
    ch, cw = min(h, pixels.shape[0]), min(w, pixels.shape[1])
    out[:ch, :cw] = pixels[:ch, :cw]
    return out


def perspective_grid(frame_wh: Sequence[int], size_at_row: tuple[float, float], stride_fraction: float = 0.5,
                     min_tile: int = 16) -> np.ndarray:
    """Square tiles whose side grows with the image row, for a fixed camera looking down a road.

    The side of a tile is ``a + b * y_centre`` frame pixels (``size_at_row = (a, b)``), at least
    ``min_tile`` and at most the frame's shorter side. Rows are laid from the top with a step of
    ``stride_fraction`` of the row's tile side, the last row moved inside the frame; within a row tiles
    step by the same fraction (``tile_grid``), so every pixel is covered.

    Returns:
        int32 [N, 4] boxes ``xyxy`` in frame pixels, row by row.
    """
    w, h = (int(v) for v in frame_wh)
    a, b = (float(v) for v in size_at_row)
    if not (math.isfinite(a) and math.isfinite(b)) or not 0 < stride_fraction <= 1:
        raise ValueError(f"perspective {size_at_row!r} / stride fraction {stride_fraction!r} are invalid: expected "
                         "finite numbers and a fraction in (0, 1]")
    largest = min(w, h)

    def side_at(y_top: float) -> int:
        # t = a + b * (y_top + t / 2)  =>  t = (a + b * y_top) / (1 - b / 2)
        side = (a + b * y_top) / max(1.0 - b / 2.0, 1e-6)
        return int(round(min(max(side, min_tile), largest)))

    rows: list[np.ndarray] = []
    y = 0.0
    while True:
        side = side_at(y)
        y0 = min(int(round(y)), h - side)
        step = max(1, int(round(side * stride_fraction)))
        row = tile_grid((w, side), side, step)
        row[:, [1, 3]] += y0
        rows.append(row)
        if y0 + side >= h:
            break
        y += step
    return np.concatenate(rows, axis=0).astype(np.int32)
