"""API keys, job ownership, backpressure, private storage and housekeeping, against the real Redis and S3
of the ``stack`` fixture (the API app here is built in-process with its own settings)."""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import replace

import pytest
import requests

from api import create_app
from backdrop.service.jobs import JobRecord, JobStatus, JobStore
from backdrop.service.storage import open_storage
from backdrop.settings import Settings
from tests.conftest import eventually_missing
from worker.sweeper import sweep

pytestmark = pytest.mark.integration
KEY_A, KEY_B = "a" * 8 + uuid.uuid4().hex, "b" * 8 + uuid.uuid4().hex


@pytest.fixture
def settings(stack) -> Settings:
    # A queue no worker consumes: jobs submitted here stay queued.
    return replace(Settings.from_env(stack.env), queue=f"idle-{uuid.uuid4().hex[:8]}")


def post(client, image: bytes, key: str | None = None, **fields):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/jobs", data={"image": (io.BytesIO(image), "p.jpg"), **fields}, headers=headers)


def test_api_keys_and_ownership(settings, astronaut_jpeg):
    client = create_app(replace(settings, api_keys=(KEY_A, KEY_B))).test_client()
    missing = post(client, astronaut_jpeg)
    assert missing.status_code == 401 and missing.json["error"]["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert post(client, astronaut_jpeg, key="c" * 40).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": f"Basic {KEY_A}"}).status_code == 401
    assert client.get("/v1/models").status_code == 401
    for public in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(public).status_code == 200

    created = post(client, astronaut_jpeg, key=KEY_A)
    assert created.status_code == 202
    job = created.json["id"]
    as_a = {"Authorization": f"Bearer {KEY_A}"}
    as_b = {"Authorization": f"Bearer {KEY_B}"}
    assert client.get(f"/v1/jobs/{job}", headers=as_a).status_code == 200
    for method, path in (("get", f"/v1/jobs/{job}"), ("get", f"/v1/jobs/{job}/result"), ("delete", f"/v1/jobs/{job}")):
        response = getattr(client, method)(path, headers=as_b)
        assert response.status_code == 404, (method, path)  # indistinguishable from an unknown job
    many = client.get(f"/v1/jobs?ids={job}", headers=as_b)
    assert many.status_code == 200 and many.json == {"jobs": [], "missing": [job]}
    mine = client.get(f"/v1/jobs?ids={job}", headers=as_a)
    assert [j["id"] for j in mine.json["jobs"]] == [job] and mine.headers["Retry-After"] == "1"
    assert client.delete(f"/v1/jobs/{job}", headers=as_a).status_code == 200


def test_idempotency_keys_are_per_api_key(settings, astronaut_jpeg, chelsea):
    from tests.conftest import encode_rgb

    client = create_app(replace(settings, api_keys=(KEY_A, KEY_B))).test_client()
    header = {"Idempotency-Key": f"same-{uuid.uuid4().hex}"}
    first = client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(astronaut_jpeg), "a.jpg")},
        headers={**header, "Authorization": f"Bearer {KEY_A}"},
    )
    other = client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(encode_rgb(chelsea)), "c.jpg")},
        headers={**header, "Authorization": f"Bearer {KEY_B}"},
    )
    assert first.status_code == other.status_code == 202
    assert first.json["id"] != other.json["id"]


def test_backpressure_answers_429(settings, astronaut_jpeg):
    client = create_app(replace(settings, max_queue_depth=2)).test_client()
    jobs = JobStore.connect(settings.redis_url, ttl_s=60)
    try:
        assert post(client, astronaut_jpeg).status_code == 202
        assert post(client, astronaut_jpeg).status_code == 202
        full = post(client, astronaut_jpeg)
        assert full.status_code == 429 and full.json["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) > 0
    finally:
        jobs.redis.delete(settings.queue)


@pytest.fixture(scope="module")
def large_jpeg(astronaut) -> bytes:
    """Over the inline limit: this upload goes to the object store, not Redis."""
    import numpy as np

    from tests.conftest import encode_rgb

    noisy = np.repeat(np.repeat(astronaut, 2, axis=0), 2, axis=1).astype(np.int16)
    noisy += np.random.default_rng(1).integers(-12, 12, noisy.shape, dtype=np.int16)
    return encode_rgb(np.clip(noisy, 0, 255).astype(np.uint8), quality=95)


@pytest.mark.parametrize("size", ["small", "large"])
def test_uploads_are_private_and_deleted_after_success(stack, astronaut_jpeg, large_jpeg, size):
    from backdrop.service.uploads import INLINE_SCHEME, Uploads

    settings = Settings.from_env(stack.env)
    image = astronaut_jpeg if size == "small" else large_jpeg
    assert (len(image) <= settings.inline_upload_max_bytes) == (size == "small")
    job = requests.post(f"{stack.api_url}/v1/jobs", files={"image": ("p.jpg", image)}, timeout=10).json()
    locator = JobStore.connect(settings.redis_url, ttl_s=60).get(job["id"]).input_key
    if size == "small":  # kept in Redis beside the job record, never in the bucket
        assert locator.startswith(INLINE_SCHEME)
    else:
        assert locator == f"inputs/{job['id']}"
        unsigned = f"{settings.s3_endpoint_url}/{settings.s3_bucket}/{locator}"
        assert requests.get(unsigned, timeout=10).status_code in (403, 404)
    deadline = time.monotonic() + 60
    while requests.get(f"{stack.api_url}/v1/jobs/{job['id']}", timeout=10).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    eventually_missing(Uploads.connect(settings, open_storage(settings)), locator)


@pytest.fixture
def sweep_settings(stack) -> Settings:
    """Its own Redis database, queue and bucket: a sweep "in the future" must not touch other tests' jobs."""
    shared = Settings.from_env(stack.env)
    return replace(
        shared,
        redis_url=shared.redis_url.rsplit("/", 1)[0] + "/3",
        queue=f"sweep-{uuid.uuid4().hex[:8]}",
        s3_bucket=f"sweep-{uuid.uuid4().hex[:12]}",
        s3_create_bucket=True,
    )


def queued_record(created_at: float | None = None) -> JobRecord:
    from backdrop.params import JobParams

    job_id = uuid.uuid4().hex
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        params=JobParams(),
        created_at=time.time() if created_at is None else created_at,
        input_key=f"inputs/{job_id}",
    )


def test_sweeper_fails_lost_jobs_and_deletes_expired_objects(sweep_settings):
    settings = sweep_settings
    jobs = JobStore.connect(settings.redis_url, ttl_s=600)
    storage = open_storage(settings)
    record = queued_record()
    job_id = record.id
    jobs.create(record)
    assert jobs.start(job_id, "gone:1", 3).action == "run"
    storage.put(f"results/{job_id}.jpg", b"old result", "image/jpeg")

    report = sweep(settings, jobs, storage, no_enqueue, now=time.time() + settings.task_time_limit_s + 60)
    assert report["lost_jobs"] == 1
    lost = jobs.get(job_id)
    assert lost.status is JobStatus.FAILED and lost.error["code"] == "worker_lost"
    assert job_id not in jobs.running_since_before(time.time() + 10_000)

    report = sweep(settings, jobs, storage, no_enqueue, now=time.time() + settings.job_ttl_s + 60)
    assert report == {"lost_jobs": 0, "requeued_jobs": 0, "deleted_objects": 1}
    with pytest.raises(Exception) as caught:
        storage.get(f"results/{job_id}.jpg")
    assert getattr(caught.value, "code", "") == "object_not_found"


def no_enqueue(job_id: str, queue: str, task: str) -> None:
    raise AssertionError(f"nothing should be queued again here ({job_id})")


@pytest.fixture
def sweep_services(sweep_settings):
    """The sweep's job store, storage (its bucket created) and a Celery app to publish with."""
    from backdrop.service.queue import make_celery

    storage = open_storage(sweep_settings)
    storage.ping()  # creates this test's bucket
    return JobStore.connect(sweep_settings.redis_url, ttl_s=600), storage, make_celery(sweep_settings)


def test_sweeper_queues_again_only_jobs_whose_message_is_gone(sweep_settings, sweep_services):
    import json

    from backdrop.service.jobs import KOMBU_UNACKED, MISSING_SET, QUEUED_SET
    from backdrop.service.queue import enqueue

    settings = sweep_settings
    jobs, storage, celery = sweep_services
    sent: list[tuple[str, str]] = []

    def resend(job_id: str, queue: str, task: str) -> None:
        sent.append((job_id, queue))
        enqueue(celery, job_id, queue, task=task)

    now = time.time() + 60
    # `fresh` is accepted just before the second sweep: its API may be about to queue it, so it is left alone.
    lost, waiting, delivered = (queued_record() for _ in range(3))
    fresh = queued_record(created_at=now + 10)
    for record in (lost, waiting, delivered, fresh):
        jobs.create(record)
    enqueue(celery, waiting.id, settings.queue)  # still waits in the queue: fine
    message = {"headers": {"id": delivered.id, "task": "backdrop.process_job"}, "body": "..."}
    jobs.redis.hset(KOMBU_UNACKED, "tag-1", json.dumps([message, "", settings.queue]))  # delivered, not acked
    try:
        first = sweep(settings, jobs, storage, resend, now=now)
        assert first["requeued_jobs"] == 0 and sent == []  # a first look only notes the missing message
        second = sweep(settings, jobs, storage, resend, now=now + 31)
        assert second["requeued_jobs"] == 1 and sent == [(lost.id, settings.queue)]
        assert jobs.get(lost.id).status is JobStatus.QUEUED  # same job, same record: only a new message
        assert jobs.queue_depth(settings.queue) == 2
        # Its new message is there now: later sweeps leave it alone, and a started job leaves the set.
        assert sweep(settings, jobs, storage, resend, now=now + 62)["requeued_jobs"] == 0
        assert jobs.start(lost.id, "w:1", 3).action == "run"
        assert lost.id not in jobs.queued_since_before(now + 1000)
    finally:
        jobs.redis.delete(KOMBU_UNACKED, settings.queue, QUEUED_SET, MISSING_SET)


def test_a_queued_job_whose_worker_took_its_message_and_vanished_is_queued_again(sweep_settings, sweep_services):
    """Its message sits delivered but unacknowledged (the worker was cut off between taking it and
    starting the job): once that is older than a lease, it no longer counts as the job's message."""
    import json

    from backdrop.service.jobs import KOMBU_UNACKED, KOMBU_UNACKED_INDEX, MISSING_SET, QUEUED_SET

    settings = sweep_settings
    jobs, storage, _ = sweep_services
    sent: list[str] = []
    now = time.time() + 60
    stale, fresh = queued_record(), queued_record()
    for record, tag, delivered in ((stale, "tag-stale", now - settings.lease_s - 5), (fresh, "tag-fresh", now - 1)):
        jobs.create(record)
        message = {"headers": {"id": record.id, "task": "backdrop.process_job"}, "body": "..."}
        jobs.redis.hset(KOMBU_UNACKED, tag, json.dumps([message, "", settings.queue]))
        jobs.redis.zadd(KOMBU_UNACKED_INDEX, {tag: delivered})
    try:
        sweep(settings, jobs, storage, lambda job_id, queue, task: sent.append(job_id), now=now)
        sweep(settings, jobs, storage, lambda job_id, queue, task: sent.append(job_id), now=now + 31)
        assert sent == [stale.id]
    finally:
        jobs.redis.delete(KOMBU_UNACKED, KOMBU_UNACKED_INDEX, QUEUED_SET, MISSING_SET)


def test_a_video_whose_chunks_wait_in_a_busy_queue_is_not_lost(sweep_settings, sweep_services):
    # Its chunks wait behind other work for longer than the visibility timeout: no progress, but nothing
    # lost. Once no message of it is left anywhere, the same silence is a lost video.
    from backdrop.params import JobParams, MediaKind
    from backdrop.service.jobs import KOMBU_UNACKED
    from backdrop.service.queue import CHUNK_TASK, enqueue_part

    settings = sweep_settings
    jobs, storage, celery = sweep_services
    record = replace(queued_record(), params=JobParams.parse({}, MediaKind.VIDEO))
    other = queued_record()  # an image job whose id shares no prefix with the video's
    jobs.create(record)
    assert jobs.start(record.id, "w:1", 3).action == "run"
    enqueue_part(celery, CHUNK_TASK, [record.id, 7], settings.queue)
    enqueue_part(celery, CHUNK_TASK, [other.id, 0], settings.queue)
    later = time.time() + settings.visibility_timeout_s + settings.task_time_limit_s + 120
    try:
        sweep(settings, jobs, storage, no_enqueue, now=later)  # other tests' jobs share this Redis database
        assert jobs.get(record.id).status is JobStatus.RUNNING
        jobs.redis.delete(settings.queue)  # the chunk's message is gone (taken by a worker that vanished)
        assert jobs.without_message([record.id, other.id], settings.queues) == [record.id, other.id]
        assert sweep(settings, jobs, storage, no_enqueue, now=later)["lost_jobs"] >= 1
        lost = jobs.get(record.id)
        assert lost.status is JobStatus.FAILED and lost.error["code"] == "worker_lost"
    finally:
        jobs.redis.delete(KOMBU_UNACKED, settings.queue)
