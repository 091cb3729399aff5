"""Leases: how a job (or a video's part) whose worker was cut off or vanished gets done by another.

Every attempt holds a lease in Redis (``JobStore.start`` for a job, ``JobStore.begin_part`` for a video's
chunk or join) that expires after ``BACKDROP_LEASE_S``. One thread in each worker process:

- renews the leases its attempts hold, every third of a lease (a heartbeat that keeps beating while the
  pipeline runs in native code); a renewal refused because a later attempt has the part marks the lease
  lost, and the attempt stops without storing anything;
- looks every second for leases that ran out, anyone's, and queues each such part again, once
  (``JobStore.take_over``): the next attempt's number fences the late one out of every write that counts.

The visibility timeout stays as the backstop for what this misses (e.g. the takeover's message was lost
with a Redis crash): the unacknowledged message comes back then, and ``JobStore.start`` decides.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from backdrop.service.jobs import RUN_PART, BrokerUnavailable, JobRecord, JobStore, Lease
from backdrop.service.observability import JOBS_TAKEN_OVER

log = logging.getLogger("backdrop.worker")
SCAN_INTERVAL_S = 1.0


class LeaseLost(Exception):
    """A later attempt has this part now: stop, and leave nothing behind."""


class HeldLease:
    """One attempt's lease while it works; ``lost`` is set once a renewal is refused."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost = threading.Event()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"{self.lease.member}: a later attempt has this part")


class LeaseKeeper:
    """The lease thread of one worker process (see the module's docstring). ``requeue(lease)`` sends the
    message that runs an expired part again."""

    def __init__(
        self,
        jobs: JobStore,
        requeue: Callable[[Lease], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self._requeue = requeue
        self._clock = clock
        self._wall_clock = wall_clock
        self._held: dict[str, HeldLease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_renewal = 0.0

    @property
    def renew_every_s(self) -> float:
        return self.jobs.lease_s / 3

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
            self._thread.start()

    @contextmanager
    def hold(self, lease: Lease) -> Iterator[HeldLease]:
        """Keep ``lease`` renewed while the block runs."""
        held = HeldLease(lease)
        with self._lock:
            self._held[lease.member] = held
        try:
            yield held
        finally:
            with self._lock:
                self._held.pop(lease.member, None)

    def held(self, job_id: str, part: str = RUN_PART) -> Lease | None:
        """The lease an attempt in this process holds on ``job_id``'s ``part`` now, if any."""
        with self._lock:
            found = next((h for h in self._held.values() if (h.lease.job_id, h.lease.part) == (job_id, part)), None)
        return found.lease if found else None

    def renew_held(self) -> int:
        """One heartbeat for every lease held here; returns how many were lost (a later attempt has them).
        A Redis that cannot be reached is not a loss: the renewal is tried again at the next beat, and the
        fence decides in the end."""
        with self._lock:
            held = list(self._held.values())
        lost = 0
        for one in held:
            try:
                if not self.jobs.renew(one.lease) and self._still_held(one):
                    log.warning("lease %s lost: another worker has this part now", one.lease.member)
                    one.lost.set()
                    lost += 1
            except BrokerUnavailable as exc:
                log.warning("lease %s not renewed: %s", one.lease.member, exc.message)
        return lost

    def _still_held(self, one: HeldLease) -> bool:
        """False once its attempt has ended (it gave its lease back while this beat ran: not a loss)."""
        with self._lock:
            return self._held.get(one.lease.member) is one

    def take_over_expired(self) -> int:
        """Queue again every part whose lease ran out (whoever held it); returns how many this process
        took over."""
        taken = 0
        for lease in self.jobs.expired_leases(self._wall_clock()):
            if self.jobs.take_over(lease) and self._requeue(lease):
                log.warning("lease %s expired: its part is queued again", lease.member)
                JOBS_TAKEN_OVER.labels("job" if lease.part == RUN_PART else "video_part").inc()
                taken += 1
        return taken

    def tick(self) -> None:
        """What the thread does each second: renew when due, then look for expired leases."""
        now = self._clock()
        if now >= self._next_renewal:
            self._next_renewal = now + self.renew_every_s
            self.renew_held()
        self.take_over_expired()

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except BrokerUnavailable as exc:
                log.warning("leases: %s", exc.message)
            except Exception:  # the thread must outlive any one failure
                log.exception("leases: unexpected failure")
            time.sleep(min(SCAN_INTERVAL_S, self.renew_every_s))


def killed_attempt(record: JobRecord, hostname: str, busy_pids: Collection[int]) -> Lease | None:
    """The job's current attempt, when it is the one the hard time limit is killing: it runs on this node
    (``hostname``) and not in one of the other pool processes busy with a task (``busy_pids``). None when
    another process holds the job now: it was taken over while the killed one was stuck, and its outcome
    is its own. (Celery runs the failure hook before the kill, and without the process id.)"""
    host, _, pid = (record.worker or "").rpartition(":")
    if host != hostname or (pid.isdigit() and int(pid) in busy_pids):
        return None
    return Lease(record.id, RUN_PART, record.attempts)
