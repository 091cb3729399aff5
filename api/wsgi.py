"""WSGI entry point: ``gunicorn api.wsgi:app`` (JSON logs, settings from the environment)."""

from api import create_app
from backdrop.service.observability import configure_logging
from backdrop.settings import Settings

settings = Settings.from_env()
configure_logging("api", settings.log_level)
app = create_app(settings)
