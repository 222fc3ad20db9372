"""Batched inference around a backend: calls of bounded size, pooled batch memory, optional async requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from patchdet.runtime.preprocess import BufferPool


class BatchInference:
    """A backend called on whole frames' batches.

    Args:
        backend: A backend (``runtime.backends``): ``__call__(batch) -> outputs``, optionally ``submit``/``wait``.
        max_batch: Most tiles per backend call; a frame with more tiles is scored in several calls
            (``None``: always one call). It bounds memory: ONNX Runtime needs about 3 MB of activations per
            96x96 DisCNN tile, so 1080p at stride 48 (858 tiles) in one call grew the process by 2.6 GB, at
            about the same speed as calls of 256 (``benchmarks/results/runtime_backends.md``).
        pool: Where batches from ``runtime.preprocess.Tiler`` go back once the backend is done with them.
    """

    def __init__(self, backend: Any, max_batch: int | None = 256, pool: BufferPool | None = None) -> None:
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0):
            raise ValueError(f"max_batch {max_batch!r} is invalid: expected a positive integer or None")
        self.backend, self.max_batch, self.pool = backend, max_batch, pool

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on float32 [N, 3, H, W] in calls of at most ``max_batch``; the batch goes back to the pool.

        Backends copy or finish reading their input before they return, so the outputs never alias it.
        """
        try:
            if self.max_batch is None or len(batch) <= self.max_batch:
                return self.backend(batch)
            parts = [self.backend(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
            return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
        finally:
            if self.pool is not None:
                self.pool.give(batch)

    def submit(self, batch: np.ndarray, callback: Callable[[dict[str, np.ndarray]], None]) -> None:
        """Start inference without waiting; ``callback(outputs)`` runs when it is done.

        With OpenVINO's THROUGHPUT hint several batches are in flight and callbacks run on
        OpenVINO's threads, possibly out of order; other backends call back before returning.
        The batch is copied at submission and goes back to the pool at once; not split by ``max_batch``.
        """
        backend_submit = getattr(self.backend, "submit", None)
        if backend_submit is None:
            callback(self.infer(batch))
            return
        try:
            backend_submit(batch, callback)
        finally:
            if self.pool is not None:
                self.pool.give(batch)

    def wait(self) -> None:
        """Block until every :meth:`submit` call has called back (re-raises a callback's error)."""
        backend_wait = getattr(self.backend, "wait", None)
        if backend_wait is not None:
            backend_wait()
