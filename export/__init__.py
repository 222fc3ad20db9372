"""Export stage: checkpoints -> ONNX / ONNX INT8 / OpenVINO / TensorRT artifacts with model cards."""
