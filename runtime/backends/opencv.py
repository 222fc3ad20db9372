"""OpenCV DNN backend: the zero-extra-dependency fallback (``cv2.dnn.readNetFromONNX``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from patchdet.runtime.backends import BackendError, check_batch, outputs_by_name, require

logger = logging.getLogger(__name__)


class OpenCvBackend:
    """Run an ONNX model with OpenCV's DNN module on the CPU.

    Args:
        path: ``.onnx`` file.
        threads: OpenCV worker threads; note ``cv2.setNumThreads`` is
            process-wide, so this also affects resizing and decoding.
    """

    name = "opencv"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        require("opencv")
        import cv2

        if threads is not None:
            cv2.setNumThreads(int(threads))
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise BackendError(f"OpenCV DNN cannot load model {str(path)!r}: {_cv_error_line(exc)}") from None
        if self.net.empty():
            raise BackendError(f"OpenCV DNN cannot load model {str(path)!r}: the network is empty")
        # The defaults are OpenCV's own CPU implementation; OpenCV 5's new engine warns on setPreferableTarget.
        self.output_names = tuple(self.net.getUnconnectedOutLayersNames())
        self.input_name = _graph_input_name(path)
        self.threads = threads

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import cv2

        self.net.setInput(check_batch(batch))
        try:
            arrays = self.net.forward(list(self.output_names))
        except cv2.error as exc:
            raise BackendError(f"OpenCV DNN inference failed: {_cv_error_line(exc)}") from None
        return outputs_by_name(self.output_names, list(arrays))

    def infer_many(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [self(b) for b in batches]


def _graph_input_name(path: str | Path) -> str:
    """The ONNX graph's first input name, when onnx is installed (informational only)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        initializers = {i.name for i in model.graph.initializer}
        return next(i.name for i in model.graph.input if i.name not in initializers)
    except Exception:  # onnx missing or unusual graph: the name is informational only
        return "input"


def _cv_error_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
