"""The engine's own best time on an artifact and batch, with nothing of ours around it (``patchdet bench``'s floor).

* ONNX Runtime: a bare ``InferenceSession`` with the engine's default options (spinning threads, all graph
  optimisations) run on the same batches as the detector.
* OpenVINO: the vendor's ``benchmark_app`` (LATENCY hint, same shape, threads and precision) when it is on the
  ``PATH`` or beside the running Python; a bare compiled model with a synchronous request otherwise.
* TensorRT: ``trtexec`` is not parsed; the floor is left empty.

Every floor returns ``(median milliseconds per frame, tool name)`` or ``None`` when no floor applies.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_MEDIAN = re.compile(r"Median:\s*([0-9.]+)\s*ms")


def time_calls(run, repeats: int, warmup: int, max_seconds: float) -> np.ndarray:
    """Milliseconds of ``run()`` per call: ``warmup`` untimed calls, then up to ``repeats`` (at least 3) timed.

    Stops early once ``max_seconds`` have been spent on timed calls, so a slow engine does not hold a run for minutes.
    """
    for _ in range(warmup):
        run()
    times = []
    budget_end = time.perf_counter() + max_seconds
    for k in range(repeats):
        start = time.perf_counter()
        run()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        if end > budget_end and k >= 2:
            break
    return np.asarray(times, np.float64)


def benchmark_app_path() -> str | None:
    """OpenVINO's ``benchmark_app``: beside the running Python (a venv), else on the ``PATH``."""
    beside = Path(sys.executable).parent / "benchmark_app"
    if beside.is_file():
        return str(beside)
    return shutil.which("benchmark_app")


def onnxruntime_floor(path: Path, chunks: Sequence[np.ndarray], threads: int | None, repeats: int, warmup: int,
                      max_seconds: float) -> tuple[float, str]:
    """Median ms of a bare ONNX Runtime CPU session over one frame's batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    times = time_calls(lambda: [session.run(None, {name: c}) for c in chunks], repeats, warmup, max_seconds)
    return float(np.median(times)), "onnxruntime session"


def openvino_floor(path: Path, chunks: Sequence[np.ndarray], threads: int | None, precision: str,
                   repeats: int, warmup: int, max_seconds: float) -> tuple[float, str]:
    """Median ms of OpenVINO alone over one frame's batches: ``benchmark_app`` per batch shape, summed."""
    tool = benchmark_app_path()
    if tool is None:
        return _openvino_bare(path, chunks, threads, precision, repeats, warmup, max_seconds), "openvino compiled model"
    total = 0.0
    for chunk in chunks:
        command = [tool, "-m", str(path), "-d", "CPU", "-shape", "[" + ",".join(map(str, chunk.shape)) + "]",
                   "-hint", "latency", "-t", str(max(2, int(round(max_seconds)))), "-infer_precision", precision]
        if threads is not None:
            command += ["-nthreads", str(threads)]
        logger.debug("floor: %s", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, timeout=max_seconds * 4 + 120, check=False)
        found = _MEDIAN.findall(done.stdout)
        if done.returncode != 0 or not found:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"benchmark_app failed (exit {done.returncode}): {tail[0]}")
        total += float(found[-1])
    return total, "benchmark_app"


def _openvino_bare(path: Path, chunks: Sequence[np.ndarray], threads: int | None, precision: str, repeats: int,
                   warmup: int, max_seconds: float) -> float:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    times = time_calls(lambda: [request.infer({0: c}) for c in chunks], repeats, warmup, max_seconds)
    return float(np.median(times))


def engine_floor(backend: str, path: Path, chunks: Sequence[np.ndarray], threads: int | None, ov_precision: str,
                 repeats: int, warmup: int, max_seconds: float) -> tuple[float, str] | None:
    """The floor for ``backend`` on ``path`` (None where there is none, e.g. OpenCV, TensorRT, a GPU provider)."""
    if backend == "onnxruntime":
        return onnxruntime_floor(path, chunks, threads, repeats, warmup, max_seconds)
    if backend == "openvino":
        return openvino_floor(path, chunks, threads, ov_precision, repeats, warmup, max_seconds)
    return None
