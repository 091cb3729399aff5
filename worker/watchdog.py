"""The hard time limit where Celery has none: the threads and solo pools.

Celery enforces ``time_limit`` by killing a prefork pool process and replacing it. In a threads or solo
pool the job runs in the node's own process, and nothing can stop a thread stuck in native code (a model
that never returns, a decoder in a loop). The soft limit is still checked between the pipeline's stages
(``JobRunner``); past the hard limit this watchdog records the job as timed out and ends the whole process,
as a prefork pool would end the one process. The process's other jobs lose nothing: their leases run out
and other workers take their parts over, and their unacknowledged messages are delivered again; the
restart policy of the deployment (compose ``restart``, Kubernetes, systemd) starts the node again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("backdrop.worker")
CHECK_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Running:
    task_name: str
    job_id: str
    started: float
    limit_s: float


class HardLimitWatchdog:
    """``on_expired(running)`` records the job's failure; then ``end_process()`` (SIGKILL to this process:
    a stuck thread cannot be asked to stop, and a clean shutdown would wait for it)."""

    def __init__(
        self,
        on_expired: Callable[[Running], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        end_process: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGKILL),
        interval_s: float | None = CHECK_INTERVAL_S,
    ) -> None:
        """``interval_s``: how often its thread looks (None: no thread; the caller calls :meth:`check`)."""
        self._on_expired = on_expired
        self._clock = clock
        self._end_process = end_process
        self._running: dict[str, Running] = {}
        self._lock = threading.Lock()
        self._interval_s = interval_s
        self._thread: threading.Thread | None = None

    def started(self, task_id: str, task_name: str, job_id: str, limit_s: float) -> None:
        with self._lock:
            self._running[task_id] = Running(task_name, job_id, self._clock(), limit_s)
            if self._thread is None and self._interval_s is not None:
                self._thread = threading.Thread(target=self._run, name="hard-limit", daemon=True)
                self._thread.start()

    def finished(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def check(self) -> bool:
        """One look: True (after ending the process, or trying to) when a task ran past its limit."""
        now = self._clock()
        with self._lock:
            expired = [r for r in self._running.values() if now - r.started > r.limit_s]
        if not expired:
            return False
        for running in expired:
            log.error(
                "job %s: %s ran past the %.0f s hard limit; this process ends (its other jobs are taken over)",
                running.job_id,
                running.task_name,
                running.limit_s,
            )
            try:
                self._on_expired(running)
            except Exception:  # the process must end all the same
                log.exception("job %s: the timeout could not be recorded", running.job_id)
        for handler in logging.getLogger().handlers:  # the lines above: nothing runs after the kill
            handler.flush()
        self._end_process()
        return True

    def _run(self) -> None:
        while not self.check():
            time.sleep(self._interval_s or CHECK_INTERVAL_S)
