"""Leases and fencing against a real Redis: an attempt whose worker stops renewing is taken over once,
and only the current attempt's writes count."""

from __future__ import annotations

import time
import uuid

import pytest

from backdrop.params import JobParams, MediaKind
from backdrop.service.jobs import JOIN_PART, LEASES_SET, RUN_PART, JobRecord, JobStatus, JobStore, Lease
from backdrop.settings import Settings
from worker.leases import LeaseKeeper, LeaseLost, killed_attempt

LEASE_S = 0.4


@pytest.fixture
def jobs(stack) -> JobStore:
    """Its own Redis database: expired leases found here are only this test's."""
    shared = Settings.from_env(stack.env)
    store = JobStore.connect(shared.redis_url.rsplit("/", 1)[0] + "/4", ttl_s=600, lease_s=LEASE_S)
    store.redis.flushdb()
    return store


def queued(kind: MediaKind = MediaKind.IMAGE) -> JobRecord:
    job_id = uuid.uuid4().hex
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        params=JobParams.parse({}, kind),
        created_at=time.time(),
        input_key=f"inputs/{job_id}",
    )


def expire(jobs: JobStore, lease: Lease) -> None:
    time.sleep(LEASE_S + 0.15)
    assert lease in jobs.expired_leases(time.time())


def test_only_the_current_attempt_finishes_the_job(jobs):
    record = queued()
    jobs.create(record)
    first = jobs.start(record.id, "w1:1", 3)
    assert first.action == "run" and first.lease == Lease(record.id, RUN_PART, 1)
    expire(jobs, first.lease)
    assert jobs.take_over(first.lease) and not jobs.take_over(first.lease)  # claimed once
    second = jobs.start(record.id, "w2:1", 3)
    assert second.lease.fence == 2 and jobs.get(record.id).worker == "w2:1"

    assert not jobs.renew(first.lease)  # the late worker learns it lost the job
    assert not jobs.succeed(first.record, first.lease)  # and its result is refused
    assert not jobs.fail(first.record, "internal_error", "late", first.lease)
    assert jobs.get(record.id).status is JobStatus.RUNNING
    assert jobs.succeed(second.record, second.lease, worker="w2:1")
    assert not jobs.succeed(second.record, second.lease)  # one terminal write
    done = jobs.get(record.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert jobs.redis.zcard(LEASES_SET) == 0  # nothing left to take over


def test_a_renewed_lease_is_never_taken_over(jobs):
    record = queued()
    jobs.create(record)
    lease = jobs.start(record.id, "w1:1", 3).lease
    for _ in range(4):
        time.sleep(LEASE_S / 3)
        assert jobs.renew(lease)
    assert jobs.expired_leases(time.time()) == []
    assert not jobs.take_over(lease)


def test_a_takeover_is_refused_for_a_job_that_ended_and_its_lease_is_forgotten(jobs):
    record = queued()
    jobs.create(record)
    lease = jobs.start(record.id, "w1:1", 3).lease
    assert jobs.fail(record, "timeout", "by the parent process")  # no lease: e.g. the hard time limit
    expire(jobs, lease)
    assert not jobs.take_over(lease)
    assert jobs.expired_leases(time.time() + 60) == []


def test_a_lease_the_sets_clock_calls_expired_but_redis_still_holds_is_left_alone(jobs):
    record = queued()
    jobs.create(record)
    lease = jobs.start(record.id, "w1:1", 3).lease
    assert lease in jobs.expired_leases(time.time() + 60)  # another host's clock runs a minute ahead
    assert not jobs.take_over(lease)
    assert jobs.renew(lease)  # still the worker's


def test_video_parts_are_fenced_per_chunk_and_for_the_join(jobs):
    record = queued(MediaKind.VIDEO)
    jobs.create(record)
    late_plan, plan = jobs.start(record.id, "w1:1", 3), jobs.start(record.id, "w2:1", 3)
    assert not jobs.set_video_plan(late_plan.record, {"duration_s": 2.0}, 2, late_plan.lease)
    assert jobs.set_video_plan(plan.record, {"duration_s": 2.0}, 2, plan.lease)
    assert jobs.expired_leases(time.time() + 60) == []  # planning done: its lease ended

    late, current = jobs.begin_part(record.id, "0"), jobs.begin_part(record.id, "0")
    assert (late.fence, current.fence) == (1, 2)
    assert jobs.chunk_done(late, 25, "chunks/late.mkv") == -1
    assert jobs.chunk_done(current, 25, "chunks/current.mkv") == 1
    assert jobs.chunk_done(jobs.begin_part(record.id, "1"), 24, "chunks/one.mkv") == 2
    assert jobs.chunks_done(record.id) == {0: (25, "chunks/current.mkv"), 1: (24, "chunks/one.mkv")}

    late_join, join = jobs.begin_part(record.id, JOIN_PART), jobs.begin_part(record.id, JOIN_PART)
    assert not jobs.succeed(plan.record, late_join)
    assert not jobs.fail(plan.record, "internal_error", "late", late_plan.lease)
    assert jobs.succeed(plan.record, join)
    assert jobs.chunk_done(jobs.begin_part(record.id, "1"), 24, "chunks/after.mkv") == -1  # the job ended


def test_the_keeper_renews_what_it_holds_and_takes_over_what_expired(jobs):
    requeued: list[Lease] = []
    keeper = LeaseKeeper(jobs, lambda lease: requeued.append(lease) or True)
    kept, abandoned = queued(), queued()
    for record in (kept, abandoned):
        jobs.create(record)
    kept_lease = jobs.start(kept.id, "here:1", 3).lease
    abandoned_lease = jobs.start(abandoned.id, "gone:1", 3).lease
    with keeper.hold(kept_lease) as held:
        deadline = time.monotonic() + LEASE_S * 4
        while time.monotonic() < deadline:
            keeper.tick()
            time.sleep(0.05)
        assert requeued == [abandoned_lease]  # once, although every tick looked
        held.check()  # still ours

        jobs.start(kept.id, "elsewhere:1", 3)  # e.g. a duplicate message: a later attempt has the job
        assert keeper.renew_held() == 1
        with pytest.raises(LeaseLost):
            held.check()


def test_a_hard_time_limit_fails_only_an_attempt_of_its_own_node():
    """The parent of a killed pool process fails the job under the current attempt's fence, unless
    another node took the job over meanwhile (its lease ran out while the killed process was stuck)."""
    from dataclasses import replace

    record = replace(queued(), status=JobStatus.RUNNING, worker="node-1:4242", attempts=2)
    assert killed_attempt(record, "node-1", {4243}) == Lease(record.id, RUN_PART, 2)
    assert killed_attempt(record, "node-1", {4242}) is None  # a sibling process took it over
    assert killed_attempt(record, "node-2", set()) is None  # another node took it over
    assert killed_attempt(replace(record, worker=None), "node-1", set()) is None


def test_a_lease_given_back_while_its_renewal_ran_is_not_counted_lost():
    """The attempt ended (its lease gone from Redis) between the beat's snapshot and its renewal: the
    refused renewal is not a loss, and no warning says another worker has the part."""

    class EndingDuringRenewal:
        lease_s = 30.0

        def __init__(self) -> None:
            self.block: object = None

        def renew(self, lease: Lease) -> bool:
            self.block.__exit__(None, None, None)  # the attempt ends meanwhile
            return False

    store = EndingDuringRenewal()
    keeper = LeaseKeeper(store, lambda lease: True)  # type: ignore[arg-type]
    held_lease = Lease("job-1", RUN_PART, 1)
    store.block = keeper.hold(held_lease)
    held = store.block.__enter__()
    assert keeper.renew_held() == 0 and not held.lost.is_set()

    still = keeper.hold(Lease("job-2", RUN_PART, 1))
    taken = still.__enter__()
    store.renew = lambda lease: False  # type: ignore[method-assign]  # refused while still held: a loss
    assert keeper.renew_held() == 1 and taken.lost.is_set()
