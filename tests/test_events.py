"""The job-end subscription against a real server: it hears a job end, and notices a server that went
silent without closing the connection (its host vanished or froze), so it can subscribe again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from backdrop.service.events import SILENT_AFTER_S, EndsSubscription
from backdrop.service.jobs import ENDED_CHANNEL
from backdrop.service.localstack import free_port, start_redis
from backdrop.settings import Settings


@pytest.fixture()
def server(tmp_path: Path):
    port = free_port()
    process = start_redis(tmp_path / "redis", port, tmp_path)
    try:
        yield process, Settings.from_env({"BACKDROP_REDIS_URL": f"redis://127.0.0.1:{port}/0"}), port
    finally:
        os.kill(process.process.pid, signal.SIGCONT)
        process.stop()


def test_a_subscription_hears_a_job_end(server):
    _, settings, port = server
    with EndsSubscription(settings) as subscription:
        redis.Redis(port=port).publish(ENDED_CHANNEL, "job-1")
        heard = [subscription.next_end(0.5) for _ in range(10)]
        assert "job-1" in heard


def test_a_subscription_whose_server_went_silent_is_lost(server):
    process, settings, _ = server
    with EndsSubscription(settings) as subscription:
        assert subscription.next_end(0.1) is None
        os.kill(process.process.pid, signal.SIGSTOP)  # connected, but nothing answers: no reset comes
        frozen_at = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="has not answered"):
            for _ in range(int(SILENT_AFTER_S) * 3):
                subscription.next_end(1.0)
        assert time.monotonic() - frozen_at >= SILENT_AFTER_S  # not before the silence was long enough


def test_a_quiet_but_healthy_subscription_is_kept(server):
    _, settings, _ = server
    with EndsSubscription(settings) as subscription:
        for _ in range(int(SILENT_AFTER_S) + 3):  # longer than the silence limit, with nothing published
            assert subscription.next_end(1.0) is None


def test_only_jobs_with_a_webhook_wake_the_webhook_threads(server):
    """Every end is told on ENDED_CHANNEL; only an end with a webhook to deliver on WEBHOOK_CHANNEL, so
    the workers' webhook threads do not wake (and read the outbox) for every job of the fleet."""
    import time as clock

    from backdrop.params import JobParams, MediaKind
    from backdrop.service.jobs import WEBHOOK_CHANNEL, JobRecord, JobStatus, JobStore

    _, settings, _ = server
    jobs = JobStore.connect(settings.redis_url, ttl_s=600)
    params = JobParams.parse({}, MediaKind.IMAGE)
    with EndsSubscription(settings) as ends, EndsSubscription(settings, WEBHOOK_CHANNEL) as webhooks:
        for job_id, callback in (("plain", None), ("hooked", "http://127.0.0.1:9/hook")):
            record = JobRecord(job_id, JobStatus.QUEUED, params, clock.time(), "inputs/x", callback_url=callback)
            jobs.create(record)
            started = jobs.start(job_id, "w:1", 3)
            assert jobs.succeed(started.record, started.lease)
        assert [end for _ in range(10) if (end := ends.next_end(0.2))][:2] == ["plain", "hooked"]
        assert [end for _ in range(10) if (end := webhooks.next_end(0.2))] == ["hooked"]
