"""Periodic housekeeping (Celery beat): jobs whose worker vanished, and expired objects.

- A job still "running" longer than the hard time limit (plus a margin) cannot be running any more: its
  worker process and its acknowledgement were lost (e.g. a whole machine died). It fails with
  ``worker_lost``, so every accepted job ends in a terminal state.
- Inputs and results older than the job TTL are deleted from the bucket (job records expire in Redis by
  their own TTL). A bucket lifecycle rule can do the same on stores that support one.
"""

from __future__ import annotations

import logging
import time

from backdrop.service.jobs import JobStore
from backdrop.service.storage import Storage
from backdrop.settings import Settings

log = logging.getLogger("backdrop.worker")
STALE_MARGIN_S = 30


def sweep(settings: Settings, jobs: JobStore, storage: Storage, *, now: float | None = None) -> dict[str, int]:
    now = time.time() if now is None else now
    lost = 0
    for job_id in jobs.running_since_before(now - settings.task_time_limit_s - STALE_MARGIN_S):
        record = jobs.get(job_id)
        if record is None:
            jobs.forget_running(job_id)
            continue
        limit = settings.task_time_limit_s
        if jobs.fail(record, "worker_lost", f"no worker finished the job within the {limit} s time limit"):
            lost += 1
        else:
            jobs.forget_running(job_id)
    cutoff = now - settings.job_ttl_s
    deleted = storage.delete_older_than("inputs/", cutoff) + storage.delete_older_than("results/", cutoff)
    if lost or deleted:
        log.info("sweep: %d lost jobs failed, %d expired objects deleted", lost, deleted)
    return {"lost_jobs": lost, "deleted_objects": deleted}
