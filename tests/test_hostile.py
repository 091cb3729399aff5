"""The hostile corpus against the real stack: through the API, and straight to the workers."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from backdrop.params import JobParams
from backdrop.service.jobs import JobRecord, JobStatus, JobStore
from backdrop.service.queue import enqueue, make_celery
from backdrop.service.storage import open_storage
from backdrop.settings import Settings
from tests.conftest import eventually_missing
from tests.hostile import IMAGE_ERROR_CODES, Case, corpus
from tests.test_service import wait

pytestmark = pytest.mark.integration
CORPUS = corpus()


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_api_answers_every_hostile_upload(stack, case: Case):
    response = requests.post(
        f"{stack.api_url}/v1/jobs",
        files={"image": (case.filename, case.data, "image/jpeg")},
        data=case.fields,
        headers=case.headers,
        timeout=30,
    )
    assert response.status_code < 500, response.text
    if isinstance(case.expect, int):
        assert response.status_code == case.expect, response.text
        assert response.json()["error"]["code"]
        return
    assert response.status_code == 202, response.text
    job = wait(stack, response.json()["id"])
    if case.expect == "ok":
        assert job["status"] == "succeeded", job["error"]
        if case.name.startswith("exif orientation"):
            # Stored upright with the tag: orientations 5-8 turn it a quarter.
            size = (job["result"]["width"], job["result"]["height"])
            assert size == ((512, 400) if int(case.name.split()[-1]) >= 5 else (400, 512))
    else:
        assert job["status"] == "succeeded" or job["error"]["code"] in IMAGE_ERROR_CODES, job


def test_oversize_multipart_and_missing_fields(stack):
    huge = b"\xff\xd8\xff" + b"\0" * (10 * 1024 * 1024)
    response = requests.post(f"{stack.api_url}/v1/jobs", files={"image": ("x.jpg", huge)}, timeout=30)
    assert response.status_code == 413
    assert requests.post(f"{stack.api_url}/v1/jobs", timeout=10).status_code == 400
    assert requests.post(f"{stack.api_url}/v1/jobs", data=b"junk", timeout=10).status_code == 400
    response = requests.post(f"{stack.api_url}/v1/jobs", files={"photo": ("x.jpg", b"1")}, timeout=10)
    assert response.status_code == 400


def test_workers_refuse_hostile_inputs_that_bypass_the_api(stack):
    """Defence in depth: the worker checks again, so a bad object in the bucket fails its job cleanly."""
    settings = Settings.from_env(stack.env)
    storage, jobs, celery = (
        open_storage(settings),
        JobStore.connect(settings.redis_url, ttl_s=600),
        make_celery(settings),
    )
    refused = [c for c in CORPUS if c.expect in (413, 415, 400) and not c.fields and not c.headers]
    ids = []
    for case in refused:
        job_id = uuid.uuid4().hex
        storage.put(f"inputs/{job_id}", case.data, "application/octet-stream")
        jobs.create(
            JobRecord(
                id=job_id,
                status=JobStatus.QUEUED,
                params=JobParams(),
                created_at=time.time(),
                input_key=f"inputs/{job_id}",
            )
        )
        enqueue(celery, job_id, settings.queue)
        ids.append((case.name, job_id))
    for name, job_id in ids:
        job = wait(stack, job_id)
        assert job["status"] == "failed" and job["error"]["code"] in IMAGE_ERROR_CODES, (name, job)
        eventually_missing(storage, f"inputs/{job_id}")  # a failed job's upload is not kept either


def test_service_healthy_after_the_corpus(stack, astronaut_jpeg):
    assert requests.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200
    job = requests.post(f"{stack.api_url}/v1/jobs", files={"image": ("a.jpg", astronaut_jpeg)}, timeout=10).json()
    assert wait(stack, job["id"])["status"] == "succeeded"
    assert all(process.alive() for process in stack.processes)
