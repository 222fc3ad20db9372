"""Frames to model input: crop tiles, resize, BGR -> RGB, normalise, NCHW float32 (OpenCV, no torch)."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import cv2
import numpy as np

from patchdet.runtime.tiling import MosaicLayout, mosaic_layout, mosaic_window_boxes


@dataclass(frozen=True)
class Normalization:
    """How pixels become model input: ``(pixel / 255 - mean) / std`` per channel.

    Attributes:
        mean: Per-channel mean in [0, 1] units, in the model's channel order.
        std: Per-channel std in [0, 1] units, in the model's channel order.
        swap_rb: True when the model takes RGB (frames from OpenCV are BGR).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    swap_rb: bool = True

    def blob_params(self, size_wh: tuple[int, int]) -> cv2.dnn.Image2BlobParams | None:
        """OpenCV blob parameters doing resize, swap and normalisation in one pass (None if unsupported)."""
        if not hasattr(cv2.dnn, "Image2BlobParams"):
            return None
        params = cv2.dnn.Image2BlobParams()
        # With swapRB, OpenCV applies mean and scalefactor in the output (model) channel order.
        params.scalefactor = tuple(1.0 / (255.0 * s) for s in self.std) + (0.0,)
        params.mean = tuple(255.0 * m for m in self.mean) + (0.0,)
        params.size = (int(size_wh[0]), int(size_wh[1]))
        params.swapRB = self.swap_rb
        params.ddepth = cv2.CV_32F
        return params


class BufferPool:
    """Recycled float32 batch buffers, so a frame's batch does not page-fault fresh memory.

    A 1080p frame at stride 48 is a 95 MB batch; allocating it anew for every
    frame costs more than filling it (about 5x on the project's CPU). Buffers
    are handed out by :meth:`take` and come back by :meth:`give`; a buffer
    that is never given back is simply garbage-collected (the pool holds only
    a weak reference to buffers out on loan). Thread-safe.

    Args:
        max_per_key: Buffers kept per shape; extra ones are dropped.
    """

    def __init__(self, max_per_key: int = 4) -> None:
        self.max_per_key = max_per_key
        self._free: dict[tuple, list[np.ndarray]] = {}
        # id -> (key, weak reference): a buffer dropped without give() is freed, not kept alive here
        self._out: dict[int, tuple[tuple, weakref.ref]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], key: tuple = ()) -> np.ndarray:
        """A float32 C-contiguous buffer of ``shape`` (zero-filled when new). ``key`` separates layouts."""
        full_key = (tuple(shape), key)
        with self._lock:
            free = self._free.get(full_key)
            array = free.pop() if free else None
            if array is None:
                array = np.zeros(shape, np.float32)
            # the callback runs at garbage collection; dict.pop is atomic, and no lock is taken there
            ident = id(array)
            self._out[ident] = (full_key, weakref.ref(array, lambda _ref, i=ident: self._out.pop(i, None)))
            return array

    def give(self, array: np.ndarray) -> bool:
        """Return a buffer from :meth:`take`; other arrays are ignored. True when it was pooled."""
        with self._lock:
            entry = self._out.pop(id(array), None)
            if entry is None or entry[1]() is not array:
                return False
            free = self._free.setdefault(entry[0], [])
            if len(free) < self.max_per_key:
                free.append(array)
            return True


def as_bgr(frame: np.ndarray) -> np.ndarray:
    """Validate a frame and return it as uint8 BGR [H, W, 3] (grey and BGRA are converted).

    Raises:
        ValueError: When ``frame`` is not an image array.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"frame with shape {shape} is invalid: expected a BGR image array [H, W, 3]")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame dtype {frame.dtype} is invalid: expected uint8")
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.shape[2] != 3:
        raise ValueError(f"frame with {frame.shape[2]} channels is invalid: expected 1, 3 or 4")
    return frame


def tiles_to_blob(
    frame_bgr: np.ndarray,
    tiles_xyxy: np.ndarray,
    input_wh: tuple[int, int],
    norm: Normalization,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Crop tiles from a frame into one normalised batch.

    Args:
        frame_bgr: uint8 [H, W, 3] frame.
        tiles_xyxy: int [N, 4] tile boxes inside the frame (exclusive ends).
        input_wh: Model input ``(w, h)``; tiles of another size are resized (area
            interpolation when shrinking would be better, but OpenCV's blob
            functions use bilinear; the difference is small at these scales).
        norm: Normalisation of the model card.
        out: Optional float32 [N, 3, input_h, input_w] buffer to fill (see :class:`BufferPool`).

    Returns:
        float32 [N, 3, input_h, input_w], C-contiguous (``out`` when given).
    """
    crops = [frame_bgr[y0:y1, x0:x1] for x0, y0, x1, y1 in np.asarray(tiles_xyxy).tolist()]
    params = norm.blob_params(input_wh)
    if params is not None:
        if out is None:
            return cv2.dnn.blobFromImagesWithParams(crops, params)
        blob = cv2.dnn.blobFromImagesWithParams(crops, out, params)
    else:
        blob = normalize_blob(cv2.dnn.blobFromImages(crops, 1.0 / 255.0, tuple(input_wh), (0, 0, 0), norm.swap_rb,
                                                     False), norm)
    if out is not None and blob is not out:  # OpenCV reallocated (shape mismatch) or the fallback path
        out[...] = blob
        return out
    return blob


def normalize_blob(blob: np.ndarray, norm: Normalization) -> np.ndarray:
    """``(blob - mean) / std`` per channel, in place, for a blob already scaled to [0, 1]."""
    mean = np.asarray(norm.mean, np.float32).reshape(1, 3, 1, 1)
    inv_std = (1.0 / np.asarray(norm.std, np.float32)).reshape(1, 3, 1, 1)
    blob -= mean
    blob *= inv_std
    return blob


def mosaic_to_blob(
    frame_bgr: np.ndarray,
    layout: MosaicLayout,
    norm: Normalization,
    pool: BufferPool | None = None,
) -> np.ndarray:
    """A frame at every scale of a mosaic layout as one normalised input for a dense (fully-convolutional) model.

    Each level is the frame resized to ``level.size_wh`` (area interpolation when shrinking), placed at
    its offset; everything else (each level's padding up to the stride, unused canvas) is 0 after
    normalisation, i.e. the mean colour, as the zero padding of a patch model's convolutions.

    Args:
        frame_bgr: uint8 [H, W, 3].
        layout: ``runtime.tiling.mosaic_layout`` of this frame size.
        norm: Normalisation of the model card.
        pool: Optional buffer pool for the canvas.

    Returns:
        float32 [1, 3, canvas_h, canvas_w].
    """
    canvas_w, canvas_h = layout.canvas_wh
    shape = (1, 3, canvas_h, canvas_w)
    blob = pool.take(shape, key=("dense",)) if pool is not None else None
    blob = np.zeros(shape, np.float32) if blob is None else blob
    if pool is not None:
        blob.fill(0.0)  # a recycled canvas holds the last frame's pixels where this layout has padding
    frame_h, frame_w = frame_bgr.shape[:2]
    for level in layout.levels:
        (w, h), (x, y) = level.size_wh, level.offset_xy
        if (w, h) == (frame_w, frame_h):
            resized = frame_bgr
        else:
            resized = cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_AREA if w < frame_w else cv2.INTER_LINEAR)
        params = norm.blob_params((w, h))
        if params is not None:
            part = cv2.dnn.blobFromImageWithParams(resized, params)
        else:
            part = normalize_blob(cv2.dnn.blobFromImage(resized, 1.0 / 255.0, (w, h), (0, 0, 0), norm.swap_rb,
                                                        False), norm)
        blob[:, :, y:y + h, x:x + w] = part
    return blob


@dataclass
class Prepared:
    """One frame ready for inference.

    Attributes:
        batch: float32 [N, 3, H, W] tiles (or [1, 3, Hp, Wp] the padded frame, dense).
        tiles_xyxy: int32 [N, 4] tile boxes in frame pixels (dense: empty; the
            window boxes follow from the score map, ``Tiler.dense_boxes_for``).
        frame_wh: (width, height) of the frame.
    """

    batch: np.ndarray
    tiles_xyxy: np.ndarray
    frame_wh: tuple[int, int]


class Tiler:
    """Frame -> ``Prepared`` batch for one model and tiling; tile boxes are cached per frame size.

    Args:
        card: The model card (input size, normalisation, dense stride).
        tiling: A ``runtime.tiling_config.TilingConfig``.
        pool: Batch buffers to reuse (``None``: a fresh array per frame).
    """

    def __init__(self, card, tiling, pool: BufferPool | None) -> None:
        self.card, self.tiling, self.pool = card, tiling, pool
        self.normalization = Normalization(card.mean, card.std, swap_rb=card.color_order.upper() == "RGB")
        self._cache: dict[tuple, object] = {}

    def tiles_for(self, frame_wh: tuple[int, int]) -> np.ndarray:
        """int32 [N, 4] tile boxes for a frame size (cached per size)."""
        key = (int(frame_wh[0]), int(frame_wh[1]))
        grid = self._cache.get(key)
        if grid is None:
            grid = self.tiling.grid(key)
            self._cache[key] = grid
        return grid

    def layout_for(self, frame_wh: tuple[int, int]) -> MosaicLayout:
        """Dense mode: where each scale of a frame of this size sits in the canvas (cached per size)."""
        key = ("layout", int(frame_wh[0]), int(frame_wh[1]))
        layout = self._cache.get(key)
        if layout is None:
            layout = mosaic_layout(key[1:], self.card.input_wh, self.tiling.tile_wh,
                                   self.tiling.scales_for(key[1:]), self.card.dense_stride)
            self._cache[key] = layout
        return layout

    def dense_boxes_for(self, map_hw: tuple[int, int], frame_wh: tuple[int, int]) -> np.ndarray:
        """int32 [rows * cols, 4] frame-pixel boxes of a dense score map's windows (empty across levels; cached)."""
        key = ("boxes", tuple(int(v) for v in map_hw), int(frame_wh[0]), int(frame_wh[1]))
        boxes = self._cache.get(key)
        if boxes is None:
            boxes = mosaic_window_boxes(self.layout_for(frame_wh), map_hw, self.card.input_wh, self.card.dense_stride)
            boxes.setflags(write=False)  # shared by every frame of this size
            self._cache[key] = boxes
        return boxes

    def __call__(self, frame_bgr: np.ndarray) -> Prepared:
        """Tiles of a frame as one normalised batch (or the padded frame, dense).

        Args:
            frame_bgr: uint8 [H, W, 3] BGR frame (grey / BGRA accepted).

        Raises:
            ValueError: For an invalid frame or a frame smaller than a tile.
        """
        frame = as_bgr(frame_bgr)
        frame_wh = (frame.shape[1], frame.shape[0])
        if self.tiling.dense:
            blob = mosaic_to_blob(frame, self.layout_for(frame_wh), self.normalization, self.pool)
            return Prepared(blob, np.zeros((0, 4), np.int32), frame_wh)
        tiles = self.tiles_for(frame_wh)
        in_w, in_h = self.card.input_wh
        out = self.pool.take((len(tiles), 3, in_h, in_w)) if self.pool is not None else None
        return Prepared(tiles_to_blob(frame, tiles, self.card.input_wh, self.normalization, out), tiles, frame_wh)
