"""Periodic housekeeping (Celery beat): jobs whose worker vanished, jobs whose message was lost, and
expired objects.

- A job still "running" longer than the hard time limit (plus a margin) cannot be running any more: its
  worker process and its acknowledgement were lost (e.g. a whole machine died). It fails with
  ``worker_lost``, so every accepted job ends in a terminal state. A video runs as many messages (its
  chunks, then the join): it is lost only when none of its parts made progress for the visibility
  timeout and no message of it waits in a queue.
- A job still "queued" whose message no queue holds (a hard Redis crash lost the last second of
  writes, a failover lost it, the API died between writing the record and queueing it, or a worker took
  it and was cut off before starting it) is queued again. It must be
  found without a message at two sweeps at least ``STALE_MARGIN_S`` apart: a worker takes a message
  off the list a moment before it records it as delivered, and a single look could fall in between.
- Inputs and results older than the job TTL are deleted from the bucket (job records and uploads kept
  in Redis expire by their own TTL). A bucket lifecycle rule can do the same on stores that support one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from backdrop.service.jobs import JobStatus, JobStore
from backdrop.service.observability import JOB_FAILURES, JOBS_PROCESSED, JOBS_REQUEUED
from backdrop.service.queue import PROCESS_TASK, VIDEO_TASK, message_queues
from backdrop.service.storage import Storage
from backdrop.settings import Settings

log = logging.getLogger("backdrop.worker")
STALE_MARGIN_S = 30


def fail_lost_jobs(settings: Settings, jobs: JobStore, now: float) -> int:
    lost = 0
    for job_id in jobs.running_since_before(now - settings.task_time_limit_s - STALE_MARGIN_S):
        record = jobs.get(job_id)
        if record is None:
            jobs.forget_running(job_id)
            continue
        limit = settings.task_time_limit_s
        message = f"no worker finished the job within the {limit} s time limit"
        if record.is_video:
            # A video's chunks renew its time here with every progress report; a chunk whose worker
            # vanished is delivered again after the visibility timeout, so only silence beyond that is lost.
            silent_since = now - settings.visibility_timeout_s - STALE_MARGIN_S
            if not jobs.running_since_before(silent_since, job_id=job_id):
                continue
            # Chunks waiting behind other work in a busy queue make no progress either, and are not lost.
            if not jobs.without_message([job_id], message_queues(settings)):
                continue
            message = f"no part of the video made progress for {settings.visibility_timeout_s} s"
        if jobs.fail(record, "worker_lost", message):
            JOBS_PROCESSED.labels(record.params.effect.value, "failed").inc()
            JOB_FAILURES.labels("worker_lost").inc()
            lost += 1
        else:
            jobs.forget_running(job_id)
    return lost


def requeue_lost_messages(
    settings: Settings, jobs: JobStore, enqueue: Callable[[str, str, str], None], now: float
) -> int:
    """Queue again the jobs that have waited without a message since an earlier sweep."""
    # The API queues a job right after writing its record: only older jobs can have lost their message.
    # A worker starts a job the moment its message arrives (prefetch 1): one still queued whose message
    # was delivered over a lease ago lost its worker in between (cut off, or gone), and counts as missing.
    waiting = jobs.queued_since_before(now - STALE_MARGIN_S)
    without = jobs.without_message(waiting, message_queues(settings), delivered_since=now - settings.lease_s)
    missing_since = jobs.missing_since(without, now)
    requeued = 0
    for job_id, since in missing_since.items():
        if since > now - STALE_MARGIN_S:
            continue  # first seen missing recently: look again at a later sweep
        record = jobs.get(job_id)
        if record is None:  # expired
            jobs.forget_queued(job_id)
            continue
        if record.status is not JobStatus.QUEUED:  # started or cancelled meanwhile
            continue
        task = VIDEO_TASK if record.is_video else PROCESS_TASK
        enqueue(job_id, settings.queue_for(record.params.model), task)
        jobs.clear_missing(job_id)  # a lost re-send is found again, two sweeps later
        JOBS_REQUEUED.inc()
        requeued += 1
    return requeued


def sweep(
    settings: Settings,
    jobs: JobStore,
    storage: Storage,
    enqueue: Callable[[str, str, str], None],
    *,
    now: float | None = None,
) -> dict[str, int]:
    now = time.time() if now is None else now
    lost = fail_lost_jobs(settings, jobs, now)
    requeued = requeue_lost_messages(settings, jobs, enqueue, now)
    cutoff = now - settings.job_ttl_s
    deleted = sum(storage.delete_older_than(prefix, cutoff) for prefix in ("inputs/", "chunks/", "results/"))
    if lost or requeued or deleted:
        log.info(
            "sweep: %d lost jobs failed, %d jobs without a message queued again, %d expired objects deleted",
            lost,
            requeued,
            deleted,
        )
    return {"lost_jobs": lost, "requeued_jobs": requeued, "deleted_objects": deleted}
