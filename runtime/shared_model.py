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
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._stop = threading.Event()
        self.calls = 0
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
            batch = requests[0].batch if len(requests) == 1 else np.concatenate([r.batch for r in requests])
            outputs = self.detector.backend(batch)
            offset = 0
            for r in requests:
                n = len(r.batch)
                r.outputs = {name: value[offset:offset + n] for name, value in outputs.items()}
                offset += n
            self.calls += 1
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


def camera_view(base, settings: DetectorSettings):
    """A ``Detector`` for one camera that shares ``base``'s backend, with the camera's own tiling and threshold.

    It is a shallow copy: only the tiler (with its own buffer pool), tiling and decision rule are its own.
    """
    if base.dense and settings.needs_patch_model:
        raise ValueError(f"model {base.artifact.name} is a dense export, which scores every window of the frame: "
                         "tile/stride need a per-tile model (drop them, or give a patch export)")
    view = copy.copy(base)
    view.tiling = tiling_for_card(base.card, settings.tile, settings.stride, settings.scales, base.dense,
                                  settings.merge)
    view.pool = BufferPool()
    view.tiler = Tiler(base.card, view.tiling, view.pool)
    view.rule = decision_rule(base.card, settings.threshold, base.rule.norm_gate)
    return view
