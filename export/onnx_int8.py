"""INT8 ONNX: ONNX Runtime static post-training quantization (QDQ, per-channel symmetric weights).

Two flavours of activations:

* ``onnx-int8`` (S8S8): symmetric signed INT8 activations (zero point 0), what
  TensorRT 10/11 needs to build an explicit-precision engine from the QDQ file.
  ONNX Runtime on x86 runs these about twice slower than fp32 (issue 11).
* ``onnx-int8-u8s8``: asymmetric unsigned activations with signed weights, the
  layout of ONNX Runtime's fast x86 kernels (VNNI / AVX2 u8 x s8 dot products).
  Post-ReLU activations are non-negative, so the unsigned range also keeps one
  more bit of resolution. For ONNX Runtime on CPUs, not for TensorRT. With ``float_head`` the
final FC layer and the norm / cosine / softmax arithmetic after it stay in
float (``nodes_to_exclude``).

Fully-connected layers (``Gemm`` / ``MatMul`` and the ``Flatten`` before them)
always stay float: they are under 0.2 % of a DisCNN patch's FLOPs, so INT8
buys no speed there, and OpenCV DNN 5.0 cannot load a QDQ ``Flatten``/``Gemm``
(``bufidx >= 0`` assertion), which kept the INT8 patch model off the OpenCV
backend. Convolutions, where the time goes, are quantized.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from patchdet.export.artifact import BuildContext, BuildResult
from patchdet.export.onnx import INPUT_NAME, export_graph_onnx, write_onnx_card

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Gemm", "MatMul", "Conv")
# Kept in float (see the module docstring).
FLOAT_OPS = ("Gemm", "MatMul", "Flatten")
CALIBRATION_BATCH = 16


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


def calibration_batches(calibration: np.ndarray, batch_size: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
    for start in range(0, len(calibration), batch_size):
        yield np.ascontiguousarray(calibration[start:start + batch_size], dtype=np.float32)


def head_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the final weighted node (last FC layer) and of every node downstream of it.

    The final weighted node is found by walking up from the producer of the
    first graph output (``embedding`` / ``logits``) through weight-free nodes.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type not in WEIGHT_OPS:
        node = next((producers[i] for i in node.input if i in producers), None)
    if node is None:
        return []
    names = {node.name}
    frontier = set(node.output)
    changed = True
    while changed:  # downstream closure (graphs here are tiny)
        changed = False
        for other in model.graph.node:
            if other.name not in names and frontier.intersection(other.input):
                names.add(other.name)
                frontier.update(other.output)
                changed = True
    return sorted(names)


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray, float_head: bool,
                  unsigned_activations: bool = False) -> dict:
    """Quantize ``fp32_path`` into ``int8_path``; returns the settings for the card.

    Args:
        fp32_path: FP32 ONNX file (input name ``input``).
        int8_path: Output QDQ ONNX file.
        calibration: float32 [N, 3, H, W] normalised calibration inputs.
        float_head: Exclude the final FC layer and the head arithmetic from quantization.
        unsigned_activations: uint8 asymmetric activations (U8S8, ONNX Runtime's fast CPU path) instead of
            int8 symmetric ones (S8S8, what TensorRT needs).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = calibration_batches(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    # Nodes need names for nodes_to_exclude; the torch exporter names them, make sure.
    model = onnx.load(str(fp32_path))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    onnx.save(model, str(fp32_path))
    excluded = sorted(set(head_node_names(model) if float_head else [])
                      | {node.name for node in model.graph.node if node.op_type in FLOAT_OPS})
    quiet = _DropPreprocessAdvice()
    logging.getLogger().addFilter(quiet)  # ORT advises quant_pre_process; onnxslim already simplified the graph
    try:
        quantize_static(
            str(fp32_path),
            str(int8_path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8 if unsigned_activations else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded or None,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": not unsigned_activations, "WeightSymmetric": True},
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    onnx.checker.check_model(onnx.load(str(int8_path)))
    return {
        "quantizer": "onnxruntime.quantize_static",
        "quant_format": "QDQ",
        "activations": "uint8 asymmetric (per-tensor, MinMax)" if unsigned_activations
        else "int8 symmetric (per-tensor, MinMax)",
        "weights": "int8 symmetric per-channel",
        "calibration_images": int(len(calibration)),
        "float_head": bool(float_head),
        "float_ops": list(FLOAT_OPS),
        "excluded_nodes": excluded,
    }


def build_onnx_int8(ctx: BuildContext) -> BuildResult:
    """Format ``onnx-int8`` (S8S8, for TensorRT): FP32 export in the staging folder, then ``quantize_static``."""
    return _build(ctx, unsigned_activations=False)


def build_onnx_int8_u8s8(ctx: BuildContext) -> BuildResult:
    """Format ``onnx-int8-u8s8`` (unsigned activations, for ONNX Runtime on CPUs)."""
    return _build(ctx, unsigned_activations=True)


def _build(ctx: BuildContext, unsigned_activations: bool) -> BuildResult:
    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise ValueError(f"{ctx.spec.name} needs calibration images (--calib DIR)")
    fp32_path = ctx.staging_dir / f"{ctx.base_name}.fp32-source.onnx"
    export_graph_onnx(ctx.graph, fp32_path, ctx.input_size, ctx.dense, ctx.opset)
    path = ctx.staging_dir / ctx.spec.artifact_name(ctx.base_name)
    info = quantize_onnx(fp32_path, path, ctx.calibration, ctx.float_head, unsigned_activations)
    info["opset"] = ctx.opset
    return BuildResult(path=path, export_info=info, embed_card=lambda card: write_onnx_card(path, card))
