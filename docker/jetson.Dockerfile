# patchdet camera service on a Jetson (JetPack 6.x, L4T r36, Python 3.10). TensorRT and CUDA come from
# JetPack through the L4T base image; engines are built on the device (docs/jetson.md).
#   docker build -f docker/jetson.Dockerfile -t patchdet:jetson .
#   docker run -d --runtime nvidia -v "$PWD/docker/site.yaml:/config/site.yaml:ro" -v patchdet-out:/data \
#       -v "$PWD/models:/models" patchdet:jetson

# -- build: the patchdet wheel ------------------------------------------------------------------------------
FROM nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY patchdet ./patchdet
COPY runtime ./runtime
COPY export ./export
COPY training ./training
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels .

# -- runtime: light runtime only (no torch on the device); cuda-python drives TensorRT engine buffers -------
FROM nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime
ARG EXTRAS=serve
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATCHDET_HEALTH_PORT=9108
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN WHEEL="$(ls /wheels/patchdet-*.whl)" \
    && python3 -m pip install "${WHEEL}[${EXTRAS}]" "cuda-python>=12.0,<13" \
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
