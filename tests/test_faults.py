"""Fault injection against the real servers: every accepted job ends in exactly one terminal state.

Its own stack (short time limits, fault injection on) so killing and restarting things cannot disturb
the other integration tests.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from celery import Celery

from backdrop.service.jobs import JobRecord, JobStatus, JobStore
from backdrop.service.localstack import LocalStack, ManagedProcess, free_port, start_workers, wait_for_workers
from backdrop.service.storage import open_storage
from backdrop.settings import Settings
from tests.waiting import wait_for
from worker.faults import marker

pytestmark = pytest.mark.integration

FAULT_ENV = {
    "BACKDROP_THREADS": "1",
    "BACKDROP_FAULT_INJECTION": "true",
    "BACKDROP_TASK_SOFT_TIME_LIMIT_S": "6",
    "BACKDROP_TASK_TIME_LIMIT_S": "9",
    "BACKDROP_VISIBILITY_TIMEOUT_S": "20",
    "BACKDROP_VIDEO_TASK_SOFT_TIME_LIMIT_S": "12",
    "BACKDROP_VIDEO_TASK_TIME_LIMIT_S": "15",
    "BACKDROP_STORAGE_RETRIES": "3",
    "BACKDROP_STORAGE_RETRY_BACKOFF_S": "0.5",  # retry budget: 0.5 + 1 + 2 = 3.5 s
    "BACKDROP_MAX_ATTEMPTS": "3",
    "BACKDROP_LEASE_S": "3",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {**os.environ, **FAULT_ENV}
    local = LocalStack(root=tmp_path_factory.mktemp("faults"), api_port=free_port(), workers=2)
    local.start(env)
    yield local
    local.stop()


@pytest.fixture(scope="module")
def settings(stack) -> Settings:
    return Settings.from_env(stack.env)


@pytest.fixture(scope="module")
def store(settings) -> JobStore:
    return JobStore.connect(settings.redis_url, ttl_s=600)


def with_comments(jpeg: bytes, *comments: bytes) -> bytes:
    """The same photo with JPEG comment segments (COM, up to 65533 bytes each) right after its SOI marker."""
    segments = b"".join(b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text for text in comments)
    return jpeg[:2] + segments + jpeg[2:]


def with_fault(jpeg: bytes, name: str, seconds: float | None = None) -> bytes:
    """The same photo with a comment carrying a fault marker."""
    return with_comments(jpeg, marker(name, seconds))


def padded(jpeg: bytes, size: int) -> bytes:
    """The same photo grown past ``size`` bytes with comments (over the inline upload limit)."""
    return with_comments(jpeg, *[b" " * 60_000] * (size // 60_000 + 1))


def submit(stack, image: bytes, **fields) -> requests.Response:
    return requests.post(f"{stack.api_url}/v1/jobs", files={"image": ("p.jpg", image)}, data=fields, timeout=30)


def accepted(stack, image: bytes, **fields) -> str:
    response = submit(stack, image, **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def running(store: JobStore, job_id: str) -> JobRecord:
    return wait_for(
        lambda: (r := store.get(job_id)) is not None and r.status is JobStatus.RUNNING and r, 30, f"{job_id} to run"
    )


def finished(store: JobStore, job_id: str, timeout_s: float = 60) -> JobRecord:
    return wait_for(lambda: (r := store.get(job_id)) is not None and r.status.finished and r, timeout_s, job_id)


def result_objects(settings: Settings, job_id: str) -> list[str]:
    return open_storage(settings).list_keys(f"results/{job_id}")


def pid_of(record: JobRecord) -> int:
    return int((record.worker or "").rsplit(":", 1)[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def paused(settings: Settings, node: str = "backdrop") -> Iterator[None]:
    control = Celery(broker=settings.redis_url, set_as_current=False)
    control.conf.broker_pool_limit = 0  # fresh connections: the servers may have been restarted
    destination = [f"{node}@{socket.gethostname()}"]
    assert control.control.cancel_consumer(settings.queue, destination=destination, reply=True, timeout=5)
    try:
        yield
    finally:
        control.control.add_consumer(settings.queue, destination=destination, reply=True, timeout=5)


def test_sigkill_mid_job_is_redelivered_and_stored_once(stack, settings, store, astronaut_jpeg):
    job_id = accepted(stack, with_fault(astronaut_jpeg, "slow", 2))
    first = running(store, job_id)
    time.sleep(0.3)  # well inside the job
    os.kill(pid_of(first), signal.SIGKILL)
    record = finished(store, job_id)
    assert record.status is JobStatus.SUCCEEDED, record.error
    # Celery hands the lost message on when its pool notices the death (well inside the 3 s lease here;
    # on a loaded machine it took 3.5 s once); by then the lease may have run out and the job been taken
    # over too. Either way one attempt after the killed one finishes it, and its result alone is stored.
    assert record.attempts in (2, 3) and pid_of(record) != pid_of(first)
    assert result_objects(settings, job_id) == [record.result.key]


def frozen_attempt_gave_up(stack: LocalStack, job_id: str) -> None:
    """Wait for a woken (SIGCONT) attempt to give up: its renewal refused, its result refused, or (woken
    past the soft time limit) its failure refused."""
    worker = stack.process("worker-backdrop")
    gave_up = (
        f"job {job_id}: a later attempt has it",
        f"job {job_id}: taken over by another worker",
        f"job {job_id}: the failure is not recorded",
    )
    wait_for(lambda: any(line in worker.log_text() for line in gave_up), 20, "the frozen attempt to give up")


def test_a_worker_that_stops_answering_is_taken_over_and_fenced_out(stack, settings, store, astronaut_jpeg):
    """A process frozen mid-job (SIGSTOP: alive, silent, as behind a partition) stops renewing its lease:
    the other process takes the job over within the lease; when the frozen one wakes, nothing it does
    counts and nothing it stored stays."""
    job_id = accepted(stack, with_fault(astronaut_jpeg, "slow", 2))
    first = running(store, job_id)
    frozen = pid_of(first)
    os.kill(frozen, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        record = finished(store, job_id, timeout_s=settings.lease_s + 30)
        # Taken over within the lease (plus a renewal period and the scan), then done in ~2 s more.
        assert time.monotonic() - frozen_at < settings.lease_s + 2 * 2 + 5
        assert record.status is JobStatus.SUCCEEDED and record.attempts == 2 and pid_of(record) != frozen
    finally:
        os.kill(frozen, signal.SIGCONT)
    frozen_attempt_gave_up(stack, job_id)
    time.sleep(0.5)
    assert store.get(job_id) == record  # the late attempt wrote nothing
    assert result_objects(settings, job_id) == [record.result.key]


def test_a_taken_over_job_does_not_wait_behind_the_queue(stack, settings, store, astronaut_jpeg):
    """A takeover goes to the queue's takeover lane, which workers take turns with: it runs at the next
    message, ahead of the jobs queued behind it, not after all of them."""
    job_id = accepted(stack, with_fault(astronaut_jpeg, "slow", 2))
    frozen = pid_of(running(store, job_id))
    os.kill(frozen, signal.SIGSTOP)
    try:
        backlog = [accepted(stack, with_fault(astronaut_jpeg, "slow", 1)) for _ in range(8)]
        record = finished(store, job_id, timeout_s=settings.lease_s + 40)
        assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
        later = [r for r in (finished(store, b, timeout_s=60) for b in backlog) if r.finished_at > record.finished_at]
        assert len(later) >= 2, f"only {len(later)} of the backlog finished after the taken-over job"
    finally:
        try:
            os.kill(frozen, signal.SIGCONT)
            woken = True
        except ProcessLookupError:  # the hard time limit killed it meanwhile
            woken = False
    if woken:
        frozen_attempt_gave_up(stack, job_id)
    time.sleep(0.5)
    assert store.get(job_id) == record  # neither the woken attempt nor the hard limit changed it


def test_sigterm_lets_the_running_job_finish(stack, settings, store, astronaut_jpeg):
    extra = start_workers(
        stack.env, concurrency=1, queues=settings.queue, log_path=stack.root / "log" / "extra.log", name="extra"
    )
    try:
        wait_for_workers(extra, 1)
        with paused(settings):  # only the extra node takes jobs now
            job_id = accepted(stack, with_fault(astronaut_jpeg, "slow", 2))
            running(store, job_id)
            extra.process.send_signal(signal.SIGTERM)  # warm shutdown
            record = finished(store, job_id)
            assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
            extra.process.wait(30)
    finally:
        extra.stop()


def test_redis_restart_loses_nothing(stack, settings, store, astronaut_jpeg):
    ids = [accepted(stack, with_fault(astronaut_jpeg, "slow", 1)) for _ in range(4)]
    running(store, ids[0])
    stack.stop_service("redis")
    try:
        started = time.monotonic()
        down = submit(stack, astronaut_jpeg)
        assert down.status_code == 503 and down.json()["error"]["code"] == "broker_unavailable"
        assert requests.get(f"{stack.api_url}/v1/jobs/{ids[0]}", timeout=10).status_code == 503
        assert requests.get(f"{stack.api_url}/readyz", timeout=10).status_code == 503
        assert time.monotonic() - started < 10  # answered, not hung
        time.sleep(1)
    finally:
        stack.start_service("redis")
    wait_for(lambda: requests.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200, 30, "API recovery")
    after = accepted(stack, astronaut_jpeg)
    for job_id in [*ids, after]:
        record = finished(store, job_id, timeout_s=90)
        assert record.status is JobStatus.SUCCEEDED, (job_id, record.error)
        assert len(result_objects(settings, job_id)) == 1


def test_a_job_whose_message_was_lost_is_queued_again_by_the_sweep(stack, settings, store, astronaut_jpeg):
    """What a hard Redis crash (the last second of writes gone) or an API dying between writing the
    record and queueing it leaves behind: a queued job no message names."""
    from backdrop.service.queue import enqueue, make_celery
    from worker.sweeper import sweep

    celery, storage = make_celery(settings), open_storage(settings)
    with paused(settings):
        job_id = accepted(stack, astronaut_jpeg)
        # A fetch the worker began before the pause may hold the message a moment, then put it back.
        wait_for(lambda: store.redis.llen(settings.queue) == 1, 10, "the message back in the queue")
        assert store.redis.delete(settings.queue) == 1  # the only message: lost
    now = time.time() + 60
    assert sweep(settings, store, storage, lambda j, q, t: enqueue(celery, j, q, task=t), now=now)["requeued_jobs"] == 0
    time.sleep(1)
    assert store.get(job_id).status is JobStatus.QUEUED  # nothing will ever deliver it by itself
    resend = lambda j, q, t: enqueue(celery, j, q, task=t)  # noqa: E731
    assert sweep(settings, store, storage, resend, now=now + 31)["requeued_jobs"] == 1
    record = finished(store, job_id)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1, record.error
    assert result_objects(settings, job_id) == [record.result.key]


def test_s3_outage_is_retried_until_it_returns(stack, settings, store, astronaut_jpeg):
    with paused(settings):
        job_id = accepted(stack, astronaut_jpeg)
        stack.stop_service("s3")
    try:
        # A photo over the inline limit needs S3 to be accepted; a small one waits in Redis meanwhile.
        refused = submit(stack, padded(astronaut_jpeg, settings.inline_upload_max_bytes))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable"
        small_job_id = accepted(stack, astronaut_jpeg)
        time.sleep(2)  # the worker is retrying meanwhile
        assert store.get(job_id).status is JobStatus.RUNNING
    finally:
        stack.start_service("s3")
    for finished_job in (job_id, small_job_id):
        record = finished(store, finished_job)
        assert record.status is JobStatus.SUCCEEDED, record.error


def test_s3_outage_past_the_retry_budget_fails_the_job(stack, settings, store, astronaut_jpeg):
    with paused(settings):
        job_id = accepted(stack, astronaut_jpeg)
        stack.stop_service("s3")
    try:
        record = finished(store, job_id, timeout_s=40)
    finally:
        stack.start_service("s3")
    assert record.status is JobStatus.FAILED and record.error["code"] == "storage_unavailable"


def test_soft_time_limit_fails_with_timeout(stack, store, astronaut_jpeg):
    job_id = accepted(stack, with_fault(astronaut_jpeg, "slow", 30))
    record = finished(store, job_id, timeout_s=30)
    assert record.status is JobStatus.FAILED and record.error["code"] == "timeout"
    assert 6 <= record.finished_at - record.started_at < 9


@contextmanager
def threads_node(stack, settings: Settings, name: str) -> Iterator[ManagedProcess]:
    """A worker node with a threads pool (two threads), the only node taking jobs while inside."""
    threads = start_workers(
        stack.env,
        concurrency=2,
        queues=settings.queue,
        log_path=stack.root / "log" / f"{name}.log",
        name=name,
        pool="threads",
    )
    try:
        wait_for(lambda: "ready" in threads.log_text(), 90, "the threads-pool worker")
        with paused(settings):
            yield threads
    finally:
        threads.stop()


def test_time_limit_in_a_threads_pool(stack, settings, store, astronaut_jpeg):
    """Celery cannot interrupt a thread: the runner's deadline, checked between stages, fails the job."""
    with threads_node(stack, settings, "threads") as threads:
        job_id = accepted(stack, with_fault(astronaut_jpeg, "slow", 8))
        record = finished(store, job_id, timeout_s=30)
        assert record.status is JobStatus.FAILED and record.error["code"] == "timeout", record.error
        assert "6 s limit" in record.error["message"]
        assert pid_of(record) == threads.process.pid  # ran in the threads node's one process
        healthy = finished(store, accepted(stack, astronaut_jpeg))
        assert healthy.status is JobStatus.SUCCEEDED and pid_of(healthy) == threads.process.pid


def test_hard_time_limit_in_a_threads_pool_ends_the_process(stack, settings, store, astronaut_jpeg):
    """A thread stuck past the hard limit cannot be stopped: the watchdog records the job as timed out and
    ends the node's process (its restart policy starts it again; here the test does)."""
    with threads_node(stack, settings, "threads-stuck") as threads:
        job_id = accepted(stack, with_fault(astronaut_jpeg, "stuck", 60))
        assert pid_of(running(store, job_id)) == threads.process.pid
        record = finished(store, job_id, timeout_s=30)
        assert record.status is JobStatus.FAILED and record.error["code"] == "timeout", record.error
        assert "9 s hard limit" in record.error["message"]
        # Counted from the task's start, which is before the record's (a threads node loads its models then).
        assert 7 <= record.finished_at - record.started_at < 13
        wait_for(lambda: not threads.alive(), 10, "the stuck node's process to end")
        assert threads.process.returncode == -signal.SIGKILL
        time.sleep(2)
        assert store.get(job_id).status is JobStatus.FAILED  # recorded once, not redelivered as a new run


def test_hard_time_limit_fails_with_timeout_and_replaces_the_process(stack, store, astronaut_jpeg):
    job_id = accepted(stack, with_fault(astronaut_jpeg, "stuck", 60))
    pid = pid_of(running(store, job_id))
    record = finished(store, job_id, timeout_s=40)
    assert record.status is JobStatus.FAILED and record.error["code"] == "timeout"
    wait_for(lambda: not alive(pid), 10, "the stuck process to be gone")
    time.sleep(3)
    assert store.get(job_id).status is JobStatus.FAILED  # not redelivered


def test_poison_input_fails_once_without_a_redelivery_loop(stack, store, astronaut_jpeg):
    job_id = accepted(stack, with_fault(astronaut_jpeg, "crash"))
    record = finished(store, job_id, timeout_s=90)
    assert record.status is JobStatus.FAILED and record.error["code"] == "worker_lost"
    attempts = record.attempts
    time.sleep(3)
    again = store.get(job_id)
    assert again.status is JobStatus.FAILED and again.attempts == attempts == 4
    # And the service still works.
    healthy = finished(store, accepted(stack, astronaut_jpeg))
    assert healthy.status is JobStatus.SUCCEEDED
