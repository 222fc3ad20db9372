"""Tiling geometry: which patches of a frame the model scores. Pure numpy.

Boxes are ``xyxy`` in frame pixels with exclusive ends: a tile ``(x0, y0, x1, y1)``
covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``, so
``frame[y0:y1, x0:x1]`` is exactly the tile. Tiles are ordered row by row
(top to bottom, left to right within a row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


# -- multi-scale dense mode: every scale of a frame packed into one canvas ---------------------------------


@dataclass(frozen=True)
class MosaicLevel:
    """One scale of a frame inside a mosaic canvas.

    Attributes:
        scale_xy: Model pixels per frame pixel along x and y (tiles need not have the model's aspect).
        size_wh: The resized frame's size in canvas pixels.
        offset_xy: Its top-left corner in the canvas (multiples of the dense stride).
        padded_wh: The area it owns in the canvas: ``size_wh`` rounded up to the stride and at least one window.
    """

    scale_xy: tuple[float, float]
    size_wh: tuple[int, int]
    offset_xy: tuple[int, int]
    padded_wh: tuple[int, int]


@dataclass(frozen=True)
class MosaicLayout:
    """Where each scale of a frame sits in the one canvas a dense model scores (``mosaic_layout``)."""

    frame_wh: tuple[int, int]
    canvas_wh: tuple[int, int]
    levels: tuple[MosaicLevel, ...]


def mosaic_layout(frame_wh: Sequence[int], window_wh: int | Sequence[int], tile_wh: int | Sequence[int],
                  scales: Sequence[float], stride: int) -> MosaicLayout:
    """Pack a frame at several scales into one canvas, so one dense pass scores windows of every scale.

    At scale ``s`` a window of the model (``window_wh`` model pixels) covers ``tile_wh / s`` frame
    pixels, so the frame is resized by ``window_wh * s / tile_wh`` per axis. Levels are packed by
    ``skyline_pack`` into the canvas width (a multiple of ``stride``, up to twice the widest level) that
    gives the smallest canvas: the model's time is proportional to the canvas area, and the 9-scale
    mosaic of a 640x352 frame fills 90 % of its canvas this way against 83 % with one shelf per row of
    levels. A gutter of one ``stride`` of zeros separates levels, so the convolutions of a window near a
    level's edge see padding there, not another level's pixels (as a patch model sees its zero padding:
    without it, 2 of the 209 cars of the dev set changed detection). Offsets are multiples of ``stride``,
    so every level starts on the score map's cell grid. Scales whose resized frame is smaller than one
    window along an axis are left out.

    Args:
        frame_wh: Frame size ``(width, height)``.
        window_wh: The dense model's window (its patch input size).
        tile_wh: Tile size in frame pixels at scale 1.
        scales: Positive scale factors (as ``multiscale_grid``: 0.5 = tiles twice as large).
        stride: The dense model's step in model pixels.

    Raises:
        ValueError: When no scale fits (the frame is smaller than every tile).
    """
    frame_w, frame_h = as_wh(tuple(frame_wh), "frame size")
    win_w, win_h = as_wh(window_wh, "window size")
    tile_w, tile_h = as_wh(tile_wh, "tile size")
    (step, _) = as_wh(stride, "dense stride")
    sized = []
    for scale in scales:
        sx, sy = win_w * float(scale) / tile_w, win_h * float(scale) / tile_h
        w, h = int(round(frame_w * sx)), int(round(frame_h * sy))
        if w < win_w or h < win_h:
            continue
        padded = (max(-(-w // step) * step, -(-win_w // step) * step), max(-(-h // step) * step,
                                                                          -(-win_h // step) * step))
        sized.append(((sx, sy), (w, h), padded))
    if not sized:
        raise ValueError(f"frame size {frame_w}x{frame_h} is smaller than the tile at every scale {tuple(scales)}: "
                         "expected a larger frame or smaller tiles")
    canvas_wh, offsets = pack_canvas([padded for _, _, padded in sized], step)
    levels = tuple(MosaicLevel(scale_xy, size, offset, padded)
                   for (scale_xy, size, padded), offset in zip(sized, offsets, strict=True))
    return MosaicLayout((frame_w, frame_h), canvas_wh, levels)


def pack_canvas(sizes_wh: Sequence[tuple[int, int]], step: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The smallest canvas (and the offsets in it) that holds rectangles ``step`` apart (``skyline_pack``).

    Widths from the widest rectangle to twice that, in multiples of ``step``, are tried; the gutter of one
    ``step`` right of and below each rectangle is left out of the canvas at its right and bottom edges.
    """
    with_gutter = [(w + step, h + step) for w, h in sizes_wh]
    widest = max(w for w, _ in with_gutter)
    best: tuple[tuple[int, int], list[tuple[int, int]]] | None = None
    for width in range(widest, 2 * widest + 1, step):
        offsets = skyline_pack(with_gutter, width)
        canvas_wh = (max(x + w for (x, _), (w, _) in zip(offsets, sizes_wh, strict=True)),
                     max(y + h for (_, y), (_, h) in zip(offsets, sizes_wh, strict=True)))
        if best is None or canvas_wh[0] * canvas_wh[1] < best[0][0] * best[0][1]:
            best = (canvas_wh, offsets)
    return best


def skyline_pack(sizes_wh: Sequence[tuple[int, int]], canvas_w: int) -> list[tuple[int, int]]:
    """Top-left offsets that pack rectangles into a canvas ``canvas_w`` wide without overlap.

    Skyline bottom-left: tallest first, each rectangle goes where its top edge is lowest (then
    leftmost) on the outline of what is already placed. Offsets are sums of the rectangles' sides, so
    sides on a stride give offsets on that stride.

    Returns:
        ``(x, y)`` per rectangle, in the order given.

    Raises:
        ValueError: When a rectangle is wider than the canvas.
    """
    if any(w > canvas_w for w, _ in sizes_wh):
        raise ValueError(f"a rectangle is wider than the canvas ({canvas_w} px)")
    skyline = [(0, canvas_w, 0)]  # segments (x, width, top of what is placed there), left to right
    offsets = [(0, 0)] * len(sizes_wh)
    for index in sorted(range(len(sizes_wh)), key=lambda i: (-sizes_wh[i][1], -sizes_wh[i][0])):
        w, h = sizes_wh[index]
        best: tuple[int, int] | None = None  # (top, x)
        for start, (x, _, _) in enumerate(skyline):
            if x + w > canvas_w:
                break
            top = 0
            for seg_x, seg_w, seg_top in skyline[start:]:
                top = max(top, seg_top)
                if seg_x + seg_w >= x + w:
                    break
            if best is None or (top, x) < best:
                best = (top, x)
        y, x = best
        offsets[index] = (x, y)
        pieces = [(x, w, y + h)]
        for seg_x, seg_w, seg_top in skyline:  # what sticks out left and right of the new rectangle stays
            if seg_x < x:
                pieces.append((seg_x, min(seg_w, x - seg_x), seg_top))
            if seg_x + seg_w > x + w:
                left = max(seg_x, x + w)
                pieces.append((left, seg_x + seg_w - left, seg_top))
        skyline = []
        for piece in sorted(pieces):
            if skyline and skyline[-1][2] == piece[2] and skyline[-1][0] + skyline[-1][1] == piece[0]:
                skyline[-1] = (skyline[-1][0], skyline[-1][1] + piece[1], piece[2])
            else:
                skyline.append(piece)
    return offsets


def mosaic_window_boxes(layout: MosaicLayout, map_hw: Sequence[int], window_wh: int | Sequence[int],
                        stride: int) -> np.ndarray:
    """Frame-pixel boxes of a mosaic score map's windows; windows not inside one level get an empty box.

    A window that lies inside a level's area (its padding included) maps back to the frame through that
    level's scale and is clipped to the frame; a window across two levels or over unused canvas is
    ``(0, 0, 0, 0)``, which callers treat as "no tile" (zero area).

    Returns:
        int32 [rows * cols, 4] boxes ``xyxy``, row-major like the score map.
    """
    windows = dense_window_boxes(map_hw, window_wh, stride).astype(np.float64)
    boxes = np.zeros_like(windows)
    frame_w, frame_h = layout.frame_wh
    for level in layout.levels:
        (ox, oy), (pw, ph), (sx, sy) = level.offset_xy, level.padded_wh, level.scale_xy
        inside = ((windows[:, 0] >= ox) & (windows[:, 1] >= oy) & (windows[:, 2] <= ox + pw)
                  & (windows[:, 3] <= oy + ph))
        local = windows[inside] - (ox, oy, ox, oy)
        boxes[inside] = local / (sx, sy, sx, sy)
    boxes = np.round(boxes)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, frame_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, frame_h)
    return boxes.astype(np.int32)
