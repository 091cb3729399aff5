"""The HTTP API: validates requests, stores uploads, writes job records and queues jobs.

It never imports the ML stack (no OpenCV, no LiteRT): it starts fast and stays small.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from celery import Celery
from flask import Flask

from backdrop.models.registry import register_frozen_deeplab
from backdrop.service.events import JobEndWaiter
from backdrop.service.jobs import JobStore
from backdrop.service.queue import make_celery
from backdrop.service.storage import Storage, open_storage
from backdrop.service.uploads import Uploads
from backdrop.settings import Settings

# Multipart overhead allowed on top of the two images (photo + background).
_FORM_OVERHEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class Services:
    """What the API talks to; tests may pass their own."""

    settings: Settings
    jobs: JobStore
    storage: Storage
    uploads: Uploads
    celery: Celery
    waiter: JobEndWaiter = field(default=None)  # type: ignore[assignment]
    waiting_slots: threading.BoundedSemaphore = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        # One subscription and one count of waiting requests per process (see api.submission.wait_for).
        if self.waiter is None:
            object.__setattr__(self, "waiter", JobEndWaiter(self.settings))
        if self.waiting_slots is None:
            object.__setattr__(self, "waiting_slots", threading.BoundedSemaphore(self.settings.max_waiting_requests))

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        storage = open_storage(settings)
        return cls(
            settings=settings,
            jobs=JobStore.from_settings(settings),
            storage=storage,
            uploads=Uploads.connect(settings, storage),
            celery=make_celery(settings),
        )


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    from api import rembg, removebg
    from api.errors import register_error_handlers
    from api.routes import blueprint

    settings = settings or (services.settings if services else Settings.from_env())
    if settings.frozen_model:  # so requests can name it; the API never loads it
        register_frozen_deeplab(settings.frozen_model, settings.frozen_model_sha256)
    app = Flask(__name__)
    # A photo and a background, or a video and a background. Werkzeug spools uploads over 500 KiB to a
    # temporary file, so a large video never sits in the API's memory.
    largest = max(2 * settings.max_image_bytes, settings.max_video_bytes + settings.max_image_bytes)
    app.config["MAX_CONTENT_LENGTH"] = largest + _FORM_OVERHEAD_BYTES
    # Werkzeug applies this to its parse buffer too, which can hold two 64 KiB reads: keep it well above.
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    app.json.sort_keys = False
    app.extensions["backdrop"] = services or Services.from_settings(settings)
    app.register_blueprint(blueprint)
    # Compatible protocols: thin adapters onto the same jobs (docs/api.md, "Switching from ...").
    app.register_blueprint(removebg.blueprint)
    app.register_blueprint(rembg.blueprint)
    register_error_handlers(app)
    return app
