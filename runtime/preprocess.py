"""Frames to model input: crop tiles, resize, BGR -> RGB, normalise, NCHW float32 (OpenCV, no torch)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


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


def frame_to_blob(
    frame_bgr: np.ndarray,
    scale: float,
    multiple: int,
    min_wh: Sequence[int],
    norm: Normalization,
    pool: BufferPool | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """A whole frame as one normalised input for a dense (fully-convolutional) model.

    The frame is resized by ``scale`` and zero-padded (after normalisation, so
    padding equals the mean colour) on the right and bottom to a multiple of
    ``multiple`` and at least ``min_wh``.

    Args:
        frame_bgr: uint8 [H, W, 3].
        scale: Resize factor (1.0: none).
        multiple: Padded width and height are multiples of this (the dense stride).
        min_wh: Smallest padded size (the model's window).
        norm: Normalisation of the model card.
        pool: Optional buffer pool for the padded result.

    Returns:
        (float32 [1, 3, Hp, Wp], (w, h) of the resized frame before padding).
    """
    h, w = frame_bgr.shape[:2]
    if scale != 1.0:
        w, h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        frame_bgr = cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    pad_w = max(-(-w // multiple) * multiple, int(min_wh[0]))
    pad_h = max(-(-h // multiple) * multiple, int(min_wh[1]))
    if (pad_w, pad_h) != (w, h):  # pad the uint8 frame (cheap), normalise once, then zero the pad
        frame_bgr = cv2.copyMakeBorder(frame_bgr, 0, pad_h - h, 0, pad_w - w, cv2.BORDER_CONSTANT, value=0)
    # One pass straight into a pooled buffer: a fresh 25 MB blob per 1080p frame page-faults, and a second
    # copy into the padded buffer doubled the cost of this stage.
    out = pool.take((1, 3, pad_h, pad_w), key=("dense",)) if pool is not None else None
    params = norm.blob_params((pad_w, pad_h))
    if params is not None:
        blob = cv2.dnn.blobFromImageWithParams(frame_bgr, params) if out is None else \
            cv2.dnn.blobFromImageWithParams(frame_bgr, out, params)
    else:
        blob = normalize_blob(cv2.dnn.blobFromImage(frame_bgr, 1.0 / 255.0, (pad_w, pad_h), (0, 0, 0), norm.swap_rb,
                                                    False), norm)
    if out is not None and blob is not out:  # OpenCV reallocated, or the fallback path
        out[...] = blob
        blob = out
    blob[:, :, h:, :] = 0.0  # padding is 0 after normalisation (the mean colour)
    blob[:, :, :h, w:] = 0.0
    return blob, (w, h)
