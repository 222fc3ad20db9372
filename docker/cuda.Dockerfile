# patchdet on an x86-64 NVIDIA GPU server: the camera service with TensorRT engines, and the exporter
# (torch CUDA) so engines are built on the GPU that runs them.
#   docker build -f docker/cuda.Dockerfile -t patchdet:cuda .
#   docker run --rm --gpus all -v "$PWD/models:/models" patchdet:cuda export /models/discnn8_automobile.pt \
#       --formats onnx,tensorrt-fp16 --out /models/engines
#   docker run -d --gpus all -v "$PWD/docker/site.yaml:/config/site.yaml:ro" -v patchdet-out:/data patchdet:cuda

# -- build: the patchdet wheel ------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tensorrt:25.10-py3 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY patchdet ./patchdet
COPY runtime ./runtime
COPY export ./export
COPY training ./training
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: TensorRT and CUDA from the base image; ONNX Runtime with the CUDA/TensorRT providers ------
FROM nvcr.io/nvidia/tensorrt:25.10-py3
ARG EXTRAS=export,serve
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATCHDET_HEALTH_PORT=9108
COPY --from=build /wheels /wheels
# The base image ships TensorRT and its Python bindings; onnxruntime-gpu replaces the CPU wheel.
RUN WHEEL="$(ls /wheels/patchdet-*.whl)" \
    && python3 -m pip install "${WHEEL}[${EXTRAS}]" "cuda-python>=12.0,<13" \
    && python3 -m pip uninstall -y onnxruntime \
    && python3 -m pip install "onnxruntime-gpu>=1.18,<2" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 patchdet \
    && mkdir -p /config /data \
    && chown patchdet /data
USER 10001
WORKDIR /data
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PATCHDET_HEALTH_PORT'] + '/healthz', timeout=4)"]
ENTRYPOINT ["patchdet"]
CMD ["serve", "--config", "/config/site.yaml"]
