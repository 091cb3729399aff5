"""The hard time limit of the threads and solo pools (``worker.watchdog``), with a clock of its own."""

from __future__ import annotations

from worker.watchdog import HardLimitWatchdog, Running


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watchdog(clock: Clock, expired: list[Running], ended: list[bool], fail: bool = False) -> HardLimitWatchdog:
    def on_expired(running: Running) -> None:
        expired.append(running)
        if fail:
            raise RuntimeError("redis is gone")

    return HardLimitWatchdog(on_expired, clock=clock, end_process=lambda: ended.append(True), interval_s=None)


def test_a_task_within_its_limit_is_left_alone_and_forgotten_when_it_ends():
    clock, expired, ended = Clock(), [], []
    dog = watchdog(clock, expired, ended)
    dog.started("t1", "backdrop.process_job", "job-1", 9)
    clock.now += 9
    assert dog.check() is False
    dog.finished("t1")
    clock.now += 100
    assert dog.check() is False and expired == [] and ended == []


def test_past_the_limit_the_job_is_reported_and_the_process_ended_once_for_all():
    clock, expired, ended = Clock(), [], []
    dog = watchdog(clock, expired, ended)
    dog.started("t1", "backdrop.process_job", "job-1", 9)
    clock.now += 5
    dog.started("t2", "backdrop.render_chunk", "job-2", 60)  # its own, longer limit
    clock.now += 4.5
    assert dog.check() is True
    assert [(r.job_id, r.limit_s) for r in expired] == [("job-1", 9)] and ended == [True]


def test_the_process_ends_even_when_the_failure_cannot_be_recorded():
    clock, expired, ended = Clock(), [], []
    dog = watchdog(clock, expired, ended, fail=True)
    dog.started("t1", "backdrop.process_job", "job-1", 9)
    clock.now += 10
    assert dog.check() is True and len(expired) == 1 and ended == [True]
