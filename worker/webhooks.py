"""Webhook delivery: when a job with a ``callback_url`` ends, POST its JSON there, signed (Standard
Webhooks, ``backdrop.service.webhooks``), at least once.

The job's end puts it in the outbox (a sorted set, written by the same Lua script as the terminal state)
and publishes its id on the webhook channel (a job without a webhook wakes no one there). Every worker
process runs a :class:`WebhookDispatcher` thread that hears that at once and delivers whatever is due in
the outbox; one attempt at a time per job (a lock), whichever process is first. A failed attempt
(timeout, connection error, 5xx, 408 or 429) is tried again after an exponential backoff with jitter
(1 s doubling to 5 min), for ``BACKDROP_WEBHOOK_RETRY_FOR_S`` after the first; another 4xx, or an
address now refused, ends it. Redirects are never followed. The state of the delivery (attempts, last
status, delivered_at) is kept in the job's record and counted in metrics.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import urllib3

from backdrop.service.events import EndsSubscription
from backdrop.service.job_view import job_view
from backdrop.service.jobs import WEBHOOK_CHANNEL, JobStore
from backdrop.service.observability import WEBHOOK_DELIVERIES
from backdrop.service.storage import Storage
from backdrop.service.webhooks import CallbackRefused, Target, resolve_callback, signature
from backdrop.settings import Settings

log = logging.getLogger("backdrop.webhooks")
FIRST_RETRY_S = 1.0
MAX_RETRY_DELAY_S = 300.0
JITTER = 0.25  # each delay is spread by this share either way
# Statuses worth another attempt besides 5xx: timeout and too many requests.
RETRY_STATUSES = {408, 429}
USER_AGENT = "Backdrop-Webhooks/1"
RESTART_DELAY_S = 1.0
# The dispatcher looks at the outbox at least this often when nothing ends and no retry is due (its
# subscription's health check needs the turn anyway).
IDLE_WAKE_S = 5.0


def retry_delay(attempts: int, rng: random.Random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... up to 300, each
    spread by a quarter either way."""
    delay = min(MAX_RETRY_DELAY_S, FIRST_RETRY_S * 2 ** (attempts - 1))
    return delay * rng.uniform(1 - JITTER, 1 + JITTER)


def post(target: Target, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST ``body`` to ``target``'s checked address (the Host header and TLS name are the URL's own);
    returns the status. No redirect is followed and nothing is retried here."""
    timeout = urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s)
    if target.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            target.address, target.port, timeout=timeout, server_hostname=target.host, assert_hostname=target.host
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.address, target.port, timeout=timeout)
    host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": host},
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=True,
        )
        return int(response.status)
    finally:
        pool.close()


class WebhookDeliverer:
    """One delivery attempt at a time for a job (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        storage: Storage,
        *,
        send: Callable[[Target, bytes, dict[str, str], float], int] = post,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings, self.jobs, self.storage = settings, jobs, storage
        self._send, self._clock, self._rng = send, clock, rng or random.Random()

    def deliver(self, job_id: str) -> str:
        """One attempt to deliver ``job_id``'s webhook; returns the outcome (``delivered``, ``retry``,
        ``failed``, or ``busy``: another process is on it)."""
        token = uuid.uuid4().hex
        if not self.jobs.lock_webhook(job_id, token, self.settings.webhook_timeout_s + 30, self._clock()):
            return "busy"  # another process is on it, or did it a moment ago
        record = self.jobs.get(job_id)
        if record is None or record.callback_url is None:
            self.jobs.record_webhook_attempt(job_id, token, {"state": "failed", "last_error": "the job expired"}, None)
            return "failed"
        now = self._clock()
        state: dict[str, Any] = dict(record.webhook or {})
        if state.get("state") in ("delivered", "failed"):
            self.jobs.record_webhook_attempt(job_id, token, state, None)
            return str(state["state"])
        state.setdefault("message_id", f"msg_{job_id}")
        state.setdefault("first_attempt_at", now)
        state["attempts"] = int(state.get("attempts", 0)) + 1
        outcome, status, error = self._attempt(record, state)
        state.update(last_status=status, last_error=error, last_attempt_at=now)
        next_due = None
        if outcome == "delivered":
            state.update(state="delivered", delivered_at=self._clock(), next_attempt_at=None)
        elif outcome == "retry" and now - float(state["first_attempt_at"]) < self.settings.webhook_retry_for_s:
            next_due = now + retry_delay(state["attempts"], self._rng)
            state.update(state="retrying", next_attempt_at=next_due)
        else:
            outcome = "failed"
            state.update(state="failed", next_attempt_at=None)
        self.jobs.record_webhook_attempt(job_id, token, state, next_due)
        WEBHOOK_DELIVERIES.labels(outcome).inc()
        log.info("webhook for job %s: %s (status %s, attempt %d)", job_id, outcome, status, state["attempts"])
        return outcome

    def _attempt(self, record: Any, state: dict[str, Any]) -> tuple[str, int | None, str | None]:
        """(outcome, HTTP status, error) of one POST."""
        try:
            target = resolve_callback(record.callback_url, allowed_networks=self.settings.webhook_allowed_networks)
        except CallbackRefused as exc:
            return "failed", None, exc.message
        view = job_view(record, self.settings, self.storage, self.jobs)
        view["webhook"] = {k: state.get(k) for k in ("state", "attempts", "first_attempt_at") if k in state}
        body = json.dumps(view, separators=(",", ":")).encode()
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": state["message_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self.settings.webhook_secrets, state["message_id"], timestamp, body),
        }
        try:
            status = self._send(target, body, headers, self.settings.webhook_timeout_s)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return "retry", None, f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= status < 300:
            return "delivered", status, None
        if status >= 500 or status in RETRY_STATUSES:
            return "retry", status, f"HTTP {status}"
        return "failed", status, f"HTTP {status}: not retried (a 4xx other than 408 and 429)"


class WebhookDispatcher:
    """A thread per worker process that delivers due webhooks: told by the job-end channel at once, and
    woken when a retry comes due (see the module's docstring)."""

    def __init__(self, deliverer: WebhookDeliverer) -> None:
        self.deliverer = deliverer
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def deliver_due(self) -> int:
        """Attempt every delivery now due; returns how many were attempted by this process."""
        attempted = 0
        for job_id in self.deliverer.jobs.webhooks_due(time.time()):
            try:
                if self.deliverer.deliver(job_id) != "busy":
                    attempted += 1
            except Exception:  # one delivery's failure (Redis gone a moment) must not stop the thread
                log.exception("webhook for job %s: attempt failed", job_id)
        return attempted

    def _run(self) -> None:
        while True:
            try:
                with EndsSubscription(self.deliverer.settings, WEBHOOK_CHANNEL) as subscription:
                    while True:
                        self.deliver_due()
                        due = self.deliverer.jobs.next_webhook_due()
                        wait = IDLE_WAKE_S if due is None else min(IDLE_WAKE_S, max(0.0, due - time.time()))
                        subscription.next_end(wait)  # a job with a webhook ended, or a retry is due
            except Exception as exc:
                log.warning("webhook dispatcher: %s; starting again", exc)
                time.sleep(RESTART_DELAY_S)
