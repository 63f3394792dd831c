# A distill worker, CPU only: `distill cache|train|serve|inspect` and the Prefect server of
# docker/compose.yaml. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t distill-worker .
# The GPU variant is docker/worker-cuda.Dockerfile. Neither is built in CI (no Docker engine runs
# on our machines); tests/test_docker.py lints this file with hadolint and checks its paths.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from PyTorch's CPU index: PyPI's Linux torch 2.13.0 is the CUDA 13 build, which
# drags in several GB of nvidia-* wheels a CPU host never uses. The `==2.13.0` pin of
# pyproject's [ml] extra is then already met by 2.13.0+cpu, so pip keeps it.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

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

# Teachers and students are local folders: never wait on the hub for a missing one.
ENV HF_HUB_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
ENTRYPOINT ["distill"]
CMD ["--help"]
