"""The Celery worker: ``celery -A worker.app worker -Q backdrop``.

Model files are fetched and verified once in the parent process (``worker_init``); each prefork child
creates its interpreters after the fork (``worker_process_init``, which must finish in a few seconds:
creating interpreters from local files takes well under one). Inference runtimes are not fork-safe, so
nothing is loaded before the fork; a GPU worker runs one process per GPU with ``--pool threads`` and
``BACKDROP_BATCH_SIZE`` so that concurrent jobs share forward passes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from celery.worker import state as worker_state

from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import get_model
from backdrop.pipeline import Pipeline
from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.service.jobs import JobRecord, JobStore, Lease
from backdrop.service.observability import (
    BATCH_SIZE,
    JOB_FAILURES,
    JOBS_PROCESSED,
    MODEL_LOAD_SECONDS,
    configure_logging,
    current_job_id,
    metrics_registry,
)
from backdrop.service.queue import (
    CHUNK_TASK,
    JOIN_TASK,
    PROCESS_TASK,
    SWEEP_TASK,
    TAKEOVER_LANE_SUFFIX,
    VIDEO_TASK,
    enqueue,
    enqueue_part,
    make_celery,
    takeover_lane,
)
from backdrop.service.storage import open_storage
from backdrop.service.uploads import Uploads
from backdrop.settings import Settings
from worker.leases import killed_attempt
from worker.sweeper import sweep
from worker.video import VideoRunner
from worker.watchdog import HardLimitWatchdog, Running
from worker.webhooks import WebhookDeliverer, WebhookDispatcher

log = logging.getLogger("backdrop.worker")
settings = Settings.from_env()
app = make_celery(settings)
app.conf.beat_schedule = {"sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_s}}
_runner: VideoRunner | None = None
_runner_lock = threading.Lock()  # a threads pool may ask from several threads at once
_parent_jobs: JobStore | None = None


def runner() -> VideoRunner:
    """This process's runner; built at process start (prefork) or on first use (solo/threads pools)."""
    global _runner
    with _runner_lock:
        if _runner is None:
            started = time.perf_counter()
            retained = retain_freed_memory(settings.retain_freed_memory_mb)
            pipeline = Pipeline(settings, on_batch=BATCH_SIZE.observe)
            pipeline.preload(settings.worker_models)
            storage = open_storage(settings)
            jobs = JobStore.from_settings(settings)
            _runner = VideoRunner(
                settings,
                pipeline,
                storage,
                Uploads.connect(settings, storage),
                jobs,
                queue_task=lambda name, args, queue: enqueue_part(app, name, args, queue),
            )
            # Every worker process renews its attempts' leases and takes over expired ones, and delivers due
            # webhooks (one attempt per job at a time, whoever is first).
            _runner.leases.start()
            WebhookDispatcher(WebhookDeliverer(settings, jobs, storage)).start()
            MODEL_LOAD_SECONDS.observe(time.perf_counter() - started)
            log.info(
                "worker %s ready: %d model files loaded in %.0f ms; freed memory kept for reuse: %s",
                _runner.worker_id,
                pipeline.engine_loads,
                (time.perf_counter() - started) * 1e3,
                "yes" if retained else "no",
            )
        return _runner


@setup_logging.connect
def json_logs(**_: object) -> None:
    """Replaces Celery's own logging set-up: every line is JSON, job lines carry the job id."""
    configure_logging("worker", settings.log_level)


@worker_init.connect
def fetch_models(**_: object) -> None:
    for name in settings.worker_models:
        for variant in get_model(name).variants:
            resolve_model_file(variant.file, settings)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.worker_metrics_port, registry=metrics_registry(settings))
            log.info("worker metrics on port %d", settings.worker_metrics_port)
        except OSError as exc:  # e.g. a second worker node on the same machine
            log.warning("worker metrics not served: port %d: %s", settings.worker_metrics_port, exc)


@worker_process_shutdown.connect
def forget_process_metrics(pid: int | None = None, **_: object) -> None:
    from prometheus_client import multiprocess

    if settings.metrics_dir is not None and pid is not None:
        multiprocess.mark_process_dead(pid)


_job_tokens: dict[str, object] = {}


@task_prerun.connect
def enter_job(task_id: str | None = None, args: tuple = (), **_: object) -> None:
    if args and task_id:
        _job_tokens[task_id] = current_job_id.set(str(args[0]))


@task_postrun.connect
def leave_job(task_id: str | None = None, **_: object) -> None:
    token = _job_tokens.pop(task_id or "", None)
    if token is not None:
        current_job_id.reset(token)  # type: ignore[arg-type]


@celeryd_after_setup.connect
def consume_takeover_lanes(sender: str, instance: Any, **_: object) -> None:
    """Every worker consumes the takeover lane of each queue it consumes (``--queues``, or all declared)."""
    queues = instance.app.amqp.queues
    for name in list(queues.consume_from):
        if not name.endswith(TAKEOVER_LANE_SUFFIX):
            queues.select_add(takeover_lane(name))


@worker_process_init.connect
def load_models(**_: object) -> None:
    global _in_pool_process
    _in_pool_process = True
    runner()


def _job_store() -> JobStore:
    """The job store of the process that records hard timeouts (Celery's main process for prefork pools,
    the node's one process for threads and solo), made on first use."""
    global _parent_jobs
    _parent_jobs = _parent_jobs or JobStore.from_settings(settings)
    return _parent_jobs


def record_hard_timeout(record: JobRecord, lease: Lease | None, *, replaced: str) -> None:
    """Record that ``record``'s job ran past its hard limit (for ``lease``'s attempt, where a photo's attempt
    is known; a video fails whole)."""
    limit = settings.video_task_time_limit_s if record.is_video else settings.task_time_limit_s
    if _job_store().fail(record, "timeout", f"the job ran past the {limit} s hard limit; {replaced}", lease):
        JOBS_PROCESSED.labels(record.params.effect.value, "failed").inc()
        JOB_FAILURES.labels("timeout").inc()


class JobTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[no-untyped-def]
        """Runs in the worker's main process when the hard time limit killed the pool process running
        the job (the pool replaces that process): record the job as timed out."""
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        record = _job_store().get(str(args[0]))
        if record is None:
            return
        lease = None
        if self.name == PROCESS_TASK:
            # A photo's attempts are fenced: a job that another node took over is left to that attempt.
            others = {r.worker_pid for r in worker_state.active_requests if r.id != task_id and r.worker_pid}
            lease = killed_attempt(record, socket.gethostname(), others)
            if lease is None:
                log.warning("job %s: past the hard limit, but another attempt holds it now", record.id)
                return
        record_hard_timeout(record, lease, replaced="its process was replaced")


def _timed_out_in_this_process(running: Running) -> None:
    """The watchdog's report (threads and solo pools): the attempt this process holds, if it still does."""
    lease = runner().leases.held(running.job_id) if running.task_name == PROCESS_TASK else None
    if running.task_name == PROCESS_TASK and lease is None:
        log.warning("job %s: past the hard limit, but this process holds no attempt of it", running.job_id)
        return
    record = _job_store().get(running.job_id)
    if record is not None:
        record_hard_timeout(record, lease, replaced="its worker process was ended")


# Set in prefork pool processes, where Celery enforces the hard limit itself.
_in_pool_process = False
hard_limit = HardLimitWatchdog(_timed_out_in_this_process)


@task_prerun.connect
def watch_hard_limit(task_id: str | None = None, task: Task | None = None, args: tuple = (), **_: object) -> None:
    if _in_pool_process or not (task_id and args and isinstance(task, JobTask)):
        return
    limit = task.time_limit or app.conf.task_time_limit
    if limit:
        hard_limit.started(task_id, task.name, str(args[0]), float(limit))


@task_postrun.connect
def unwatch_hard_limit(task_id: str | None = None, **_: object) -> None:
    hard_limit.finished(task_id or "")


@app.task(name=PROCESS_TASK, base=JobTask)
def process_job(job_id: str) -> str:
    return runner().run(job_id)


@app.task(name=VIDEO_TASK, base=JobTask)
def process_video(job_id: str) -> str:
    return runner().plan(job_id, CHUNK_TASK)


# A chunk or a join can take minutes: their own time limits (BACKDROP_VIDEO_TASK_*).
_VIDEO_LIMITS = {
    "soft_time_limit": settings.video_task_soft_time_limit_s,
    "time_limit": settings.video_task_time_limit_s,
}


@app.task(name=CHUNK_TASK, base=JobTask, **_VIDEO_LIMITS)
def render_chunk(job_id: str, index: int) -> str:
    return runner().render_chunk(job_id, index, JOIN_TASK)


@app.task(name=JOIN_TASK, base=JobTask, **_VIDEO_LIMITS)
def join_video(job_id: str) -> str:
    return runner().join(job_id)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> dict[str, int]:
    worker = runner()
    return sweep(
        settings, worker.jobs, worker.storage, lambda job_id, queue, task: enqueue(app, job_id, queue, task=task)
    )
