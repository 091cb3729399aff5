"""The HTTP contract end to end against the real local stack (see the ``stack`` fixture)."""

from __future__ import annotations

import io
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import requests
from celery import Celery
from PIL import Image

from backdrop.models.registry import catalog
from backdrop.service.jobs import JobStore
from backdrop.settings import Settings
from tests.conftest import encode_rgb

pytestmark = pytest.mark.integration


def submit(stack, image: bytes, background: bytes | None = None, headers=None, **fields) -> requests.Response:
    files = {"image": ("photo.jpg", image, "image/jpeg")}
    if background is not None:
        files["background"] = ("bg.jpg", background, "image/jpeg")
    return requests.post(f"{stack.api_url}/v1/jobs", files=files, data=fields, headers=headers or {}, timeout=30)


def wait(stack, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10)
        assert response.status_code == 200
        job = response.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert "Retry-After" not in response.headers
            return job
        assert response.headers["Retry-After"] == "1"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s")


def run_job(stack, image: bytes, background: bytes | None = None, **fields) -> dict:
    response = submit(stack, image, background, **fields)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and response.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert body["links"] == {"self": f"/v1/jobs/{body['id']}", "result": f"/v1/jobs/{body['id']}/result"}
    return wait(stack, body["id"])


def download(job: dict) -> Image.Image:
    response = requests.get(job["result"]["url"], timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == job["result"]["content_type"]
    assert len(response.content) == job["result"]["bytes"]
    return Image.open(io.BytesIO(response.content))


def job_store(stack) -> JobStore:
    return JobStore.connect(Settings.from_env(stack.env).redis_url, ttl_s=60)


@contextmanager
def consumption_paused(stack) -> Iterator[None]:
    """Workers stop taking jobs from the queue (Celery remote control), so submitted jobs stay queued."""
    control = Celery(broker=Settings.from_env(stack.env).redis_url, set_as_current=False)
    control.conf.broker_pool_limit = 0
    replies = control.control.cancel_consumer("backdrop", reply=True, timeout=5)
    assert replies, "no worker answered"
    try:
        yield
    finally:
        control.control.add_consumer("backdrop", reply=True, timeout=5)


@pytest.mark.parametrize(
    ("fields", "fmt", "mode"),
    [
        ({"effect": "blur", "strength": "extreme", "bokeh": "lens"}, "JPEG", "RGB"),
        ({"effect": "gray", "format": "png"}, "PNG", "RGB"),
        ({"effect": "color", "color": "#1E90FF", "format": "webp", "quality": "80"}, "WEBP", "RGB"),
        ({"effect": "cutout"}, "PNG", "RGBA"),
        ({"effect": "mask"}, "PNG", "L"),
    ],
)
def test_effects_end_to_end(stack, astronaut_jpeg, fields, fmt, mode):
    job = run_job(stack, astronaut_jpeg, **fields)
    assert job["status"] == "succeeded", job["error"]
    assert job["detected"]["person"] > 0.3 and job["found"] is True
    assert job["result"]["width"] == 512 and job["result"]["height"] == 512
    assert set(job["timings_ms"]) >= {"download", "decode", "segment", "refine", "effect", "encode", "upload"}
    image = download(job)
    assert image.format == fmt and image.mode == mode and image.size == (512, 512)


def test_replace_with_background(stack, astronaut_jpeg, coffee):
    job = run_job(stack, astronaut_jpeg, encode_rgb(coffee), effect="replace")
    assert job["status"] == "succeeded"
    assert download(job).size == (512, 512)


def test_cat_target_and_no_person(stack, chelsea, coffee):
    cat = run_job(stack, encode_rgb(chelsea), targets="cat")
    assert cat["status"] == "succeeded" and cat["model"] == "deeplab/257" and cat["detected"]["cat"] > 0.4
    empty = run_job(stack, encode_rgb(coffee))
    assert empty["status"] == "succeeded" and empty["found"] is False and empty["detected"] == {"person": 0.0}


def test_result_redirects_to_presigned_url(stack, astronaut_jpeg):
    job = run_job(stack, astronaut_jpeg)
    response = requests.get(f"{stack.api_url}/v1/jobs/{job['id']}/result", allow_redirects=False, timeout=10)
    assert response.status_code == 303
    assert "X-Amz-Signature" in response.headers["Location"]
    assert requests.get(response.headers["Location"], timeout=10).content[:2] == b"\xff\xd8"
    # The object itself is private: without the signature the store refuses.
    unsigned = response.headers["Location"].split("?")[0]
    assert requests.get(unsigned, timeout=10).status_code == 403


def test_cancel_queued_job_never_processed(stack, astronaut_jpeg):
    with consumption_paused(stack):
        job_id = submit(stack, astronaut_jpeg).json()["id"]
        pending = requests.get(f"{stack.api_url}/v1/jobs/{job_id}/result", allow_redirects=False, timeout=10)
        assert pending.status_code == 409 and pending.json()["error"]["code"] == "job_not_finished"
        cancelled = requests.delete(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = requests.delete(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10)
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancellable"
    # Workers consume again, receive the message, and must skip it.
    follow_up = run_job(stack, astronaut_jpeg)
    assert follow_up["status"] == "succeeded"
    time.sleep(0.5)
    job = wait(stack, job_id)
    assert job["status"] == "cancelled" and job["result"] is None and job["started_at"] is None
    assert (
        requests.get(f"{stack.api_url}/v1/jobs/{job_id}/result", timeout=10, allow_redirects=False).status_code == 404
    )


def test_cancel_finished_job_conflicts(stack, astronaut_jpeg):
    job = run_job(stack, astronaut_jpeg)
    response = requests.delete(f"{stack.api_url}/v1/jobs/{job['id']}", timeout=10)
    assert response.status_code == 409


def test_unknown_job_404(stack):
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/nope", "/v1/jobs/nope/result"):
        response = requests.get(stack.api_url + path, timeout=10)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert requests.delete(stack.api_url + "/v1/jobs/nope", timeout=10).status_code == 404


def test_many_jobs_in_one_status_read(stack, astronaut_jpeg, chelsea):
    first, second = run_job(stack, astronaut_jpeg), run_job(stack, encode_rgb(chelsea), targets="cat")
    ids = [second["id"], "nope", first["id"], "0123456789abcdef0123456789abcdef"]
    response = requests.get(f"{stack.api_url}/v1/jobs", params={"ids": ",".join(ids)}, timeout=10)
    assert response.status_code == 200 and "Retry-After" not in response.headers  # all finished
    answer = response.json()
    assert [job["id"] for job in answer["jobs"]] == [second["id"], first["id"]]  # in the order asked
    assert answer["jobs"][0]["detected"] == second["detected"] and answer["jobs"][1]["status"] == "succeeded"
    assert answer["missing"] == ["nope", "0123456789abcdef0123456789abcdef"]
    for query in ("", "?ids=", "?ids=" + ",".join(["x"] * 101)):
        refused = requests.get(f"{stack.api_url}/v1/jobs{query}", timeout=10)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_parameter", query


@pytest.mark.parametrize(
    ("image", "fields", "status", "code"),
    [
        (b"<html><body>not a photo</body></html>", {}, 415, "unsupported_format"),
        (b"\xff\xd8\xff\xe0truncated", {}, 415, "corrupt_image"),
        (b"", {}, 400, "empty_image"),
        (None, {"targets": "unicorn"}, 422, "unknown_target"),
        (None, {"targets": "cat", "model": "selfie"}, 422, "unsupported_target"),
        (None, {"model": "sam"}, 422, "unknown_model"),
        (None, {"effect": "color", "color": "blueish"}, 422, "invalid_color"),
        (None, {"strength": "500"}, 400, "invalid_parameter"),
        (None, {"effect": "sparkle"}, 400, "invalid_parameter"),
        (None, {"effect": "cutout", "format": "jpeg"}, 422, "unsupported_output"),
        (None, {"effect": "replace"}, 400, "invalid_parameter"),
        (None, {"unknown_field": "1"}, 400, "invalid_parameter"),
    ],
)
def test_bad_requests_refused_before_queueing(stack, astronaut_jpeg, image, fields, status, code):
    response = submit(stack, astronaut_jpeg if image is None else image, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_size_limits(stack):
    noise = np.random.default_rng(1).integers(0, 255, (1400, 1400, 3), np.uint8)
    big = encode_rgb(noise, "PNG")  # ~5.9 MB, over the stack's 4 MiB image limit
    response = submit(stack, big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
    huge = b"\xff\xd8" + b"\0" * (9 * 1024 * 1024)  # over the image limit, under the request's (a video's)
    response = submit(stack, huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "image_too_large"
    # A body declared over the whole-request limit (a video and a background) is refused before it is read.
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=10)
    connection.putrequest("POST", "/v1/jobs")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(3 * 1024**3))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_missing_image_and_wrong_content_type(stack):
    response = requests.post(f"{stack.api_url}/v1/jobs", data={"effect": "blur"}, timeout=10)
    assert response.status_code == 400
    response = requests.post(f"{stack.api_url}/v1/jobs", files={"other": ("x", b"1")}, timeout=10)
    assert response.status_code == 400 and "image" in response.json()["error"]["message"]


def test_idempotency_key(stack, astronaut_jpeg, chelsea):
    key = {"Idempotency-Key": f"test-{time.time_ns()}"}
    first = submit(stack, astronaut_jpeg, headers=key, effect="gray")
    second = submit(stack, astronaut_jpeg, headers=key, effect="gray")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    different = submit(stack, encode_rgb(chelsea), headers=key, effect="gray")
    assert different.status_code == 422 and different.json()["error"]["code"] == "idempotency_key_reused"
    bad = submit(stack, astronaut_jpeg, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 400


def test_workers_share_the_queue_and_load_models_once(stack, astronaut_jpeg, chelsea):
    photos = [astronaut_jpeg, encode_rgb(chelsea)] * 4
    ids = [submit(stack, photo, targets="person").json()["id"] for photo in photos]
    jobs = [wait(stack, job_id) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in jobs)
    store = job_store(stack)
    records = [store.get(job_id) for job_id in ids]
    by_worker: dict[str, list[int]] = {}
    for record in records:
        by_worker.setdefault(record.worker, []).append(record.engine_loads)
    assert len(by_worker) == 2, by_worker  # both prefork processes took jobs
    for loads in by_worker.values():
        # Each process created its interpreters (every model file: selfie's two, DeepLab, the three people
        # models) once, before its first job, never again.
        assert set(loads) == {len(catalog())}
    assert max(len(v) for v in by_worker.values()) >= 2


def test_models_health_and_openapi(stack):
    models = requests.get(f"{stack.api_url}/v1/models", timeout=10).json()
    names = {m["name"]: m for m in models["models"]}
    assert "cat" in names["deeplab"]["classes"] and names["selfie"]["classes"] == ["person"]
    assert requests.get(f"{stack.api_url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{stack.api_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"] == {"broker": "ok", "storage": "ok"}
    spec = requests.get(f"{stack.api_url}/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.") and "/v1/jobs/{job_id}/result" in spec["paths"]


def test_errors_are_json_everywhere(stack):
    response = requests.get(f"{stack.api_url}/no/such/route", timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = requests.put(f"{stack.api_url}/v1/jobs", timeout=10)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_threads_pool_worker_with_micro_batching(stack, astronaut_jpeg, chelsea):
    """One worker process running four jobs at once on threads, its model runs batched."""
    from backdrop.service.localstack import start_workers

    env = {**stack.env, "BACKDROP_BATCH_SIZE": "4", "BACKDROP_BATCH_WAIT_MS": "30", "BACKDROP_WORKER_METRICS_PORT": "0"}
    log_path = stack.root / "log" / "threads.log"
    node = start_workers(env, concurrency=4, queues="backdrop", log_path=log_path, name="threads", pool="threads")
    try:
        with consumption_paused(stack):  # only the threads node takes these jobs
            ids = [submit(stack, photo).json()["id"] for photo in [astronaut_jpeg, encode_rgb(chelsea)] * 4]
            jobs = [wait(stack, job_id, timeout_s=120) for job_id in ids]
        assert all(job["status"] == "succeeded" for job in jobs)
        assert len({job_store(stack).get(job_id).worker for job_id in ids}) == 1  # one process did them all
        assert node.log_text().count("model files loaded") == 1  # loaded once, shared by the threads
    finally:
        node.stop()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_worker_processes_keep_freed_memory(stack):
    """Every pool process sets the allocator up before loading its models (BACKDROP_RETAIN_FREED_MEMORY_MB)."""
    log = stack.process("worker-backdrop").log_text()
    loaded = log.count("model files loaded")
    assert loaded >= stack.workers and log.count("freed memory kept for reuse: yes") == loaded


def test_free_ports_are_never_handed_out_twice():
    """Two servers of one stack on one port would each take the other's answers for their own."""
    from backdrop.service.localstack import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
