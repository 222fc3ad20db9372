# patchdet camera service on a plain x86-64 or arm64 CPU box: the light runtime (numpy, OpenCV,
# ONNX Runtime) plus MQTT and Prometheus. No torch.
#   docker build -f docker/cpu.Dockerfile -t patchdet:cpu .
#   docker run --rm -v "$PWD/docker/site.yaml:/config/site.yaml:ro" -v patchdet-out:/data patchdet:cpu
# EXTRAS adds pyproject extras, e.g. --build-arg EXTRAS=serve,openvino for Intel CPUs.

# -- build: a virtual environment with patchdet and its runtime dependencies ---------------------------
FROM python:3.11.10-slim-bookworm AS build
ARG EXTRAS=serve
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY patchdet ./patchdet
COPY runtime ./runtime
COPY export ./export
COPY training ./training
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[${EXTRAS}]"

# -- runtime: the venv on a clean base, a non-root user ---------------------------------------------------
FROM python:3.11.10-slim-bookworm
# libglib/libgomp: OpenCV's video I/O and ONNX Runtime need them even with the headless wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 patchdet \
    && mkdir -p /config /data \
    && chown patchdet /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PATCHDET_HEALTH_PORT=9108
USER 10001
WORKDIR /data
EXPOSE 9108
# /healthz answers 503 while a camera has been down longer than metrics.camera_down_s.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['PATCHDET_HEALTH_PORT'] + '/healthz', timeout=4)"]
ENTRYPOINT ["patchdet"]
CMD ["serve", "--config", "/config/site.yaml"]
