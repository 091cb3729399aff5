"""The Celery app both sides share: the API only sends by task name (it never imports the worker or
the ML stack); the worker registers the task under that name."""

from __future__ import annotations

from celery import Celery

from backdrop.settings import Settings

PROCESS_TASK = "backdrop.process_job"
VIDEO_TASK = "backdrop.process_video"  # plans a video's chunks and queues them
CHUNK_TASK = "backdrop.render_chunk"  # renders one time range of a video
JOIN_TASK = "backdrop.join_video"  # joins a video's chunks and stores the result
SWEEP_TASK = "backdrop.sweep"


def make_celery(settings: Settings) -> Celery:
    app = Celery("backdrop", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        # Job state lives in our job records; Celery results would only duplicate it.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # A job is acknowledged only when done: a worker that dies mid-job leaves it to be redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_pool_limit=10,
        worker_hijack_root_logger=False,
        # Task events cost a Redis publish per task state; Flower switches the workers' events on itself
        # (remote control), so they are only sent while someone watches.
        worker_send_task_events=False,
        task_send_sent_event=False,
        # No task has a rate limit: the consumer skips its token buckets for every message.
        worker_disable_rate_limits=True,
    )
    return app


def enqueue(app: Celery, job_id: str, queue: str, *, task: str = PROCESS_TASK) -> None:
    """Publish one job message; fails fast (no retry loop) so the API can answer 503."""
    # The Celery task id is the job id, so Celery's own log lines name the job too.
    app.send_task(task, args=[job_id], task_id=job_id, queue=queue, retry=False)


def enqueue_part(app: Celery, task: str, args: list, queue: str) -> None:
    """Publish a message for part of a job (a video's chunk, its join): ``args`` start with the job id.
    The task id starts with it too ("<job id>-render_chunk-3"), so the sweep can see that a job still has
    work waiting in a queue (``JobStore.without_message``)."""
    task_id = "-".join([str(args[0]), task.rsplit(".", 1)[-1], *(str(arg) for arg in args[1:])])
    app.send_task(task, args=args, task_id=task_id, queue=queue)
