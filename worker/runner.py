"""One job, start to finish: fetch the upload, run the pipeline, store the result, record the outcome.

Plain code with its collaborators passed in, so it runs without Celery; the task in ``worker.app`` only
calls :meth:`JobRunner.run`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded

from backdrop.errors import BackdropError
from backdrop.pipeline import Pipeline
from backdrop.service.jobs import (
    JOIN_PART,
    RUN_PART,
    BrokerUnavailable,
    JobRecord,
    JobStatus,
    JobStore,
    Lease,
    ResultObject,
    result_key,
    result_prefix,
)
from backdrop.service.observability import JOB_FAILURES, JOBS_PROCESSED, observe_stages
from backdrop.service.queue import CHUNK_TASK, JOIN_TASK, PROCESS_TASK, VIDEO_TASK, takeover_lane
from backdrop.service.storage import ObjectNotFound, Storage, StorageUnavailable
from backdrop.service.uploads import Uploads, inline_keys
from backdrop.settings import Settings
from worker import faults
from worker.leases import HeldLease, LeaseKeeper, LeaseLost

log = logging.getLogger("backdrop.worker")
T = TypeVar("T")


class JobRunner:
    """Runs image jobs; ``queue_task(name, args, queue)`` sends a message for part of a job (a part taken
    over from an expired lease; a video's chunks and join)."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        storage: Storage,
        uploads: Uploads,
        jobs: JobStore,
        *,
        queue_task: Callable[[str, list, str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.storage = storage
        self.uploads = uploads
        self.jobs = jobs
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._sleep = sleep
        self._queue_task = queue_task
        self.leases = LeaseKeeper(jobs, self.requeue)

    def _with_retries(self, operation: Callable[[], T]) -> T:
        """Retry transient S3 or Redis failures with exponential backoff, then give up."""
        delay = self.settings.storage_retry_backoff_s
        for attempt in range(self.settings.storage_retries + 1):
            try:
                return operation()
            except (StorageUnavailable, BrokerUnavailable) as exc:
                if attempt == self.settings.storage_retries:
                    raise
                log.warning("%s (%s); retry %d in %.1f s", exc.code, exc.message, attempt + 1, delay)
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def run(self, job_id: str) -> str:
        """Process ``job_id`` if it still needs processing; returns what happened (for logs and tests)."""
        decision = self._with_retries(
            lambda: self.jobs.start(job_id, self.worker_id, self.settings.max_attempts, read_also=inline_keys(job_id))
        )
        if decision.action == "exhausted":
            record = self._with_retries(lambda: self.jobs.get(job_id))
            if record is not None:
                self._fail(
                    record,
                    "worker_lost",
                    f"the job was delivered {decision.attempt - 1} times and never finished "
                    "(its worker died or was killed each time)",
                )
            return "exhausted"
        if decision.action != "run":
            log.info("job %s skipped: %s", job_id, decision.action)
            if decision.action == "cancelled" and (record := self.jobs.get(job_id)) is not None:
                self._delete_inputs(record)
            return "skipped"
        record, lease = decision.record, decision.lease
        if record is None or lease is None:
            return "skipped"
        try:
            with self.leases.hold(lease) as held:
                return self._process(record, held, decision.read)
        except LeaseLost:
            log.warning("job %s: taken over by another worker; this attempt's work is dropped", job_id)
            return "fenced"
        except SoftTimeLimitExceeded:
            limit = self.settings.task_soft_time_limit_s
            return self._fail(record, "timeout", f"the job ran longer than {limit} s", lease)
        except ObjectNotFound:
            return self._fail(record, "input_missing", "the uploaded image is no longer in storage", lease)
        except BackdropError as exc:
            return self._fail(record, exc.code, exc.message, lease)
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job_id)
            message = f"processing failed unexpectedly ({type(exc).__name__})"
            return self._fail(record, "internal_error", message, lease)

    def _fail(self, record: JobRecord, code: str, message: str, lease: Lease | None = None) -> str:
        """Record the failure (for ``lease``'s attempt, if it is still the current one)."""
        log.warning("job failed: %s: %s", code, message)
        if not self._with_retries(lambda: self.jobs.fail(record, code, message, lease)):
            log.warning("job %s: the failure is not recorded (the job ended, or a later attempt has it)", record.id)
            return "skipped"
        JOBS_PROCESSED.labels(record.params.effect.value, "failed").inc()
        JOB_FAILURES.labels(code).inc()
        self._delete_inputs(record)
        return "failed"

    def requeue(self, lease: Lease) -> bool:
        """Send the message that runs an expired ``lease``'s part again (False: the job no longer runs)."""
        record = self._with_retries(lambda: self.jobs.get(lease.job_id))
        if record is None or record.status is not JobStatus.RUNNING:
            return False
        queue = takeover_lane(self.settings.queue_for(record.params.model))
        if lease.part == RUN_PART:
            self._queue_task(VIDEO_TASK if record.is_video else PROCESS_TASK, [lease.job_id], queue)
        elif lease.part == JOIN_PART:
            self._queue_task(JOIN_TASK, [lease.job_id], queue)
        else:
            self._queue_task(CHUNK_TASK, [lease.job_id, int(lease.part)], queue)
        return True

    def _linked_or_deleted(self, recorded: bool, key: str, lease: Lease) -> bool:
        """After the terminal write: an object a refused (late) attempt stored is deleted; the current
        attempt deletes what earlier attempts of the job stored and never linked (a worker that died between
        storing and recording)."""
        try:
            if not recorded:
                log.warning("job %s: a later attempt has it; %s deleted (never linked)", lease.job_id, key)
                self.storage.delete(key)
            elif lease.fence > 1:
                stale = [k for k in self.storage.list_keys(result_prefix(lease.job_id)) if k != key]
                if stale:
                    self.storage.delete(*stale)
        except (StorageUnavailable, BrokerUnavailable):
            log.warning("job %s: unlinked result objects not deleted now; the sweep deletes them", lease.job_id)
        return recorded

    def _delete_inputs(self, record: JobRecord) -> None:
        """Uploads are kept only while a job may still need them; the sweep catches what this misses."""
        inputs = [k for k in (record.input_key, record.background_key) if k]
        try:
            self.uploads.delete(*inputs)
        except (StorageUnavailable, BrokerUnavailable):
            log.warning("job %s: inputs could not be deleted now; they expire with the job", record.id)

    def _process(self, record: JobRecord, held: HeldLease, read: dict[str, bytes | None]) -> str:
        started = time.perf_counter()
        # Checked between stages: the time limit in a threads pool, where Celery's limits do not apply.
        limit_s = self.settings.task_soft_time_limit_s
        deadline = time.monotonic() + limit_s
        image = self._with_retries(lambda: self.uploads.get(record.input_key, read))
        background = None
        if record.background_key:
            background = self._with_retries(lambda: self.uploads.get(record.background_key or "", read))
        fetched = time.perf_counter()
        if self.settings.fault_injection:
            faults.inject(image)

        result = self.pipeline.process(image, record.params, background, deadline=deadline, limit_s=limit_s)

        held.check()  # taken over meanwhile: store nothing
        stored_at = time.perf_counter()
        key = result_key(held.lease, result.format.extension)
        self._with_retries(lambda: self.storage.put(key, result.data, result.content_type))
        timings = {
            "download": round((fetched - started) * 1e3, 2),
            **result.timings_ms,
            "upload": round((time.perf_counter() - stored_at) * 1e3, 2),
        }
        recorded = self._with_retries(
            lambda: self.jobs.succeed(
                record,
                model=result.model,
                detected=result.detected,
                found=result.found,
                timings_ms=timings,
                result=ResultObject(
                    key=key,
                    content_type=result.content_type,
                    width=result.width,
                    height=result.height,
                    bytes=len(result.data),
                    foreground=result.foreground,
                ),
                worker=self.worker_id,
                engine_loads=self.pipeline.engine_loads,
                lease=held.lease,
            )
        )
        if not self._linked_or_deleted(recorded, key, held.lease):
            return "fenced"
        JOBS_PROCESSED.labels(record.params.effect.value, "succeeded").inc()
        observe_stages(timings)
        log.info("job succeeded in %.0f ms", sum(timings.values()))
        self._delete_inputs(record)
        return "succeeded"
