"""The Python client and `backdrop submit` against the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace

import pytest
from PIL import Image
from werkzeug.serving import make_server

from api import create_app
from backdrop.client import (
    Client,
    JobCancelled,
    NotFound,
    QueueFull,
    Unauthorized,
    Unprocessable,
    UnsupportedImage,
)
from backdrop.service.jobs import JobStore
from backdrop.settings import Settings
from tests.conftest import encode_rgb
from tests.test_service import consumption_paused

pytestmark = pytest.mark.integration


def test_submit_wait_download(stack, tmp_path, astronaut_jpeg):
    photo = tmp_path / "me.jpg"
    photo.write_bytes(astronaut_jpeg)
    client = Client(stack.api_url)
    job = client.submit(photo, effect="gray", targets=["person"], keep_islands=False, quality=80)
    assert job.status == "queued"
    saved = job.wait(timeout=60).download(tmp_path / "out.jpg")
    assert job.status == "succeeded" and job.detected["person"] > 0.3
    assert Image.open(saved).size == (512, 512)
    assert client.job(job.id).status == "succeeded"
    assert [j.status for j in client.jobs([job.id, job.id])] == ["succeeded", "succeeded"]
    with pytest.raises(NotFound, match="nope"):
        client.jobs([job.id, "nope"])
    assert "deeplab" in {m["name"] for m in client.models()["models"]}


def test_typed_errors(stack, astronaut_jpeg):
    client = Client(stack.api_url)
    with pytest.raises(UnsupportedImage) as caught:
        client.submit(b"<html/>")
    assert caught.value.code == "unsupported_format" and caught.value.status == 415
    with pytest.raises(Unprocessable) as caught:
        client.submit(astronaut_jpeg, targets="dragon")
    assert caught.value.code == "unknown_target"
    with consumption_paused(stack):
        job = client.submit(astronaut_jpeg)
        job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(timeout=10)


@pytest.fixture
def local_api(stack):
    """An API on its own port with a queue limit of one and a queue no worker reads."""
    settings = replace(Settings.from_env(stack.env), queue=f"idle-{uuid.uuid4().hex[:8]}", max_queue_depth=1)
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield settings, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    JobStore.connect(settings.redis_url, ttl_s=60).redis.delete(settings.queue)


def test_retries_429_honouring_retry_after(local_api, astronaut_jpeg):
    settings, url = local_api
    client = Client(url, retries=2)
    client.submit(astronaut_jpeg)  # fills the queue
    drained = threading.Timer(1.0, JobStore.connect(settings.redis_url, ttl_s=60).redis.delete, [settings.queue])
    drained.start()
    started = time.monotonic()
    client.submit(astronaut_jpeg)  # 429 first, accepted after the Retry-After pause
    assert time.monotonic() - started >= 1
    with pytest.raises(QueueFull):
        Client(url, retries=0).submit(astronaut_jpeg)


def test_unauthorized(stack, astronaut_jpeg):
    settings = replace(Settings.from_env(stack.env), api_keys=("k" * 20,))
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(Unauthorized):
            Client(url, api_key="wrong" * 4).models()
        assert Client(url, api_key="k" * 20).models()["models"]
    finally:
        server.shutdown()


def backdrop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backdrop.cli", *args], capture_output=True, text=True, timeout=300,
        env=dict(os.environ), check=False,
    )  # fmt: skip


def test_cli_submit_folder(stack, tmp_path, astronaut, chelsea):
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(encode_rgb(astronaut))
    (photos / "c.png").write_bytes(encode_rgb(chelsea, "PNG"))
    (photos / "bad.jpg").write_bytes(b"not a photo")
    result = backdrop(
        "submit", str(photos), "--url", stack.api_url, "-o", str(tmp_path / "out"), "--effect", "mask", "--json"
    )
    assert result.returncode == 1, result.stderr  # bad.jpg was refused, the others done
    assert "bad.jpg" in result.stderr and "unsupported_format" in result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert {os.path.basename(r["output"]) for r in reports} == {"a.png", "c.png"}
    assert Image.open(tmp_path / "out" / "a.png").mode == "L"


def test_cli_submit_unreachable(tmp_path, astronaut):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(encode_rgb(astronaut))
    from backdrop.service.localstack import free_port

    result = backdrop("submit", str(photo), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 5 and "cannot reach" in result.stderr
