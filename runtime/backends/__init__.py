"""Inference backends behind one tiny interface (lazy: optional engines import on first use).

A backend is a callable: ``backend(batch: float32 [N, C, H, W]) -> dict[str, np.ndarray]``
mapping graph output names (see ``runtime.card``) to arrays. Pre- and
post-processing stay outside backends, so every backend is checked against
one reference on the same inputs. Every backend also has ``name`` (str),
``output_names`` (tuple of str), ``input_name`` and ``infer_many(batches)``
(a list of output dicts, in order; OpenVINO with the THROUGHPUT hint keeps
several of them in flight).

``load_backend(path, name="auto", threads=None, **options)`` picks the backend
from the artifact's extension or ``name`` (``onnxruntime``, ``openvino``,
``opencv``, ``tensorrt``); ``list_backends()`` names them and
``available_backends()`` says which are installed.

``load_detector`` (``patchdet detect --backend auto``) measures which engine
runs an ``.onnx`` artifact fastest on this machine with unchanged numerics
(``runtime.backends.fastest``, cached per machine). Here ``auto`` picks by
extension: ``.xml`` -> openvino, ``.engine``/``.plan`` -> tensorrt,
``.onnx`` -> onnxruntime (with its CUDA / TensorRT execution providers first
when the build has them), else openvino when installed, else opencv. At fp32
on the project's x86 CPU, onnxruntime was as fast as or faster than OpenVINO
and several times faster than OpenCV DNN
(``benchmarks/results/runtime_backends.md``); OpenVINO pays off with its
bf16 precision hint or an INT8 IR, both explicit choices (``.xml`` or
``--backend openvino``), never a silent change of numerics.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

# name -> "module:Class"; imported on first use so optional engines stay optional.
BACKENDS: dict[str, str] = {
    "onnxruntime": "patchdet.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "patchdet.runtime.backends.openvino:OpenVinoBackend",
    "opencv": "patchdet.runtime.backends.opencv:OpenCvBackend",
    "tensorrt": "patchdet.runtime.backends.tensorrt:TensorRtBackend",
}

# The Python package each backend needs, and the command that installs it.
_REQUIRES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "pip install onnxruntime"),
    "openvino": ("openvino", "pip install 'patchdet[openvino]'"),
    "opencv": ("cv2", "pip install opencv-python-headless"),
    "tensorrt": ("tensorrt", "pip install 'patchdet[tensorrt]'"),
}

# Which backends can read which artifact extensions.
_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx", ".ort"),
    "openvino": (".xml", ".onnx"),
    "opencv": (".onnx",),
    "tensorrt": (".engine", ".plan"),
}


class BackendError(RuntimeError):
    """A backend cannot be loaded or run (missing package, unreadable model)."""


class MissingBackendError(BackendError, ModuleNotFoundError):
    """The package a backend needs is not installed.

    Attributes:
        name: The missing Python package (as ``ModuleNotFoundError.name``), e.g. ``openvino``.
        install: The command that installs it, e.g. ``pip install 'patchdet[openvino]'``.
    """

    def __init__(self, message: str, package: str, install: str) -> None:
        super().__init__(message)
        self.name = package
        self.install = install


class Backend(Protocol):
    """What the detector needs from an inference engine."""

    name: str
    input_name: str
    output_names: tuple[str, ...]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch float32 [N, C, H, W]; returns output name -> array."""
        ...

    def infer_many(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Run several batches (possibly overlapped); results in input order."""
        ...


def list_backends() -> list[str]:
    """All backend names, installed or not."""
    return list(BACKENDS)


def is_installed(name: str) -> bool:
    """True when the Python package the backend ``name`` needs can be imported."""
    package = _REQUIRES[name][0]
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Names of the backends whose packages are installed (TensorRT also needs ``cuda``)."""
    names = []
    for name in BACKENDS:
        if not is_installed(name):
            continue
        if name == "tensorrt" and not (is_installed_module("cuda") or is_installed_module("pycuda")):
            continue
        names.append(name)
    return names


def is_installed_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(name: str) -> None:
    """Raise :class:`MissingBackendError` naming the extra when backend ``name`` is not installed."""
    package, hint = _REQUIRES[name]
    if not is_installed(name):
        raise MissingBackendError(
            f"backend {name!r} needs the Python package {package!r}, which is not installed: {hint}", package, hint
        )


def resolve_backend_name(path: str | Path, name: str = "auto") -> str:
    """The backend ``load_backend`` would use for ``path`` (no model is loaded).

    Raises:
        ValueError: For an unknown backend name, or an extension no backend reads.
        MissingBackendError: When the required package is not installed.
    """
    suffix = Path(path).suffix.lower()
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"backend {name!r} is unknown: expected auto or one of {', '.join(BACKENDS)}")
        if suffix not in _EXTENSIONS[name]:
            raise ValueError(
                f"backend {name!r} cannot read {Path(path).name!r}: expected a file ending in "
                f"{' or '.join(_EXTENSIONS[name])}"
            )
        require(name)
        return name
    if suffix == ".xml":
        require("openvino")
        return "openvino"
    if suffix in (".engine", ".plan"):
        require("tensorrt")
        return "tensorrt"
    if suffix in (".onnx", ".ort"):
        if is_installed("onnxruntime"):
            return "onnxruntime"
        if suffix == ".onnx" and is_installed("openvino"):
            return "openvino"
        if suffix == ".onnx" and is_installed("opencv"):
            return "opencv"
        raise MissingBackendError(
            f"no backend can run {Path(path).name!r}: install onnxruntime (pip install onnxruntime) "
            "or OpenVINO (pip install 'patchdet[openvino]')", "onnxruntime", "pip install onnxruntime"
        )
    raise ValueError(
        f"model file {str(path)!r} has an unknown extension {suffix or '(none)'!r}: "
        "expected .onnx, .xml (OpenVINO) or .engine/.plan (TensorRT)"
    )


def load_backend(path: str | Path, name: str = "auto", threads: int | None = None, **options: Any) -> Backend:
    """Load an artifact into an inference backend.

    Args:
        path: Model file (``.onnx``, ``.xml``, ``.engine``/``.plan``).
        name: ``auto`` or one of :func:`list_backends`.
        threads: Intra-op CPU threads (None: the engine's default).
        **options: Backend-specific settings, e.g. ``providers`` (onnxruntime),
            ``hint``/``precision``/``device``/``requests`` (openvino).

    Returns:
        A ready backend.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: For an unknown backend name, a wrong extension or bad threads.
        MissingBackendError: When the engine's package is not installed.
        BackendError: When the engine cannot read the model (corrupt file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise ValueError(f"thread count {threads!r} is invalid: expected a positive integer or None")
    chosen = resolve_backend_name(path, name)
    module_name, class_name = BACKENDS[chosen].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend = cls(path, threads=threads, **options)
    detail = getattr(backend, "providers", None)
    logger.info("backend %s%s for %s%s", backend.name, " (picked by auto)" if name == "auto" else "", path.name,
                f" (providers {', '.join(detail)})" if detail else "")
    return backend


def outputs_by_name(names: tuple[str, ...], arrays: list[Any]) -> dict[str, np.ndarray]:
    """Zip output names with arrays, as float32 numpy (shared helper for backends)."""
    return {n: np.asarray(a, dtype=np.float32) for n, a in zip(names, arrays, strict=True)}


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Validate a batch float32 [N, C, H, W] and make it C-contiguous."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[0] == 0:
        shape = getattr(batch, "shape", None)
        raise ValueError(f"batch with shape {shape} is invalid: expected a float32 array [N, C, H, W] with N >= 1")
    return np.ascontiguousarray(batch, dtype=np.float32)
