# patchdet runtime on a plain x86_64/arm64 CPU box: numpy + OpenCV + ONNX Runtime
# (+ OpenVINO for Intel CPUs). No torch.
#   docker build -f docker/cpu.Dockerfile -t patchdet:cpu .
#   docker run --rm -v "$PWD/out:/work/out" patchdet:cpu detect --save-video out/annotated.mp4
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# libgl/glib: OpenCV's video I/O needs them even in the headless wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/patchdet
COPY pyproject.toml README.md ./
COPY patchdet ./patchdet
COPY runtime ./runtime
COPY export ./export
COPY training ./training
RUN pip install ".[openvino]" \
    && useradd --create-home --uid 1000 patchdet
USER 1000
WORKDIR /work
ENTRYPOINT ["patchdet"]
CMD ["detect", "--help"]
