"""The format table: every export format, its file name, needs and where it runs.

Each format maps to one builder function named as ``"module:function"`` and
imported on first use, so OpenVINO and TensorRT stay optional extras.
Artifact file names share the model's base name; the stems differ per format
so that every artifact gets its own ``<stem>.card.json`` beside it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class FormatSpec:
    """One export format.

    Attributes:
        name: Format name used on the command line.
        stem_suffix: Appended to the model's base name, e.g. ``_int8``.
        extension: Main artifact file extension (``.xml`` artifacts also have a ``.bin``).
        precision: ``fp32``, ``fp16`` or ``int8``.
        device: ``cpu`` when the artifact can be built and checked here, ``gpu`` otherwise.
        needs: Python modules the builder imports.
        extra: The ``patchdet[...]`` extra that provides ``needs``.
        needs_calibration: INT8 formats need calibration images.
        builder: ``"module:function"`` building the artifact.
        source_format: Format whose artifact this one is built from (TensorRT).
    """

    name: str
    stem_suffix: str
    extension: str
    precision: str
    device: str
    needs: tuple[str, ...]
    extra: str
    needs_calibration: bool
    builder: str
    source_format: str | None = None

    def artifact_name(self, base_name: str) -> str:
        return f"{base_name}{self.stem_suffix}{self.extension}"

    def companion_suffixes(self) -> tuple[str, ...]:
        """Files that make up the artifact besides the main one (OpenVINO weights)."""
        return (".bin",) if self.extension == ".xml" else ()

    def missing_modules(self) -> list[str]:
        return [m for m in self.needs if importlib.util.find_spec(m) is None]

    def load_builder(self):
        module_name, function_name = self.builder.split(":")
        return getattr(importlib.import_module(module_name), function_name)


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("onnx", "", ".onnx", "fp32", "cpu", ("onnx", "onnxruntime"), "export", False,
                   "patchdet.export.onnx:build_onnx"),
        FormatSpec("onnx-int8", "_int8", ".onnx", "int8", "cpu", ("onnx", "onnxruntime"), "export", True,
                   "patchdet.export.onnx_int8:build_onnx_int8"),
        FormatSpec("onnx-int8-u8s8", "_int8_u8s8", ".onnx", "int8", "cpu", ("onnx", "onnxruntime"), "export", True,
                   "patchdet.export.onnx_int8:build_onnx_int8_u8s8"),
        FormatSpec("openvino", "_openvino", ".xml", "fp32", "cpu", ("openvino",), "openvino", False,
                   "patchdet.export.openvino:build_openvino"),
        FormatSpec("openvino-fp16", "_openvino_fp16", ".xml", "fp16", "cpu", ("openvino",), "openvino", False,
                   "patchdet.export.openvino:build_openvino"),
        FormatSpec("openvino-int8", "_openvino_int8", ".xml", "int8", "cpu", ("openvino", "nncf"), "openvino", True,
                   "patchdet.export.openvino:build_openvino_int8"),
        FormatSpec("tensorrt-fp16", "_trt_fp16", ".engine", "fp16", "gpu", ("tensorrt",), "tensorrt", False,
                   "patchdet.export.tensorrt:build_tensorrt", source_format="onnx"),
        FormatSpec("tensorrt-int8", "_trt_int8", ".engine", "int8", "gpu", ("tensorrt",), "tensorrt", True,
                   "patchdet.export.tensorrt:build_tensorrt", source_format="onnx-int8"),
    )
}

CPU_FORMATS = tuple(name for name, spec in FORMATS.items() if spec.device == "cpu")
# Shortcuts for --formats (expanded in place, so the resolved config lists the real formats).
FORMAT_GROUPS: dict[str, tuple[str, ...]] = {
    "cpu": CPU_FORMATS,
    "gpu": tuple(name for name, spec in FORMATS.items() if spec.device == "gpu"),
    "all": tuple(FORMATS),
}


def expand_formats(names: tuple[str, ...]) -> tuple[str, ...]:
    """Format names with the shortcuts of ``FORMAT_GROUPS`` expanded, in order.

    Overlaps with a shortcut (``onnx,cpu``) are dropped; without a shortcut the list is returned as given,
    so a format named twice is still refused by ``ExportConfig``.
    """
    if not any(name in FORMAT_GROUPS for name in names):
        return tuple(names)
    expanded: list[str] = []
    for name in names:
        for item in FORMAT_GROUPS.get(name, (name,)):
            if item not in expanded:
                expanded.append(item)
    return tuple(expanded)


def get_format(name: str) -> FormatSpec:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}: known formats are {', '.join(FORMATS)}") from None


def format_table_markdown() -> str:
    """The format table as Markdown (for the README and ``patchdet export --list-formats``)."""
    rows = ["| format | file | precision | runs on | needs | extra |", "|---|---|---|---|---|---|"]
    for spec in FORMATS.values():
        rows.append(
            f"| `{spec.name}` | `NAME{spec.stem_suffix}{spec.extension}` | {spec.precision} | {spec.device} | "
            f"{', '.join(spec.needs)}{' + calibration images' if spec.needs_calibration else ''} | "
            f"`patchdet[{spec.extra}]` |"
        )
    groups = "; ".join(f"`{group}` = {', '.join(names)}" for group, names in FORMAT_GROUPS.items())
    return "\n".join(rows) + f"\n\nShortcuts for `--formats`: {groups}."
