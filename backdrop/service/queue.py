"""The Celery app both sides share: the API only sends by task name (it never imports the worker or
the ML stack); the worker registers the task under that name."""

from __future__ import annotations

from celery import Celery

from backdrop.service.redis_client import REDIS_TRANSPORT, SENTINEL_TRANSPORT, broker
from backdrop.settings import Settings

PROCESS_TASK = "backdrop.process_job"
VIDEO_TASK = "backdrop.process_video"  # plans a video's chunks and queues them
CHUNK_TASK = "backdrop.render_chunk"  # renders one time range of a video
JOIN_TASK = "backdrop.join_video"  # joins a video's chunks and stores the result
SWEEP_TASK = "backdrop.sweep"
BROKER_SOCKET_TIMEOUT_S = 5  # above kombu's BRPOP wait (1 s), which is a read on the same socket
# A part taken over from an expired lease is queued in its queue's takeover lane, which every worker of
# that queue consumes too: kombu's Redis transport takes turns between a worker's queues (the one it last
# took from goes to the back), so a takeover is taken at the next message, not behind the whole queue.
TAKEOVER_LANE_SUFFIX = ".takeover"


def takeover_lane(queue: str) -> str:
    return queue + TAKEOVER_LANE_SUFFIX


def message_queues(settings: Settings) -> list[str]:
    """Every queue a message of a job can wait in: the queues and their takeover lanes."""
    return [*settings.queues, *(takeover_lane(queue) for queue in settings.queues)]


def make_celery(settings: Settings) -> Celery:
    url, transport_options = broker(settings)
    app = Celery("backdrop", broker=url, set_as_current=False)
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
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # A broker that vanishes without closing the connection (a failover, a cut network) must not
            # leave a publish or a consumer waiting forever: reads time out, and idle connections are
            # checked, so the next command reconnects (through the sentinels, to the new primary).
            "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": 2,
            "socket_keepalive": True,
            "health_check_interval": 5,
            **transport_options,
        },
        # kombu's Redis transports with our fixes (redis_client.ReusedClientChannel, FailoverSafeSentinelChannel).
        broker_transport=SENTINEL_TRANSPORT if settings.redis_sentinels else REDIS_TRANSPORT,
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
