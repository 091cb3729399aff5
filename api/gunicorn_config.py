"""Gunicorn's settings for the API (``gunicorn -c python:api.gunicorn_config api.wsgi:app``): threads per
process from ``BACKDROP_API_THREADS``, enough for the requests that wait (``Prefer: wait``, the remove.bg
and rembg routes: at most ``BACKDROP_MAX_WAITING_REQUESTS`` of them) and the others besides."""

from backdrop.settings import Settings

worker_class = "gthread"
threads = Settings.from_env().api_threads
timeout = 60
graceful_timeout = 20
