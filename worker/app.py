"""The Celery worker: ``celery -A worker.app worker -Q backdrop``.

Model files are fetched and verified once in the parent process (``worker_init``); each prefork child
creates its interpreters after the fork (``worker_process_init``, which must finish in a few seconds:
creating interpreters from local files takes well under one). Inference runtimes are not fork-safe, so
nothing is loaded before the fork; a GPU worker runs ``--pool solo`` (one process per GPU).
"""

from __future__ import annotations

import logging
import time

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import worker_init, worker_process_init

from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import get_model
from backdrop.pipeline import Pipeline
from backdrop.service.jobs import JobStore
from backdrop.service.queue import PROCESS_TASK, SWEEP_TASK, make_celery
from backdrop.service.storage import open_storage
from backdrop.settings import Settings
from worker.runner import JobRunner
from worker.sweeper import sweep

log = logging.getLogger("backdrop.worker")
settings = Settings.from_env()
app = make_celery(settings)
app.conf.beat_schedule = {"sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_s}}
_runner: JobRunner | None = None
_parent_jobs: JobStore | None = None


def runner() -> JobRunner:
    """This process's runner; built at process start (prefork) or on first use (solo/threads pools)."""
    global _runner
    if _runner is None:
        started = time.perf_counter()
        pipeline = Pipeline(settings)
        pipeline.preload(settings.worker_models)
        storage = open_storage(settings)
        jobs = JobStore.connect(settings.redis_url, ttl_s=settings.job_ttl_s)
        _runner = JobRunner(settings, pipeline, storage, jobs)
        log.info(
            "worker %s ready: %d model files loaded in %.0f ms",
            _runner.worker_id,
            pipeline.engine_loads,
            (time.perf_counter() - started) * 1e3,
        )
    return _runner


@worker_init.connect
def fetch_models(**_: object) -> None:
    for name in settings.worker_models:
        for variant in get_model(name).variants:
            resolve_model_file(variant.file, settings)


@worker_process_init.connect
def load_models(**_: object) -> None:
    runner()


class JobTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # type: ignore[no-untyped-def]
        """Runs in the worker's main process when the hard time limit killed the pool process running
        the job (the pool replaces that process): record the job as timed out."""
        global _parent_jobs
        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        _parent_jobs = _parent_jobs or JobStore.connect(settings.redis_url, ttl_s=settings.job_ttl_s)
        record = _parent_jobs.get(str(args[0]))
        if record is not None:
            limit = settings.task_time_limit_s
            _parent_jobs.fail(record, "timeout", f"the job ran past the {limit} s hard limit; its process was replaced")


@app.task(name=PROCESS_TASK, base=JobTask)
def process_job(job_id: str) -> str:
    return runner().run(job_id)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> dict[str, int]:
    worker = runner()
    return sweep(settings, worker.jobs, worker.storage)
