"""TensorRT backend: serialized engines (``.engine``/``.plan``) via the TensorRT 10 Python API.

Device memory and streams come from cuda-python (``cuda.bindings.runtime``, or
the older ``cuda.cudart``); pycuda is used when cuda-python is absent. Engines
are built for one GPU and TensorRT version (``patchdet export --format
tensorrt`` on the target device). Written against the documented TensorRT 10
API (``num_io_tensors``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); this project's CI has no GPU, so the tests skip it.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from patchdet.runtime.backends import BackendError, MissingBackendError, check_batch, require

logger = logging.getLogger(__name__)


class _CudaPython:
    """Minimal CUDA runtime calls through cuda-python."""

    def __init__(self) -> None:
        try:
            self.rt = importlib.import_module("cuda.bindings.runtime")
        except ImportError:
            self.rt = importlib.import_module("cuda.cudart")
        err, self.stream = self.rt.cudaStreamCreate()
        self._check(err, "cudaStreamCreate")

    def _check(self, err: Any, what: str) -> None:
        if int(err) != int(self.rt.cudaError_t.cudaSuccess):
            raise BackendError(f"CUDA call {what} failed with error {int(err)}")

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        err, ptr = self.rt.cudaMalloc(max(1, int(nbytes)))
        self._check(err, "cudaMalloc")
        return int(ptr)

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        (err,) = self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream)
        self._check(err, "cudaMemcpyAsync(host to device)")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        (err,) = self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream)
        self._check(err, "cudaMemcpyAsync(device to host)")

    def synchronize(self) -> None:
        (err,) = self.rt.cudaStreamSynchronize(self.stream)
        self._check(err, "cudaStreamSynchronize")


class _PyCuda:
    """The same calls through pycuda."""

    def __init__(self) -> None:
        importlib.import_module("pycuda.autoinit")  # creates and pushes a context on device 0
        self.driver = importlib.import_module("pycuda.driver")
        self.stream = self.driver.Stream()
        self._allocations: dict[int, Any] = {}

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def malloc(self, nbytes: int) -> int:
        allocation = self.driver.mem_alloc(max(1, int(nbytes)))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.driver.memcpy_htod_async(ptr, host, self.stream)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self.driver.memcpy_dtoh_async(host, ptr, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


def _cuda() -> _CudaPython | _PyCuda:
    for loader in (_CudaPython, _PyCuda):
        try:
            return loader()
        except ImportError:
            continue
    raise MissingBackendError(
        "backend 'tensorrt' needs cuda-python or pycuda for device memory, neither is installed: "
        "pip install 'patchdet[tensorrt]'",
        "cuda-python", "pip install 'patchdet[tensorrt]'",
    )


class TensorRtBackend:
    """Run a serialized TensorRT engine on the GPU.

    Args:
        path: ``.engine`` / ``.plan`` file built by TensorRT 10 for this GPU.
        threads: Ignored (kept for the common signature).
        profile: Optimization profile index (default 0).
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, threads: int | None = None, profile: int = 0) -> None:
        require("tensorrt")
        import tensorrt as trt

        self.trt = trt
        self.cuda = _cuda()
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        engine_bytes = Path(path).read_bytes()
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendError(
                f"TensorRT cannot deserialize engine {str(path)!r}: corrupt, or built for another TensorRT version or GPU"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT cannot create an execution context for {str(path)!r}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BackendError(f"TensorRT engine {str(path)!r} has {len(inputs)} inputs: expected exactly 1")
        self.input_name = inputs[0]
        self.output_names = tuple(n for n in names if n not in inputs)
        self.profile = profile
        if profile != 0:  # profile 0 is active by default
            self.context.set_optimization_profile_async(profile, self.cuda.stream_handle)
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.input_shape = tuple(int(d) if d > 0 else None for d in shape)
        if shape[0] == -1:  # dynamic batch: the profile's max batch bounds one call
            self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, profile)[2][0])
        else:
            self.max_batch = int(shape[0])
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.threads = threads

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        trt = self.trt
        input_dtype = trt.nptype(self.engine.get_tensor_dtype(self.input_name))
        host_in = np.ascontiguousarray(batch, dtype=input_dtype)
        if not self.context.set_input_shape(self.input_name, host_in.shape):
            raise BackendError(f"TensorRT engine rejects input shape {host_in.shape}")
        ptr_in = self._buffer(self.input_name, host_in.nbytes)
        self.context.set_tensor_address(self.input_name, ptr_in)
        self.cuda.to_device(ptr_in, host_in)
        hosts = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            ptr = self._buffer(name, host.nbytes)
            self.context.set_tensor_address(name, ptr)
            hosts[name] = (host, ptr)
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise BackendError("TensorRT execute_async_v3 failed")
        for host, ptr in hosts.values():
            self.cuda.to_host(host, ptr)
        self.cuda.synchronize()
        return {name: host.astype(np.float32, copy=False) for name, (host, _) in hosts.items()}

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = check_batch(batch)
        if len(batch) <= self.max_batch:
            return self._run(batch)
        parts = [self._run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def infer_many(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [self(b) for b in batches]

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
