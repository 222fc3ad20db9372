"""OpenVINO backend: LATENCY hint for one frame at a time, THROUGHPUT + async requests for several in flight."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.backends import BackendError, check_batch, require

logger = logging.getLogger(__name__)

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
PRECISIONS = ("f32", "bf16", "f16")


class OpenVinoBackend:
    """Run an OpenVINO IR (``.xml`` + ``.bin``) or an ONNX file with OpenVINO.

    Args:
        path: ``.xml`` or ``.onnx`` file.
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
        hint: ``LATENCY`` (default: one synchronous call at a time is fastest)
            or ``THROUGHPUT`` (several streams; only pays off with several
            requests in flight via :meth:`submit` / :meth:`infer_many`).
        precision: ``INFERENCE_PRECISION_HINT``. Default ``f32``: OpenVINO would
            otherwise run bf16 on CPUs that support it, which changes scores
            by about 1e-2 relative; pass ``bf16`` (or None for the device's
            default) to trade that for speed.
        device: OpenVINO device name, default ``CPU``.
        requests: Number of async infer requests (default: the device's optimal number).
    """

    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        hint: str = "LATENCY",
        precision: str | None = "f32",
        device: str = "CPU",
        requests: int | None = None,
    ) -> None:
        require("openvino")
        import openvino as ov

        hint = str(hint).upper()
        if hint not in HINTS:
            raise ValueError(f"OpenVINO performance hint {hint!r} is unknown: expected one of {', '.join(HINTS)}")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision!r} is unknown: expected one of {', '.join(PRECISIONS)}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(path))
            self.compiled = self.core.compile_model(self.model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            raise BackendError(f"OpenVINO cannot load model {str(path)!r}: {_first_line(exc)}") from None
        self.input_name = self.compiled.inputs[0].get_any_name()
        self.input_shape = tuple(d.get_length() if d.is_static else None
                                 for d in self.compiled.inputs[0].get_partial_shape())
        self.output_names = tuple(_port_name(port, i) for i, port in enumerate(self.compiled.outputs))
        self.hint = hint
        self.precision = precision
        self.threads = threads
        self._request = self.compiled.create_infer_request()
        self._requests = requests
        self._queue: Any = None
        self._pending: dict[int, dict[str, np.ndarray]] = {}
        self._errors: list[BaseException] = []
        logger.debug("OpenVINO %s hint=%s precision=%s threads=%s", device, hint, precision, threads)

    def _outputs(self, request: Any) -> dict[str, np.ndarray]:
        return {
            name: np.array(request.get_output_tensor(i).data, dtype=np.float32, copy=True)
            for i, name in enumerate(self.output_names)
        }

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        # Not share_inputs=True: it bought nothing measurable (benchmarks/results/bench.md, section 4) and, with
        # the THROUGHPUT hint, made sync and async scores disagree (tests/test_detector.py submit/wait test).
        self._request.infer({0: check_batch(batch)})
        return self._outputs(self._request)

    # -- several requests in flight -------------------------------------------
    def _async_queue(self) -> Any:
        if self._queue is None:
            import openvino as ov

            jobs = self._requests or 0  # 0: OpenVINO picks the optimal number of requests
            self._queue = ov.AsyncInferQueue(self.compiled, jobs)
            self._queue.set_callback(self._on_done)
        return self._queue

    def _on_done(self, request: Any, userdata: tuple[int, Callable[[dict[str, np.ndarray]], None] | None]) -> None:
        key, callback = userdata
        try:
            outputs = self._outputs(request)
            if callback is None:
                self._pending[key] = outputs
            else:
                callback(outputs)
        except Exception as exc:  # noqa: BLE001 -- raised again by wait() on the caller's thread
            self._errors.append(exc)

    def submit(self, batch: np.ndarray, callback: Callable[[dict[str, np.ndarray]], None]) -> None:
        """Start inference on ``batch`` without waiting; ``callback(outputs)`` runs on completion.

        The callback runs on an OpenVINO worker thread: keep it short and
        thread-safe. Blocks only while every request is busy.
        """
        self._async_queue().start_async({0: check_batch(batch)}, (id(batch), callback))

    def wait(self) -> None:
        """Block until every submitted batch has finished (and its callback ran).

        Raises:
            BackendError: When a callback (or reading an output) failed; the first error is named.
        """
        if self._queue is not None:
            self._queue.wait_all()
        if self._errors:
            error, self._errors = self._errors[0], []
            raise BackendError(f"OpenVINO async callback failed: {type(error).__name__}: {error}") from error

    def infer_many(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Run several batches with as many requests in flight as the hint allows; results in order.

        Not to be mixed with :meth:`submit` calls still in flight (they share the request queue).
        """
        queue = self._async_queue()
        self._pending.clear()
        for k, batch in enumerate(batches):
            queue.start_async({0: check_batch(batch)}, (k, None))
        self.wait()
        return [self._pending.pop(k) for k in range(len(batches))]


def _port_name(port: Any, index: int) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:  # unnamed output
        return f"output{index}"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
