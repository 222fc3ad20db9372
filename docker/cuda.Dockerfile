# patchdet on an x86_64 NVIDIA GPU: training (torch CUDA), export, and the runtime with
# ONNX Runtime's CUDA/TensorRT execution providers and the TensorRT Python API.
#   docker build -f docker/cuda.Dockerfile -t patchdet:cuda .
#   docker run --rm --gpus all -v "$PWD:/work" patchdet:cuda export models/discnn8_automobile.pt \
#       --formats onnx,tensorrt-fp16 --out out/artifacts
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/patchdet
COPY pyproject.toml README.md ./
COPY patchdet ./patchdet
COPY runtime ./runtime
COPY export ./export
COPY training ./training
# The base image ships TensorRT and its Python bindings; onnxruntime-gpu brings the CUDA/TensorRT providers.
RUN pip install ".[train,export]" \
    && pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu>=1.18" "cuda-python>=12.0"

WORKDIR /work
ENTRYPOINT ["patchdet"]
CMD ["--help"]
