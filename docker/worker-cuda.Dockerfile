# A distill worker for NVIDIA GPUs (teacher inference and training on CUDA). Build from the
# repository root:
#   docker build -f docker/worker-cuda.Dockerfile -t distill-worker-cuda .
# Run it with the NVIDIA Container Toolkit (`docker run --gpus all ...`, or the `gpu` profile of
# docker/compose.yaml). The host needs an NVIDIA driver for CUDA 13.0 (R580 or newer).
#
# No nvidia/cuda base image: PyPI's Linux torch 2.13.0 wheel is built for CUDA 13.0 and brings
# the CUDA runtime, cuBLAS, cuDNN and NCCL as nvidia-* / cuda-toolkit wheels, and the container
# toolkit mounts the host's driver. A CUDA base would add a second copy of the runtime, and its
# Ubuntu 24.04 images ship Python 3.12, not the 3.11 this project pins in CI.
# Not built in CI (no Docker engine); tests/test_docker.py lints it with hadolint.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The CUDA build of torch, from PyPI (the default index).
RUN pip install --no-cache-dir torch==2.13.0

WORKDIR /opt/distill
COPY pyproject.toml README.md ./
COPY distill ./distill
COPY storage ./storage
COPY inspection ./inspection
COPY pipeline ./pipeline
COPY flows ./flows
# The project with its [ml] extra and the [ray] and [dask] task runners (`runner.kind`; their
# version pins live in pyproject.toml, which hadolint's DL3013 cannot read), and s3fs so that
# caches can live on S3 (`cache: s3://bucket/prefix`; it follows AWS_ENDPOINT_URL).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[ml,ray,dask]' 's3fs==2026.9.0'

# An unprivileged user; compose mounts training output on /runs.
RUN groupadd --gid 10001 distill \
    && useradd --create-home --uid 10001 --gid 10001 distill \
    && mkdir -p /runs \
    && chown distill:distill /runs
USER 10001:10001
WORKDIR /home/distill

ENV HF_HUB_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
ENTRYPOINT ["distill"]
CMD ["--help"]
