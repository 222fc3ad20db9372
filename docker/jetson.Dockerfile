# patchdet runtime on a Jetson (JetPack 6, L4T r36, Python 3.10). TensorRT and CUDA come from
# the L4T base image; engines must be built on the device (see the .trtexec.sh file written
# beside every exported ONNX model).
#   docker build -f docker/jetson.Dockerfile -t patchdet:jetson .
#   docker run --rm --runtime nvidia --device /dev/video0 patchdet:jetson detect --source 0 \
#       --model /work/models/discnn8_automobile_fp16.engine
FROM nvcr.io/nvidia/l4t-tensorrt:r10.3.0-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip python3-venv libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/patchdet
COPY pyproject.toml README.md ./
COPY patchdet ./patchdet
COPY runtime ./runtime
COPY export ./export
COPY training ./training
# Light runtime only: no torch on the device. cuda-python drives TensorRT engine buffers.
RUN python3 -m pip install . "cuda-python>=12.0"

WORKDIR /work
ENTRYPOINT ["patchdet"]
CMD ["detect", "--help"]
