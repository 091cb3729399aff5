"""Metrics (API and workers, multi-process) and structured logs, from the real stack."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.test_service import wait

pytestmark = pytest.mark.integration


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_metrics_and_logs(stack, astronaut_jpeg):
    before = requests.get(f"{stack.api_url}/metrics", timeout=10).text
    job_id = requests.post(
        f"{stack.api_url}/v1/jobs", files={"image": ("a.jpg", astronaut_jpeg)}, data={"effect": "gray"}, timeout=10
    ).json()["id"]
    assert wait(stack, job_id)["status"] == "succeeded"
    requests.post(f"{stack.api_url}/v1/jobs", files={"image": ("x.jpg", b"<html/>")}, timeout=10)

    api = requests.get(f"{stack.api_url}/metrics", timeout=10)
    assert api.headers["Content-Type"].startswith("text/plain")
    text = api.text
    assert (
        metric(text, "backdrop_jobs_submitted_total", effect="gray")
        >= metric(before, "backdrop_jobs_submitted_total", effect="gray") + 1
    )
    assert metric(text, "backdrop_requests_rejected_total", code="unsupported_format") >= 1
    assert 'backdrop_queue_depth{queue="backdrop"}' in text

    worker = requests.get(f"http://127.0.0.1:{stack.worker_metrics_port}/", timeout=10).text
    assert metric(worker, "backdrop_jobs_processed_total", effect="gray", outcome="succeeded") >= 1
    assert metric(worker, "backdrop_stage_seconds_count", stage="segment") >= 1
    assert metric(worker, "backdrop_stage_seconds_count", stage="upload") >= 1
    assert metric(worker, "backdrop_model_load_seconds_count") >= 2  # both prefork processes, summed
    assert metric(worker, "backdrop_batch_size_count") >= 1

    time.sleep(0.5)  # let the log lines land
    for log_name, minimum in (("worker.log", 3), ("api.log", 2)):
        lines = (stack.root / "log" / log_name).read_text().splitlines()
        about_job = [line for line in lines if job_id in line]
        assert len(about_job) >= minimum, (log_name, about_job)
        for line in about_job:
            entry = json.loads(line)  # one JSON object per line
            assert entry["job_id"] == job_id and entry["level"] and entry["msg"], entry
