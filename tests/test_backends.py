"""Backends: selection, errors, and every available backend against onnxruntime on the same inputs."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest

from patchdet.runtime import backends
from patchdet.runtime.backends import (
    BackendError,
    MissingBackendError,
    available_backends,
    list_backends,
    load_backend,
    resolve_backend_name,
)
from tests.fixtures_onnx import KINDS, write_model

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CPU_BACKENDS = [b for b in ("onnxruntime", "openvino", "opencv") if b in available_backends()]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend_models")
    return {kind: write_model(root / f"{kind}.onnx", kind) for kind in KINDS}


def _inputs(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (1, 3, 64, 96) if kind == "dense" else (5, 3, 32, 32)
    return rng.normal(size=shape).astype(np.float32)


def test_list_and_available():
    assert list_backends() == ["onnxruntime", "openvino", "opencv", "tensorrt"]
    assert "onnxruntime" in available_backends()
    assert set(available_backends()) <= set(list_backends())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_backend_matches_onnxruntime(models, kind, name):
    reference = load_backend(models[kind], "onnxruntime", threads=1)
    backend = load_backend(models[kind], name, threads=1)
    assert backend.name == name
    assert set(backend.output_names) == set(reference.output_names)
    x = _inputs(kind)
    expected = reference(x)
    got = backend(x)
    for out in reference.output_names:
        assert got[out].dtype == np.float32
        np.testing.assert_allclose(got[out], expected[out], rtol=1e-4, atol=1e-5, err_msg=f"{name} {kind} {out}")


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_backend_batch_sizes_and_infer_many(models, name):
    backend = load_backend(models["modulus"], name, threads=1)
    x = _inputs("modulus")
    full = backend(x)["score"]
    np.testing.assert_allclose(backend(x[:1])["score"], full[:1], rtol=1e-5, atol=1e-6)
    many = backend.infer_many([x[:2], x[2:]])
    np.testing.assert_allclose(np.concatenate([m["score"] for m in many]), full, rtol=1e-5, atol=1e-6)


@pytest.mark.openvino
@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (pip install 'patchdet[openvino]')")
def test_openvino_throughput_async(models):
    backend = load_backend(models["modulus"], "openvino", threads=1, hint="THROUGHPUT", requests=2)
    batches = [np.random.default_rng(k).normal(size=(3, 3, 32, 32)).astype(np.float32) for k in range(5)]
    reference = load_backend(models["modulus"], "onnxruntime", threads=1)
    many = backend.infer_many(batches)
    for batch, out in zip(batches, many, strict=True):
        np.testing.assert_allclose(out["score"], reference(batch)["score"], rtol=1e-4, atol=1e-5)
    seen = []
    for batch in batches:
        backend.submit(batch, seen.append)
    backend.wait()
    assert len(seen) == len(batches)
    expected = sorted(float(reference(b)["score"].sum()) for b in batches)
    assert sorted(float(s["score"].sum()) for s in seen) == pytest.approx(expected, rel=1e-4)

    def broken(outputs):
        raise RuntimeError("sink is full")

    backend.submit(batches[0], broken)
    with pytest.raises(BackendError, match="callback failed: RuntimeError: sink is full"):
        backend.wait()
    backend.wait()  # the error is reported once


@pytest.mark.openvino
@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO not installed (pip install 'patchdet[openvino]')")
def test_openvino_reads_ir(models, tmp_path):
    import openvino as ov

    xml = tmp_path / "modulus.xml"
    ov.save_model(ov.convert_model(str(models["modulus"])), str(xml))
    backend = load_backend(xml, threads=1)
    assert backend.name == "openvino"
    x = _inputs("modulus")
    np.testing.assert_allclose(backend(x)["score"], load_backend(models["modulus"], "onnxruntime")(x)["score"],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="OpenVINO performance hint 'FAST' is unknown"):
        load_backend(xml, "openvino", hint="FAST")


def test_onnxruntime_options(models):
    backend = load_backend(models["modulus"], "onnxruntime", threads=1, providers=["CPUExecutionProvider"])
    assert backend.providers == ("CPUExecutionProvider",)
    with pytest.raises(ValueError, match="not available"):
        load_backend(models["modulus"], "onnxruntime", providers=["NoSuchExecutionProvider"])


def test_resolve_by_extension(tmp_path):
    assert resolve_backend_name("m.onnx", "onnxruntime") == "onnxruntime"
    assert resolve_backend_name("m.onnx") == "onnxruntime"
    if HAS_OPENVINO:
        assert resolve_backend_name("m.xml") == "openvino"
    with pytest.raises(ValueError, match="unknown extension '.pt'"):
        resolve_backend_name("m.pt")
    with pytest.raises(ValueError, match="backend 'onnxruntime' cannot read 'm.xml'"):
        resolve_backend_name("m.xml", "onnxruntime")
    with pytest.raises(ValueError, match="backend 'fast' is unknown"):
        resolve_backend_name("m.onnx", "fast")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "is_installed", lambda name: name in ("onnxruntime", "opencv"))
    with pytest.raises(MissingBackendError, match=r"pip install 'patchdet\[openvino\]'"):
        resolve_backend_name("m.xml")
    with pytest.raises(MissingBackendError, match=r"patchdet\[tensorrt\]"):
        resolve_backend_name("m.engine")
    assert resolve_backend_name("m.onnx") == "onnxruntime"
    monkeypatch.setattr(backends, "is_installed", lambda name: name == "opencv")
    assert resolve_backend_name("m.onnx") == "opencv"
    monkeypatch.setattr(backends, "is_installed", lambda name: False)
    with pytest.raises(MissingBackendError, match="no backend can run 'm.onnx'"):
        resolve_backend_name("m.onnx")


def test_missing_and_corrupt_files(tmp_path, models):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backend(tmp_path / "none.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a model")
    for name in CPU_BACKENDS:
        with pytest.raises(BackendError, match="cannot load model"):
            load_backend(corrupt, name)
    with pytest.raises(ValueError, match="thread count 0 is invalid"):
        load_backend(models["modulus"], threads=0)


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_bad_batch_is_rejected(models, name):
    backend = load_backend(models["modulus"], name)
    with pytest.raises(ValueError, match="expected a float32 array"):
        backend(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="with N >= 1"):
        backend(np.zeros((0, 3, 32, 32), np.float32))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed (needs NVIDIA's index and a CUDA GPU)")
def test_tensorrt_engine_matches_onnxruntime(models, tmp_path):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(models["modulus"].read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    config.add_optimization_profile(profile)
    engine_path = tmp_path / "modulus.engine"
    engine_path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    backend = load_backend(engine_path)
    x = np.random.default_rng(0).normal(size=(20, 3, 32, 32)).astype(np.float32)  # > max batch: split
    np.testing.assert_allclose(backend(x)["score"], load_backend(models["modulus"], "onnxruntime")(x)["score"],
                               rtol=1e-3, atol=1e-4)


def _fake_tensorrt_modules(max_batch: int):
    """Minimal stand-ins for ``tensorrt`` and ``cuda.bindings.runtime``: device memory is host memory.

    They follow the TensorRT 10 / cuda-python call signatures the backend uses, so
    the backend's own logic (shapes, buffers, chunking, copies) runs without a GPU.
    """
    import ctypes
    import enum
    import importlib.machinery
    import types

    memory: dict[int, np.ndarray] = {}
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)

    class TensorIOMode(enum.Enum):
        INPUT = 0
        OUTPUT = 1

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= max_batch:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            n = self.shapes["input"][0]
            return {"embedding": (n, 4), "score": (n,)}[name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            shape = self.shapes["input"]
            count = int(np.prod(shape))
            x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["input"])).reshape(shape)
            embedding = np.ascontiguousarray(np.maximum(x.reshape(shape[0], 3, -1).mean(axis=2), 0)[:, [0, 1, 2, 0]],
                                             dtype=np.float32)
            score = np.sqrt((embedding ** 2).sum(axis=1)).astype(np.float32)
            ctypes.memmove(self.addresses["embedding"], embedding.ctypes.data, embedding.nbytes)
            ctypes.memmove(self.addresses["score"], score.ctypes.data, score.nbytes)
            return True

    class Engine:
        num_io_tensors = 3
        names = ("input", "embedding", "score")

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return (-1, 3, 32, 32) if name == "input" else (-1, 4)

        def get_tensor_profile_shape(self, name, profile):
            return ((1, 3, 32, 32), (max_batch, 3, 32, 32), (max_batch, 3, 32, 32))

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"engine" else None

    trt.Logger, trt.Runtime, trt.TensorIOMode = Logger, Runtime, TensorIOMode
    trt.nptype = lambda dtype: np.float32

    rt = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):  # noqa: N801 -- the CUDA name
        cudaSuccess = 0

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def cuda_malloc(nbytes):
        block = np.zeros(nbytes, np.uint8)
        memory[block.ctypes.data] = block
        return cudaError_t.cudaSuccess, block.ctypes.data

    def cuda_memcpy_async(dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (cudaError_t.cudaSuccess,)

    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaStreamCreate = lambda: (cudaError_t.cudaSuccess, 7)
    rt.cudaMalloc = cuda_malloc
    rt.cudaFree = lambda ptr: (memory.pop(ptr, None), (cudaError_t.cudaSuccess,))[1]
    rt.cudaMemcpyAsync = cuda_memcpy_async
    rt.cudaStreamSynchronize = lambda stream: (cudaError_t.cudaSuccess,)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    return {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}, memory


def test_tensorrt_backend_logic_with_fake_modules(monkeypatch, tmp_path):
    modules, memory = _fake_tensorrt_modules(max_batch=4)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    backend = load_backend(engine)
    assert backend.name == "tensorrt" and backend.output_names == ("embedding", "score") and backend.max_batch == 4
    x = np.random.default_rng(0).normal(size=(10, 3, 32, 32)).astype(np.float32)  # 10 > 4: three chunks
    out = backend(x)
    expected_embedding = np.maximum(x.reshape(10, 3, -1).mean(axis=2), 0)[:, [0, 1, 2, 0]]
    np.testing.assert_allclose(out["embedding"], expected_embedding, rtol=1e-6)
    np.testing.assert_allclose(out["score"], np.linalg.norm(expected_embedding, axis=1), rtol=1e-5)
    backend.close()
    assert memory == {}  # every device buffer freed
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"garbage")
    with pytest.raises(BackendError, match="cannot deserialize engine"):
        load_backend(bad)


def test_auto_says_which_backend_it_picked(models, caplog):
    with caplog.at_level(logging.INFO, logger="patchdet.runtime.backends"):
        backend = load_backend(models["modulus"])
    assert backend.name == "onnxruntime"
    assert any("backend onnxruntime (picked by auto) for modulus.onnx" in r.getMessage() for r in caplog.records)
