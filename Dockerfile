# The one streamscribe image of docker-compose.yml (built once, by its `topics` service;
# the README's Quick start needs no Docker). Every process in it serves /metrics on
# 0.0.0.0 when given --metrics-port (docs/metrics.md).
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libportaudio2 libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamscribe streamscribe
COPY schemas schemas
COPY producers producers
COPY processors processors
COPY consumers consumers
RUN pip install --quiet .
ENV STREAMSCRIBE_WORKER_DATA_DIR=/data/worker \
    STREAMSCRIBE_METRICS_HOST=0.0.0.0
EXPOSE 9108 9109 9110 9111
ENTRYPOINT []
