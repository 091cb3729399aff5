"""Webhooks: signatures a Standard Webhooks receiver verifies (the standardwebhooks package), which URLs may
be called, the retry schedule, and the deliverer's rules on a small in-memory job store; the real path
(workers, Redis, a receiver that fails its first attempts) is in tests/test_service_waits.py."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from backdrop.params import JobParams
from backdrop.service.jobs import JobRecord, JobStatus
from backdrop.service.webhooks import CallbackRefused, Target, resolve_callback, signature
from backdrop.settings import Settings, SettingsError
from tests.conftest import WEBHOOK_SECRET
from worker.webhooks import MAX_RETRY_DELAY_S, WebhookDeliverer, retry_delay

OLD_SECRET = "whsec_" + "b2xkLXNlY3JldC1rZXktMTIzNDU2Nzg="


def test_signatures_verify_with_the_standard_library_and_survive_a_rotation():
    body = b'{"id":"abc","status":"succeeded"}'
    now = int(time.time())
    header = signature((WEBHOOK_SECRET, OLD_SECRET), "msg_abc", now, body)
    assert header.count("v1,") == 2
    headers = {"webhook-id": "msg_abc", "webhook-timestamp": str(now), "webhook-signature": header}
    for secret in (WEBHOOK_SECRET, OLD_SECRET):  # a receiver knowing either secret accepts it
        assert Webhook(secret).verify(body, headers) == {"id": "abc", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(WEBHOOK_SECRET).verify(body + b" ", headers)


def test_secrets_must_be_standard_webhooks_secrets():
    with pytest.raises(SettingsError):
        Settings.from_env({"BACKDROP_WEBHOOK_SECRETS": "not-a-secret"})
    with pytest.raises(SettingsError):
        Settings.from_env({"BACKDROP_WEBHOOK_SECRETS": "whsec_c2hvcnQ="})  # 5 bytes
    assert Settings.from_env({"BACKDROP_WEBHOOK_SECRETS": f"{WEBHOOK_SECRET}, {OLD_SECRET}"}).webhook_secrets == (
        WEBHOOK_SECRET,
        OLD_SECRET,
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "http"),
        ("http://user:pw@127.0.0.1/hook", "credentials"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.9/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("http://[fd00:ec2::254]/hook", "metadata"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://127.0.0.1:99999/hook", "port"),
        ("http://no-such-host.invalid/hook", "resolve"),
    ],
)
def test_callbacks_to_internal_addresses_are_refused(url, reason):
    with pytest.raises(CallbackRefused, match=reason):
        resolve_callback(url)


def test_a_public_address_is_called_at_the_address_checked_and_private_ones_when_allowed():
    target = resolve_callback("https://93.184.216.34:8443/hooks/backdrop?token=1")
    assert target == Target("https", "93.184.216.34", 8443, "/hooks/backdrop?token=1", "93.184.216.34")
    loopback = Settings.from_env({"BACKDROP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1"}).webhook_allowed_networks
    assert resolve_callback("http://127.0.0.1:9000/x", allowed_networks=loopback).address == "127.0.0.1"
    assert resolve_callback("http://[::1]:9000/x", allowed_networks=loopback).address == "::1"


def test_allowed_networks_open_only_what_they_contain():
    """A receiver on a deployment's private network is allowed by listing that network; the metadata
    service, other private ranges and loopback stay refused unless a listed network contains them."""
    allowed = Settings.from_env({"BACKDROP_WEBHOOK_ALLOWED_NETWORKS": " 10.20.0.0/16 , fd12:3456::/48"})
    networks = allowed.webhook_allowed_networks
    assert resolve_callback("http://10.20.3.4:8000/hook", allowed_networks=networks).address == "10.20.3.4"
    assert resolve_callback("http://[fd12:3456::7]/hook", allowed_networks=networks).address == "fd12:3456::7"
    assert resolve_callback("http://[::ffff:10.20.0.9]/hook", allowed_networks=networks).address == "::ffff:a14:9"
    for url, reason in (
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data", "metadata"),
        ("http://100.100.100.200/latest/meta-data", "metadata"),
        ("http://10.21.0.1/hook", "private"),
        ("http://127.0.0.1/hook", "loopback"),
    ):
        with pytest.raises(CallbackRefused, match=reason):
            resolve_callback(url, allowed_networks=networks)
    # Listed explicitly, a link-local receiver is the operator's choice.
    link_local = Settings.from_env({"BACKDROP_WEBHOOK_ALLOWED_NETWORKS": "169.254.10.0/24"}).webhook_allowed_networks
    assert resolve_callback("http://169.254.10.5/hook", allowed_networks=link_local).address == "169.254.10.5"
    with pytest.raises(CallbackRefused, match="link-local"):
        resolve_callback("http://169.254.169.254/", allowed_networks=link_local)


@pytest.mark.parametrize("value", ["0.0.0.0/0", "::/0", "10.0.0.0/8,0.0.0.0/0", "10.0.0.300/8", "not-a-network"])
def test_allowed_networks_must_be_networks_and_not_everything(value):
    with pytest.raises(SettingsError, match="BACKDROP_WEBHOOK_ALLOWED_NETWORKS"):
        Settings.from_env({"BACKDROP_WEBHOOK_ALLOWED_NETWORKS": value})


def test_the_removed_switch_is_refused_with_what_replaces_it():
    with pytest.raises(SettingsError, match="BACKDROP_WEBHOOK_ALLOWED_NETWORKS"):
        Settings.from_env({"BACKDROP_WEBHOOK_ALLOW_PRIVATE": "true"})


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap():
    rng = random.Random(1)
    delays = [retry_delay(n, rng) for n in range(1, 14)]
    assert 0.75 <= delays[0] <= 1.25 and 1.5 <= delays[1] <= 2.5 and 3 <= delays[2] <= 5
    assert all(d <= MAX_RETRY_DELAY_S * 1.25 for d in delays) and delays[-1] >= MAX_RETRY_DELAY_S * 0.75
    assert len({round(d, 6) for d in delays[-3:]}) == 3  # jitter: equal attempts do not line up


class MemoryJobs:
    """The part of JobStore a delivery uses, in memory."""

    def __init__(self, record: JobRecord) -> None:
        self.record, self.lock, self.due = record, None, {record.id: 0.0}

    def lock_webhook(self, job_id: str, token: str, ttl_s: float, now: float) -> bool:
        if self.lock is not None or job_id not in self.due or self.due[job_id] > now:
            return False
        self.lock = token
        return True

    def get(self, job_id: str) -> JobRecord | None:
        return self.record

    def record_webhook_attempt(self, job_id: str, token: str, state: dict, next_due: float | None) -> bool:
        assert token == self.lock
        self.record = replace(self.record, webhook=state)
        if next_due is None:
            self.due.pop(job_id, None)
        else:
            self.due[job_id] = next_due
        self.lock = None
        return True

    def progress(self, job_id: str) -> int:
        return 0


def deliverer_with(statuses: list[int | Exception], settings: Settings, clock: list[float]):
    record = JobRecord(
        id="a" * 32,
        status=JobStatus.FAILED,
        params=JobParams(),
        created_at=0.0,
        input_key="inputs/x",
        callback_url="http://127.0.0.1:9/hook",
        error={"code": "corrupt_image", "message": "broken"},
    )
    jobs = MemoryJobs(record)
    sent: list[tuple[bytes, dict]] = []

    def send(target: Target, body: bytes, headers: dict, timeout_s: float) -> int:
        sent.append((body, headers))
        outcome = statuses.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    deliverer = WebhookDeliverer(settings, jobs, None, send=send, clock=lambda: clock[0], rng=random.Random(0))  # type: ignore[arg-type]
    return deliverer, jobs, sent


SETTINGS = replace(
    Settings.from_env({"BACKDROP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}),
    webhook_secrets=(WEBHOOK_SECRET,),
    webhook_retry_for_s=60,
)


def test_failed_attempts_are_retried_until_one_succeeds_and_then_never_again():
    clock = [time.time() - 1200]  # the last attempt's timestamp is close to now: receivers check it
    patient = replace(SETTINGS, webhook_retry_for_s=3600)
    deliverer, jobs, sent = deliverer_with([503, ConnectionRefusedError(111, "refused"), 429, 204], patient, clock)
    outcomes = []
    for _ in range(6):
        outcomes.append(deliverer.deliver(jobs.record.id))
        clock[0] += 400  # past any backoff
    assert outcomes[:4] == ["retry", "retry", "retry", "delivered"] and outcomes[4:] == ["busy", "busy"]
    state = jobs.record.webhook
    assert state["state"] == "delivered" and state["attempts"] == 4 and state["last_status"] == 204
    # Every attempt is the same message (one id), signed, and carries the job's JSON.
    assert {headers["webhook-id"] for _, headers in sent} == {"msg_" + "a" * 32}
    body, headers = sent[-1]
    assert Webhook(WEBHOOK_SECRET).verify(body, headers)["error"]["code"] == "corrupt_image"
    assert json.loads(body)["status"] == "failed"


def test_a_client_error_stops_the_delivery_and_the_retry_window_ends_it_too():
    clock = [1000.0]
    deliverer, jobs, _ = deliverer_with([404], SETTINGS, clock)
    assert deliverer.deliver(jobs.record.id) == "failed" and jobs.record.webhook["last_status"] == 404
    deliverer, jobs, sent = deliverer_with([500] * 10, SETTINGS, clock)
    outcomes = []
    for _ in range(10):
        outcomes.append(deliverer.deliver(jobs.record.id))
        clock[0] += 25
    assert outcomes[-1] in ("failed", "busy") and "failed" in outcomes and jobs.record.webhook["state"] == "failed"
    assert len(sent) < 10  # attempts stop once the window (60 s here) is over


def test_a_retry_waits_for_its_time():
    clock = [1000.0]
    deliverer, jobs, sent = deliverer_with([500, 200], SETTINGS, clock)
    assert deliverer.deliver(jobs.record.id) == "retry"
    assert deliverer.deliver(jobs.record.id) == "busy" and len(sent) == 1  # not due yet
    clock[0] = jobs.record.webhook["next_attempt_at"]
    assert deliverer.deliver(jobs.record.id) == "delivered"
