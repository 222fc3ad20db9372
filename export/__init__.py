"""Export stage: checkpoints -> ONNX / ONNX INT8 / OpenVINO / TensorRT artifacts with model cards.

The one library function is ``export.batch.export(ExportConfig) -> manifest entries``;
the format table is ``export.formats.FORMATS``; ``patchdet export`` (``export.cli``) wraps both.
"""
