"""The service's own numbers and words: Prometheus metrics and structured JSON logs.

Metrics work in multi-process servers (gunicorn workers, Celery prefork children) through
prometheus-client's multiprocess mode: each process writes its samples under
``PROMETHEUS_MULTIPROC_DIR`` and a scrape adds them up. Every log line is one JSON object; lines about
a job carry its ``job_id``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from backdrop.settings import Settings

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# API
JOBS_SUBMITTED = Counter("backdrop_jobs_submitted_total", "Jobs accepted by the API", ["effect"])
REQUESTS_REJECTED = Counter("backdrop_requests_rejected_total", "API requests answered with an error", ["code"])
REPLICATION_UNCONFIRMED = Counter(
    "backdrop_replication_unconfirmed_total",
    "Jobs accepted before a Redis replica confirmed them (Sentinel mode: the replication window was open)",
)
# Workers
JOBS_PROCESSED = Counter("backdrop_jobs_processed_total", "Jobs finished by workers", ["effect", "outcome"])
JOB_FAILURES = Counter("backdrop_job_failures_total", "Failed jobs by failure code", ["code"])
JOBS_REQUEUED = Counter("backdrop_jobs_requeued_total", "Queued jobs whose lost message the sweep sent again")
JOBS_TAKEN_OVER = Counter(
    "backdrop_jobs_taken_over_total",
    "Running jobs (part: job) and video parts (video_part) queued again because their lease ran out",
    ["part"],
)
STAGE_SECONDS = Histogram("backdrop_stage_seconds", "Time per pipeline stage", ["stage"], buckets=STAGE_BUCKETS)
MODEL_LOAD_SECONDS = Histogram(
    "backdrop_model_load_seconds", "Time a worker process took to load its models", buckets=STAGE_BUCKETS
)
WEBHOOK_DELIVERIES = Counter(
    "backdrop_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered; retry: will be tried again; failed: given up)",
    ["outcome"],
)
VIDEO_FRAMES = Counter("backdrop_video_frames_total", "Video frames rendered")
VIDEO_SECONDS = Counter("backdrop_video_seconds_total", "Seconds of video delivered (joined results)")
VIDEO_CHUNK_SECONDS = Histogram(
    "backdrop_video_chunk_seconds",
    "Time to render one chunk of a video",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
)
# Live
LIVE_SESSIONS = Gauge("backdrop_live_sessions", "Open live sessions", multiprocess_mode="livesum")
LIVE_FRAMES = Counter("backdrop_live_frames_total", "Live frames processed")
BATCH_SIZE = Histogram("backdrop_batch_size", "Images per model invocation", buckets=(1, 2, 4, 8, 16, 32))

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("backdrop_job_id", default=None)


class QueueDepthCollector:
    """Queue depth read from Redis at scrape time (a gauge no single process owns)."""

    def __init__(self, depth: Callable[[str], int], queues: list[str]) -> None:
        self._depth, self._queues = depth, queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("backdrop_queue_depth", "Jobs waiting in each queue", labels=["queue"])
        for queue in self._queues:
            try:
                gauge.add_metric([queue], self._depth(queue))
            except Exception:  # Redis down: no sample rather than a failed scrape
                continue
        yield gauge


def metrics_registry(settings: Settings, *extra: object) -> CollectorRegistry:
    """The registry to expose: all processes' samples in multiprocess mode, else this process's."""
    if settings.metrics_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(settings.metrics_dir))
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


class _Forward:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self):  # type: ignore[no-untyped-def]
        return self._registry.collect()


def render_metrics(settings: Settings, *extra: object) -> tuple[bytes, str]:
    return generate_latest(metrics_registry(settings, *extra)), CONTENT_TYPE_LATEST


def observe_stages(timings_ms: dict[str, float]) -> None:
    for stage, milliseconds in timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(milliseconds / 1e3)


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or current_job_id.get() or _celery_task_id(record)
        if job_id:
            entry["job_id"] = job_id
        for key in ("method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _celery_task_id(record: logging.LogRecord) -> str | None:
    # Celery's own lines ("Task ... received", "... succeeded") pass the task id, which is the job id.
    args = record.args
    if isinstance(args, dict) and isinstance(args.get("id"), str):
        return args["id"]
    return None


def configure_logging(component: str, level: str = "INFO") -> None:
    """One JSON object per line on stderr for the whole process (replaces existing root handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
