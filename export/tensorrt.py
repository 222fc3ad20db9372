"""TensorRT engines (FP16, INT8 from the QDQ ONNX) built with the TensorRT Python API.

Engines are tied to the GPU and the TensorRT version, so besides building
where ``tensorrt`` and a CUDA device exist, every export writes the exact
``trtexec`` command beside its ONNX source (``NAME_trt_fp16.trtexec.sh``) for
building on the target device (e.g. a Jetson). Where TensorRT or a GPU is
missing the format is reported as skipped with a one-line reason.

Precision: TensorRT 10 takes ``BuilderFlag.FP16`` for FP16 engines and builds
QDQ models as strongly typed networks (explicit quantization, no INT8 flag).
TensorRT 11 removed the precision flags: FP16 then comes from an FP16 ONNX made
here with ONNX Runtime's float16 converter (float32 inputs and outputs kept).
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from patchdet.export.artifact import BuildContext, BuildResult
from patchdet.export.formats import FORMATS

log = logging.getLogger(__name__)

OPT_BATCH = 64  # a 1080p frame is 220 tiles; 64-256 covers 720p-1080p per call
MAX_BATCH = 256
DENSE_OPT_HW = (736, 1280)
DENSE_MAX_HW = (1088, 1920)
WORKSPACE_BYTES = 1 << 30


def profile_shapes(input_size: int, dense: bool) -> dict[str, tuple[int, int, int, int]]:
    """min / opt / max input shapes of the optimisation profile (dynamic batch, or frame size when dense)."""
    if dense:
        return {
            "min": (1, 3, input_size, input_size),
            "opt": (1, 3, *DENSE_OPT_HW),
            "max": (1, 3, *DENSE_MAX_HW),
        }
    return {
        "min": (1, 3, input_size, input_size),
        "opt": (OPT_BATCH, 3, input_size, input_size),
        "max": (MAX_BATCH, 3, input_size, input_size),
    }


def trtexec_command(onnx_name: str, engine_name: str, precision: str, input_size: int, dense: bool) -> list[str]:
    """The ``trtexec`` command (TensorRT 10.x) that builds the same engine on the target device."""
    shapes = profile_shapes(input_size, dense)

    def dims(shape: tuple[int, ...]) -> str:
        return "input:" + "x".join(str(d) for d in shape)

    command = [
        "trtexec",
        f"--onnx={onnx_name}",
        f"--saveEngine={engine_name}",
        f"--minShapes={dims(shapes['min'])}",
        f"--optShapes={dims(shapes['opt'])}",
        f"--maxShapes={dims(shapes['max'])}",
        f"--timingCacheFile={Path(engine_name).stem}.timing.cache",
        f"--memPoolSize=workspace:{WORKSPACE_BYTES >> 20}M",
    ]
    command.append("--fp16" if precision == "fp16" else "--stronglyTyped")
    return command


def write_trtexec_script(path: Path, command: list[str], precision: str) -> Path:
    lines = [
        "#!/bin/sh",
        "# Build the TensorRT engine on the device that will run it (engines are tied to GPU + TensorRT version).",
        "# Run from the folder holding the ONNX file. TensorRT 10.x syntax.",
    ]
    if precision == "fp16":
        lines.append("# TensorRT 11 has no --fp16: convert the ONNX to FP16 first (ModelOpt AutoCast) and drop the flag.")
    else:
        lines.append("# The INT8 scales come from the QDQ nodes of the ONNX file (explicit quantization).")
    lines += ["set -e", 'cd "$(dirname "$0")"', shlex.join(command), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    os.chmod(path, 0o755)
    return path


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT and a CUDA device are usable, else a one-line reason naming the fix."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed: pip install 'patchdet[tensorrt]' on a machine with an NVIDIA GPU"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError:
            return "cuda-python is not installed: pip install 'patchdet[tensorrt]'"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return "no CUDA device is visible (TensorRT engines must be built on the GPU that runs them)"
    return None


def _fp16_onnx(source: Path, dest: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(dest))
    return dest


def build_engine(onnx_path: Path, engine_path: Path, precision: str, input_size: int, dense: bool,
                 timing_cache_path: Path) -> dict:
    """Build a serialized engine with the TensorRT Python API; returns settings for the card."""
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = precision == "int8" or major >= 11
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    source = onnx_path
    if precision == "fp16" and major >= 11:
        source = _fp16_onnx(onnx_path, engine_path.with_suffix(".fp16-source.onnx"))
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {source.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = profile_shapes(input_size, dense)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ValueError(f"TensorRT failed to build an engine from {source.name} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "tensorrt": trt.__version__,
        "strongly_typed": strongly_typed,
        "profile": {k: list(v) for k, v in shapes.items()},
        "timing_cache": timing_cache_path.name,
    }


def build_tensorrt(ctx: BuildContext) -> BuildResult:
    """Formats ``tensorrt-fp16`` / ``tensorrt-int8`` from the already published ONNX / QDQ ONNX."""
    source_spec = FORMATS[ctx.spec.source_format]
    source = ctx.out_dir / source_spec.artifact_name(ctx.base_name)
    if not source.is_file():
        raise ValueError(f"{ctx.spec.name} is built from {source.name} ({source_spec.name}), which is missing")
    engine_name = ctx.spec.artifact_name(ctx.base_name)
    command = trtexec_command(source.name, engine_name, ctx.spec.precision, ctx.input_size, ctx.dense)
    script = write_trtexec_script(
        ctx.staging_dir / f"{ctx.base_name}{ctx.spec.stem_suffix}.trtexec.sh", command, ctx.spec.precision
    )
    info = {"source": source.name, "trtexec": shlex.join(command)}
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return BuildResult(path=None, export_info=info, skipped_reason=f"{reason}; wrote {script.name}",
                           extra_files=[script])
    engine_path = ctx.staging_dir / engine_name
    cache_path = ctx.out_dir / f"{ctx.base_name}{ctx.spec.stem_suffix}.timing.cache"
    info.update(build_engine(source, engine_path, ctx.spec.precision, ctx.input_size, ctx.dense, cache_path))
    # Engines carry no metadata of their own: the card beside them is the description.
    return BuildResult(path=engine_path, export_info=info, extra_files=[script])
