"""One detector per model, shared by every camera that uses it: tiles of frames from several cameras that
arrive together are scored in one backend call.

Each camera thread tiles its own frame (its own tiling and threshold: ``camera_view``), hands the batch to
``SharedModel.score`` and blocks; the model's batching thread takes every waiting request (up to
``max_tiles``), concatenates them, calls the backend once and splits the outputs back per request.

A dense model's request is one mosaic canvas [1, 3, H, W] per frame: canvases of the same shape (cameras
with the same frame aspect, since mosaics are laid out at the card's ``reference_height``) are stacked into
one call; other shapes, and every request of a model whose batch axis is fixed, get calls of their own.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from patchdet.runtime.decisions import decision_rule
from patchdet.runtime.preprocess import BufferPool, Tiler
from patchdet.runtime.settings import DetectorSettings
from patchdet.runtime.tiling_config import tiling_for_card

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    batch: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class StackingPool(BufferPool):
    """A buffer pool whose one-canvas buffers [1, ...] are consecutive rows of shared [stack, ...] blocks.

    The cameras of a dense model each tile their frame into a [1, 3, H, W] canvas; when two of them are scored
    together the shared model would copy both into a new [2, 3, H, W] batch (16 ms for two 1696x1552 canvases,
    about 3 % of the call). Canvases taken from this pool are rows of one block, so neighbours already are the
    batch (:func:`adjacent_rows`). Other shapes (tile batches) are pooled as by ``BufferPool``. Thread-safe; a
    row that is never given back is freed when its array is garbage-collected.

    Args:
        stack: Rows per block (the most canvases per backend call).
    """

    def __init__(self, stack: int, max_per_key: int = 4) -> None:
        super().__init__(max_per_key)
        self.stack = int(stack)
        # key -> blocks, each with one slot per row: None (free) or a weak reference to the row on loan
        self._blocks: dict[tuple, list[tuple[np.ndarray, list[weakref.ref | None]]]] = {}

    def take(self, shape: tuple[int, ...], key: tuple = ()) -> np.ndarray:
        if self.stack < 2 or len(shape) < 1 or shape[0] != 1:
            return super().take(shape, key)
        full_key = (tuple(shape), key)
        with self._lock:
            blocks = self._blocks.setdefault(full_key, [])
            for block, slots in blocks:
                for i, slot in enumerate(slots):
                    if slot is None or slot() is None:
                        return self._lend(block, slots, i)
            block = np.zeros((self.stack, *shape[1:]), np.float32)
            blocks.append((block, [None] * self.stack))
            return self._lend(block, blocks[-1][1], 0)

    @staticmethod
    def _lend(block: np.ndarray, slots: list, i: int) -> np.ndarray:
        row = block[i:i + 1]
        slots[i] = weakref.ref(row)
        return row

    def give(self, array: np.ndarray) -> bool:
        with self._lock:
            for blocks in self._blocks.values():
                for block, slots in blocks:
                    if array.base is block:
                        for i, slot in enumerate(slots):
                            if slot is not None and slot() is array:
                                slots[i] = None
                                return True
                        return False
        return super().give(array)


def adjacent_rows(batches: list[np.ndarray]) -> np.ndarray | None:
    """The batches as one array without a copy, when they are consecutive rows of one C-contiguous base array
    in this order (canvases from a ``StackingPool``); None otherwise."""
    base = batches[0].base
    if base is None or not base.flags.c_contiguous or any(
            b.base is not base or not b.flags.c_contiguous or b.shape[1:] != base.shape[1:] for b in batches):
        return None
    row_bytes = base[0].nbytes
    start = batches[0].__array_interface__["data"][0] - base.__array_interface__["data"][0]
    expected = batches[0].__array_interface__["data"][0]
    for b in batches:
        if b.__array_interface__["data"][0] != expected:
            return None
        expected += b.nbytes
    first = start // row_bytes
    return base[first:first + sum(len(b) for b in batches)]


class SharedModel:
    """A loaded ``Detector`` whose backend is called from one batching thread.

    Args:
        detector: The model's ``Detector`` (its backend is what is shared).
        max_tiles: Most tiles in one backend call (a single larger frame still goes in one call); for a dense
            model, whose requests are one canvas each, the most canvases.
        linger_ms: After the first waiting request, how long to wait for others to join the call.
    """

    def __init__(self, detector, max_tiles: int = 1024, linger_ms: float = 2.0) -> None:
        self.detector = detector
        # One backend call per gathered batch: BatchInference must not split it again.
        self.detector.inference.max_batch = None
        self.max_tiles, self.linger_s = max_tiles, linger_ms / 1e3
        # A fixed batch axis (a static engine or IR) takes exactly its batch: requests cannot be stacked.
        shape = getattr(detector.backend, "input_shape", None)
        self._fixed_batch = bool(shape) and isinstance(shape[0], int) and shape[0] > 0
        # a dense model's cameras tile into rows of shared blocks, so canvases scored together need no copy
        self.pool = StackingPool(max_tiles) if detector.dense and not self._fixed_batch else None
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._stop = threading.Event()
        self.calls = 0
        self.stacked_in_place = 0  # calls of several requests that needed no copy (StackingPool rows)
        self.tiles = 0
        self.frames = 0
        self._thread = threading.Thread(target=self._loop, name=f"model:{detector.artifact.name}", daemon=True)
        self._thread.start()

    def score(self, batch: np.ndarray, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
        """Backend outputs for one frame's float32 [N, 3, H, W] batch; blocks until its shared call is done."""
        return self.result(self.submit(batch), timeout_s)

    def submit(self, batch: np.ndarray) -> _Request:
        """Queue one frame's batch for the next shared call without waiting; :meth:`result` waits for it."""
        request = _Request(batch)
        self._queue.put(request)
        return request

    def result(self, request: _Request, timeout_s: float = 60.0) -> dict[str, np.ndarray]:
        """The outputs of a :meth:`submit` request (re-raises the backend's error)."""
        if not request.done.wait(timeout_s):
            raise TimeoutError(f"model {self.detector.artifact.name} did not answer within {timeout_s:.0f} s")
        if request.error is not None:
            raise request.error
        return request.outputs

    def _gather(self, first: _Request) -> list[_Request]:
        requests, tiles = [first], len(first.batch)
        deadline = time.monotonic() + self.linger_s
        while tiles < self.max_tiles:
            try:
                wait = deadline - time.monotonic()
                nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            requests.append(nxt)
            tiles += len(nxt.batch)
        return requests

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            for group in stackable_groups(self._gather(first), self._fixed_batch):
                self._call(group)

    def _call(self, requests: list[_Request]) -> None:
        try:
            if len(requests) > 1:  # in memory order, so rows of one block are one batch as they lie
                requests = sorted(requests, key=lambda r: r.batch.__array_interface__["data"][0])
            batch = requests[0].batch if len(requests) == 1 else adjacent_rows([r.batch for r in requests])
            in_place = batch is not None and len(requests) > 1
            if batch is None:
                batch = np.concatenate([r.batch for r in requests])
            outputs = self.detector.backend(batch)
            offset = 0
            for r in requests:
                n = len(r.batch)
                r.outputs = {name: value[offset:offset + n] for name, value in outputs.items()}
                offset += n
            self.calls += 1
            self.stacked_in_place += in_place
            self.tiles += len(batch)
            self.frames += len(requests)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting camera, which reports it
            for r in requests:
                r.error = exc
        for r in requests:
            r.done.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def stackable_groups(requests: list, fixed_batch: bool = False) -> list[list]:
    """Requests split into groups whose batches can be concatenated (same per-item shape), in arrival order.

    ``fixed_batch``: the model takes exactly its export's batch, so every request is a group of its own.
    """
    if fixed_batch:
        return [[r] for r in requests]
    groups: dict[tuple, list] = {}
    for r in requests:
        groups.setdefault(tuple(r.batch.shape[1:]), []).append(r)
    return list(groups.values())


def model_key(settings: DetectorSettings) -> tuple:
    """Cameras with equal keys share one loaded model (tiling and threshold may differ per camera).

    Without a ``model`` the built-in default is the dense export, or its per-tile export when the camera
    asks for explicit tiles: those are two models.
    """
    builtin_patch = settings.model is None and settings.needs_patch_model
    return (settings.model, settings.card, settings.backend, settings.threads, builtin_patch)


def camera_view(base, settings: DetectorSettings, pool: BufferPool | None = None):
    """A ``Detector`` for one camera that shares ``base``'s backend, with the camera's own tiling and threshold.

    It is a shallow copy: only the tiler, tiling and decision rule are its own; its buffers come from ``pool``
    (the shared model's ``StackingPool`` for a dense model) or a pool of its own.
    """
    if base.dense and settings.needs_patch_model:
        raise ValueError(f"model {base.artifact.name} is a dense export, which scores every window of the frame: "
                         "tile/stride need a per-tile model (drop them, or give a patch export)")
    view = copy.copy(base)
    view.tiling = tiling_for_card(base.card, settings.tile, settings.stride, settings.scales, base.dense,
                                  settings.merge)
    view.pool = pool if pool is not None else BufferPool()
    view.tiler = Tiler(base.card, view.tiling, view.pool)
    view.rule = decision_rule(base.card, settings.threshold, base.rule.norm_gate)
    return view
