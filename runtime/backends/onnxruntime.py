"""ONNX Runtime backend: CPU, plus CUDA / TensorRT execution providers when the build has them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from patchdet.runtime.backends import BackendError, check_batch, outputs_by_name, require

logger = logging.getLogger(__name__)

# Preferred order; only those the installed build offers are used.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    """Run an ONNX model with ONNX Runtime.

    Args:
        path: ``.onnx`` (or ``.ort``) file.
        threads: Intra-op threads (None: ONNX Runtime's default, one per core).
        providers: Execution providers in order of preference; default: every
            provider of ``PROVIDER_ORDER`` this build offers (GPU first).
        optimization: ``all`` (default), ``extended``, ``basic`` or ``disabled``.
        spinning: ``False`` stops idle intra-op threads from spin-waiting, which
            leaves the CPU to other threads (``patchdet detect``'s reader and writer
            on a small CPU); ``None``: ONNX Runtime's default (spin).
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        optimization: str = "all",
        spinning: bool | None = None,
    ) -> None:
        require("onnxruntime")
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(f"onnxruntime optimization {optimization!r} is unknown: expected one of {', '.join(levels)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.log_severity_level = 3
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PROVIDER_ORDER if p in available]
        else:
            unknown = [p for p in providers if p not in available]
            if unknown:
                raise ValueError(
                    f"onnxruntime execution provider(s) {', '.join(unknown)} not available: "
                    f"this build offers {', '.join(available)}"
                )
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise BackendError(f"onnxruntime cannot load model {str(path)!r}: {_first_line(exc)}") from None
        self.providers = tuple(self.session.get_providers())
        self.input_name = self.session.get_inputs()[0].name
        # [N, C, H, W] with None for a dynamic axis: checked against the model card by the detector
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else None for d in self.session.get_inputs()[0].shape)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.threads = threads
        logger.debug("onnxruntime providers %s, threads %s", self.providers, threads)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        arrays = self.session.run(list(self.output_names), {self.input_name: check_batch(batch)})
        return outputs_by_name(self.output_names, arrays)

    def infer_many(self, batches: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [self(b) for b in batches]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
