"""OpenVINO IR (FP32 / FP16) and INT8 IR quantized with NNCF, converted from the FP32 ONNX graph.

The card goes into ``rt_info`` under ``patchdet/card``. Needs the
``patchdet[openvino]`` extra (``openvino``, ``nncf``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from patchdet.export.artifact import BuildContext, BuildResult
from patchdet.export.onnx import export_graph_onnx
from patchdet.runtime.card import ModelCard

log = logging.getLogger(__name__)

RT_INFO_PATH = ["patchdet", "card"]
_WEIGHT_TYPES = ("MatMul", "Convolution")


def _require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ModuleNotFoundError(
            "OpenVINO is not installed: install it with pip install 'patchdet[openvino]'", name="openvino"
        ) from None
    return ov


def convert_onnx(onnx_path: Path):
    """Read an ONNX file into an ``openvino.Model``."""
    return _require_openvino().convert_model(str(onnx_path))


def save_with_card(model, path: Path, card: ModelCard, compress_to_fp16: bool) -> None:
    """Write ``model`` as IR (``.xml`` + ``.bin``) with ``card`` in its rt_info."""
    ov = _require_openvino()
    model.set_rt_info(card.to_json(), RT_INFO_PATH)
    ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)


def read_openvino_card(path: str | Path) -> ModelCard:
    """The card stored in an IR's rt_info."""
    ov = _require_openvino()
    model = ov.Core().read_model(str(path))
    if not model.has_rt_info(RT_INFO_PATH):
        raise ValueError(f"OpenVINO IR {path} carries no {'/'.join(RT_INFO_PATH)} rt_info")
    return ModelCard.from_json(model.get_rt_info(RT_INFO_PATH).astype(str))


def head_op_names(model) -> list[str]:
    """Friendly names of the final weighted op (last FC layer) and every op after it (Results excluded)."""
    node = model.outputs[0].get_node()
    while node is not None and node.get_type_name() not in _WEIGHT_TYPES:
        parents = [node.input_value(i).get_node() for i in range(node.get_input_size())]
        parents = [p for p in parents if p.get_type_name() not in ("Constant", "Convert")]
        node = parents[0] if parents else None
    if node is None:
        return []
    names: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current.get_type_name() == "Result" or current.get_friendly_name() in names:
            continue
        names.add(current.get_friendly_name())
        for output in current.outputs():
            stack.extend(target.get_node() for target in output.get_target_inputs())
    return sorted(names)


def build_openvino(ctx: BuildContext) -> BuildResult:
    """Formats ``openvino`` (FP32 IR) and ``openvino-fp16`` (FP16-compressed weights)."""
    onnx_path = ctx.staging_dir / f"{ctx.base_name}.fp32-source.onnx"
    export_graph_onnx(ctx.graph, onnx_path, ctx.input_size, ctx.dense, ctx.opset)
    model = convert_onnx(onnx_path)
    compress = ctx.spec.precision == "fp16"
    path = ctx.staging_dir / ctx.spec.artifact_name(ctx.base_name)
    save_with_card(model, path, ctx.card, compress)
    return BuildResult(
        path=path,
        export_info={"converter": "openvino.convert_model(onnx)", "compress_to_fp16": compress, "opset": ctx.opset},
        embed_card=lambda card: save_with_card(model, path, card, compress),
    )


@contextlib.contextmanager
def quiet_nncf(nncf: object) -> Iterator[None]:
    """Silence NNCF's INFO lines, its progress bars and torch's "No CUDA runtime" note, unless debugging.

    NNCF logs to its own stdout handler at INFO and draws rich progress bars on stdout, which
    interleave with our log and the export progress bar; ``patchdet -v`` shows them all.
    """
    if logging.getLogger("patchdet").isEnabledFor(logging.DEBUG):
        yield
        return
    nncf.set_log_level(logging.WARNING)
    cuda_note = logging.getLogger("torch.utils.cpp_extension")
    level = cuda_note.level
    cuda_note.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        cuda_note.setLevel(level)


def build_openvino_int8(ctx: BuildContext) -> BuildResult:
    """Format ``openvino-int8``: NNCF post-training quantization of the FP32 IR (symmetric preset)."""
    import nncf

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise ValueError("openvino-int8 needs calibration images (--calib DIR)")
    onnx_path = ctx.staging_dir / f"{ctx.base_name}.fp32-source.onnx"
    export_graph_onnx(ctx.graph, onnx_path, ctx.input_size, ctx.dense, ctx.opset)
    model = convert_onnx(onnx_path)
    ignored = head_op_names(model) if ctx.float_head else []
    samples = [np.ascontiguousarray(ctx.calibration[i:i + 1]) for i in range(len(ctx.calibration))]
    with quiet_nncf(nncf):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric activations and weights
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
        )
    path = ctx.staging_dir / ctx.spec.artifact_name(ctx.base_name)
    save_with_card(quantized, path, ctx.card, compress_to_fp16=False)
    info = {
        "quantizer": "nncf.quantize",
        "preset": "PERFORMANCE (symmetric)",
        "calibration_images": len(samples),
        "float_head": bool(ctx.float_head),
        "ignored_scope": ignored,
        "opset": ctx.opset,
    }
    return BuildResult(
        path=path, export_info=info, embed_card=lambda card: save_with_card(quantized, path, card, False)
    )
