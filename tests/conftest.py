"""Shared fixtures. Photos are scikit-image's bundled samples (astronaut: a person, chelsea: a cat,
coffee: neither); the models are the real ones, resolved through the registry as in production."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as samples

from backdrop.pipeline import Pipeline
from backdrop.settings import Settings


def encode_rgb(rgb: np.ndarray, fmt: str = "JPEG", **save_args: object) -> bytes:
    """Encode an RGB/RGBA/L array with Pillow (independent of the code under test)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt, **save_args)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB" if image.mode not in ("RGBA", "L") else image.mode))


def eventually_missing(storage, key: str, timeout_s: float = 10) -> None:
    """Wait until ``key`` is gone from storage (workers delete uploads just after recording the outcome)."""
    import time

    from backdrop.service.storage import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            storage.get(key)
        except ObjectNotFound:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} still in storage after {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def pipeline(settings: Settings) -> Pipeline:
    return Pipeline(settings)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return samples.astronaut()


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    return samples.chelsea()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    return samples.coffee()


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut: np.ndarray) -> bytes:
    return encode_rgb(astronaut, quality=95)


# The webhook secret the test stack signs with (tests verify with the standardwebhooks package).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"backdrop-test-webhook-key").decode()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """The real thing on free loopback ports: valkey-server, SeaweedFS S3, a Celery worker with two
    prefork processes, and the API under gunicorn. Webhooks may call loopback (the tests' receivers), and
    fault markers work (a slow job on purpose)."""
    import os

    from backdrop.service.localstack import LOOPBACK_NETWORKS, LocalStack, free_port

    env = dict(os.environ)
    # One-second video chunks: a few seconds of clip spread over both worker processes. Photos over 256 KiB
    # go to S3 here (the default keeps photos up to 8 MiB in Redis): both paths are tested.
    env.update(
        {
            "BACKDROP_THREADS": "1",
            "BACKDROP_MAX_IMAGE_BYTES": str(4 * 1024 * 1024),
            "BACKDROP_INLINE_UPLOAD_MAX_BYTES": str(256 * 1024),
            "BACKDROP_VIDEO_CHUNK_SECONDS": "1",
            "BACKDROP_WEBHOOK_SECRETS": WEBHOOK_SECRET,
            "BACKDROP_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
            "BACKDROP_FAULT_INJECTION": "true",
        }
    )
    local = LocalStack(root=tmp_path_factory.mktemp("stack"), api_port=free_port(), workers=2)
    local.start(env)
    yield local
    local.stop()
