# The streamscribe image used by docker-compose.yml (the Docker path; the README's
# Quick start needs no Docker).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libportaudio2 libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamscribe streamscribe
COPY schemas schemas
COPY producers producers
COPY processors processors
COPY consumers consumers
RUN pip install --no-cache-dir .
ENV STREAMSCRIBE_WORKER_DATA_DIR=/data/worker
ENTRYPOINT []
