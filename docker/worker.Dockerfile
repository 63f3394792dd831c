# A distill worker: runs `distill cache` / Prefect flows. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t distill-worker .
# (Not built in CI: no Docker engine runs on our machines. Compose and a CUDA variant come
# with the scheduling issue.)
FROM python:3.11-slim
WORKDIR /opt/distill
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY pipeline ./pipeline
COPY flows ./flows
RUN pip install --no-cache-dir '.[ml]'
ENV HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
ENTRYPOINT ["distill"]
