# The API image: Flask + gunicorn + the job/queue/storage clients. No OpenCV, no LiteRT, no models.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.lock deploy/requirements-api.txt ./
RUN pip install -c requirements.lock -r requirements-api.txt

COPY pyproject.toml README.md ./
COPY backdrop ./backdrop
COPY api ./api
COPY worker ./worker
# --no-deps: the package's own dependency list includes the ML stack, which the API never imports.
RUN pip install --no-deps . && useradd --system --uid 10001 --no-create-home backdrop

COPY deploy/entrypoint.sh /usr/local/bin/backdrop-entrypoint
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/backdrop-metrics
USER backdrop
ENTRYPOINT ["backdrop-entrypoint"]
EXPOSE 8080
CMD ["gunicorn", "api.wsgi:app", "--bind", "0.0.0.0:8080", "--workers", "2", "--worker-class", "gthread", \
     "--threads", "8", "--timeout", "60", "--graceful-timeout", "20", "--access-logfile", "-"]
