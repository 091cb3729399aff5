#!/bin/sh
# Container entry point: an empty folder for prometheus-client's multiprocess mode (gunicorn workers,
# Celery prefork children), then the command.
set -e
rm -rf "${PROMETHEUS_MULTIPROC_DIR:?}" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
exec "$@"
