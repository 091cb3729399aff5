"""The API when Redis or S3 is not there: 503 with a JSON error, quickly, never a 500 or a hang."""

from __future__ import annotations

import io
import subprocess
import sys
import time

from api import create_app
from backdrop.service.localstack import free_port
from backdrop.settings import Settings
from tests.conftest import encode_rgb


def dead_settings() -> Settings:
    return Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_access_key="x",
        s3_secret_key="y",
        storage_retries=0,
    )


def test_submit_and_readiness_answer_503_fast(astronaut):
    client = create_app(dead_settings()).test_client()
    started = time.monotonic()
    response = client.post("/v1/jobs", data={"image": (io.BytesIO(encode_rgb(astronaut)), "a.jpg")})
    assert response.status_code == 503, response.json
    assert response.json["error"]["code"] in ("storage_unavailable", "broker_unavailable")
    assert response.headers["Retry-After"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["broker"].startswith("unavailable")
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert time.monotonic() - started < 20


def test_bad_requests_still_answered_without_backends():
    client = create_app(dead_settings()).test_client()
    response = client.post("/v1/jobs", data={"image": (io.BytesIO(b"<html/>"), "a.jpg")})
    assert response.status_code == 415


def test_api_process_never_imports_the_ml_stack():
    code = (
        "import sys\n"
        "from api import create_app\n"
        "from backdrop.settings import Settings\n"
        "app = create_app(Settings())\n"
        "client = app.test_client()\n"
        "client.get('/v1/models'); client.get('/openapi.json')\n"
        "ml = ('cv2', 'ai_edge_litert', 'tensorflow', 'numpy')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ml)\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
