"""Being told when a job ends: one Redis subscription per process, shared by every waiting request.

Every terminal transition publishes the job's id on ``ENDED_CHANNEL`` from the same Lua script that
writes the state (``backdrop.service.jobs``). A :class:`JobEndWaiter` holds one subscriber connection
and a thread that wakes the requests waiting for that id: a request that waits costs a thread parked on
an event, not a Redis connection and not a loop of status reads. A waiter registers before it reads the
job's status, so an end between the two is never missed; after the subscription is (re)established,
every waiter reads the status once more (messages published while it was down are gone).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import redis

from backdrop.service.jobs import ENDED_CHANNEL
from backdrop.service.redis_client import connect_redis
from backdrop.settings import Settings

log = logging.getLogger("backdrop.events")
# Between two attempts to subscribe again after the connection dropped.
RESUBSCRIBE_DELAY_S = 0.5
# The subscriber thread looks up from its socket this often (for the connection's health check).
HEALTH_CHECK_EVERY_S = 1.0
# A subscription PINGs its server this often while it waits, and counts as lost once its PINGs went
# unanswered this long: a server whose host vanished (or froze) sends no reset, and TCP alone would take
# hours to notice, leaving a subscription on a dead primary after a failover.
PING_EVERY_S = 2
SILENT_AFTER_S = 6.0


class EndsSubscription:
    """A subscription to ``channel`` (``ENDED_CHANNEL``: every job's end; ``WEBHOOK_CHANNEL``: the ends of
    jobs with a webhook) on a connection of its own (no read timeout: it is quiet between jobs) that
    notices a server gone silent. Call :meth:`next_end` at least every few seconds."""

    def __init__(self, settings: Settings, channel: str = ENDED_CHANNEL) -> None:
        # Held for the subscription's life: a client that is garbage-collected closes its pool, and with it
        # the subscriber's connection.
        self._client = connect_redis(
            settings,
            decode_responses=False,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=PING_EVERY_S,
        )
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._answered_at = time.monotonic()
        try:
            self._pubsub.subscribe(channel)
        except BaseException:
            self.close()
            raise

    def next_end(self, timeout_s: float) -> str | None:
        """The id of a job that ended, within ``timeout_s`` (None: none did). Raises ``redis.ConnectionError``
        when the server stopped answering: close this one and subscribe again."""
        message = self._pubsub.get_message(timeout=timeout_s)
        now = time.monotonic()
        if self._pubsub.health_check_response_counter == 0:  # every PING answered
            self._answered_at = now
        elif now - self._answered_at > SILENT_AFTER_S:
            raise redis.ConnectionError(f"the job-end subscription's server has not answered for {SILENT_AFTER_S:g} s")
        if message is None or message.get("type") != "message":
            return None
        data = message["data"]
        return data.decode() if isinstance(data, bytes) else str(data)

    def __enter__(self) -> EndsSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # its connection may be broken already
            self._pubsub.close()
        with contextlib.suppress(Exception):
            self._client.close()


class _Waiting:
    """One waiting request's event (set: read the job's status again)."""

    def __init__(self) -> None:
        self.event = threading.Event()


class JobEndWaiter:
    """Waits for jobs to end (see the module's docstring). One per process: the thread starts on first
    use, so a forking server (gunicorn) gets one per worker process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._waiting: dict[str, list[_Waiting]] = {}
        self._thread: threading.Thread | None = None

    def wait(
        self,
        job_id: str,
        timeout_s: float,
        finished: Callable[[], bool],
        *,
        slice_s: float | None = None,
        still_wanted: Callable[[], bool] | None = None,
    ) -> bool:
        """Wait up to ``timeout_s`` for ``job_id`` to end; ``finished()`` reads whether it has (called
        at the start, when told, and after a resubscription). With ``still_wanted``, it is asked every
        ``slice_s`` seconds whether to go on waiting (a client that went away). Returns whether the job
        ended in time."""
        self._ensure_listening()
        waiting = _Waiting()
        with self._lock:
            self._waiting.setdefault(job_id, []).append(waiting)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if finished():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if still_wanted is not None and not still_wanted():
                    return False
                waiting.event.wait(min(left, slice_s) if slice_s else left)
                waiting.event.clear()
        finally:
            with self._lock:
                waiters = self._waiting.get(job_id, [])
                if waiting in waiters:
                    waiters.remove(waiting)
                if not waiters:
                    self._waiting.pop(job_id, None)

    @property
    def waiting(self) -> int:
        """How many requests wait now (all jobs)."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiting.values())

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="job-end-waiter", daemon=True)
                self._thread.start()

    def _wake(self, job_id: str | None) -> None:
        """Wake the waiters of ``job_id`` (None: everyone, to read their job's status again)."""
        with self._lock:
            groups = list(self._waiting.values()) if job_id is None else [self._waiting.get(job_id, [])]
            for waiters in groups:
                for waiting in waiters:
                    waiting.event.set()

    def _listen(self) -> None:
        while True:
            try:
                with EndsSubscription(self._settings) as subscription:
                    self._wake(None)  # anything that ended while we were not listening
                    while True:
                        job_id = subscription.next_end(HEALTH_CHECK_EVERY_S)
                        if job_id is not None:
                            self._wake(job_id)
            except Exception as exc:  # the thread must outlive any failure of the connection
                log.warning("job-end subscription lost (%s); subscribing again", exc)
                time.sleep(RESUBSCRIBE_DELAY_S)
