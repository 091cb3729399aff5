"""Across hosts: the service's parts on hosts of their own (``harness.hosts``), networks cut and
healed, hosts killed or gone. Each test ends with the ledger: every accepted job ended once, lost 0,
duplicate terminal writes 0, and every result object is the one its job links to.

Needs root (network namespaces); skipped elsewhere with the reason, but CI runs it (BACKDROP_REQUIRE_HOSTS).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import av
import pytest
import requests

from backdrop.service.jobs import ATTEMPTS_SUFFIX, KEY_PREFIX, JobRecord, JobStatus
from harness.hosts import BACK, HostedService, TestHosts, unavailable
from harness.ledger import audit
from tests import videos
from tests.test_faults import with_fault
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
LEASE_S = 5
HOSTS_ENV = {
    "BACKDROP_THREADS": "1",
    "BACKDROP_FAULT_INJECTION": "true",
    "BACKDROP_LEASE_S": str(LEASE_S),
    "BACKDROP_VIDEO_CHUNK_SECONDS": "1",
}


def require_hosts() -> None:
    reason = unavailable()
    if reason:
        if os.environ.get("BACKDROP_REQUIRE_HOSTS"):
            pytest.fail(f"BACKDROP_REQUIRE_HOSTS is set but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> HostedService:
    require_hosts()
    with TestHosts() as hosts:
        hosted = HostedService(hosts, tmp_path_factory.mktemp("hosts"), {**os.environ, **HOSTS_ENV})
        hosted.start()
        yield hosted


def post(service: HostedService, files: dict, **fields: str) -> requests.Response:
    """A request from the client host."""
    return service.hosts.call(
        "client", requests.post, f"{service.api_url}/v1/jobs", files=files, data=fields, timeout=60
    )


def accept(service: HostedService, image: bytes, **fields: str) -> str:
    response = post(service, {"image": ("p.jpg", image)}, **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def host_of(service: HostedService, record: JobRecord) -> str | None:
    """Which host's process recorded ``record`` (its worker is "hostname:pid")."""
    pid = int((record.worker or ":0").rsplit(":", 1)[1])
    for name, host in service.hosts.hosts.items():
        if pid in host.pids():
            return name
    return None


def ended(service: HostedService, ids: list[str], timeout_s: float) -> list[JobRecord]:
    jobs = service.jobs()

    def all_ended() -> list[JobRecord] | None:
        records = jobs.get_many(ids)
        return records if all(r is not None and r.status.finished for r in records) else None  # type: ignore[return-value]

    return wait_for(all_ended, timeout_s, f"{len(ids)} jobs to end")


def assert_ledger(service: HostedService, ids: list[str]) -> dict:
    report = audit(service.jobs(), service.storage(), ids)
    print("ledger:", json.dumps(report))
    assert report["balanced"], report
    assert report["lost"] == report["duplicate_terminal_writes"] == report["wrong_result_objects"] == 0
    return report


def running_on(service: HostedService, ids: list[str], host: str) -> JobRecord | None:
    for record in service.jobs().get_many(ids):
        if record is not None and record.status is JobStatus.RUNNING and host_of(service, record) == host:
            return record
    return None


def test_a_worker_cut_off_for_90_s_loses_its_job_to_the_other_and_rejoins(service, astronaut_jpeg):
    hosts, jobs = service.hosts, service.jobs()
    processing_s = 4
    ids = [accept(service, with_fault(astronaut_jpeg, "slow", processing_s)) for _ in range(2)]
    held = wait_for(lambda: running_on(service, ids, "worker-1"), 30, "a job running on worker-1")
    wait_for(lambda: running_on(service, ids, "worker-2"), 30, "the other job running on worker-2")
    hosts.cut("worker-1")
    cut_at = time.time()
    try:
        record = wait_for(lambda: (r := jobs.get(held.id)) and r.status.finished and r, LEASE_S + 60, "the takeover")
        recovered_s = record.finished_at - cut_at
        print(f"taken over and finished {recovered_s:.1f} s after the cut (lease {LEASE_S} s, job ~{processing_s} s)")
        assert record.status is JobStatus.SUCCEEDED, record.error
        assert host_of(service, record) == "worker-2" and record.attempts == 2
        # Well before the old recovery path (the visibility timeout, an hour by default).
        assert recovered_s < LEASE_S + 2 * processing_s + 15
        ended(service, ids, 30)
        time.sleep(max(0.0, cut_at + 90 - time.time()))
    finally:
        hosts.heal("worker-1")
    assert jobs.get(held.id) == record  # the cut worker, back, changed nothing

    # worker-1 rejoins (Celery reconnects on its own) and takes work again.
    later: list[str] = []

    def worker_1_took_one() -> bool:
        later.append(accept(service, with_fault(astronaut_jpeg, "slow", 0.5)))
        time.sleep(1.0)
        return any(r and r.status.finished and host_of(service, r) == "worker-1" for r in jobs.get_many(later))

    wait_for(worker_1_took_one, 90, "worker-1 to take a job after healing")
    ended(service, later, 60)
    assert_ledger(service, ids + later)


def test_the_api_cut_off_from_the_store_answers_503_then_recovers_by_itself(service, astronaut_jpeg):
    before = accept(service, astronaut_jpeg)
    service.hosts.cut("api", BACK)
    try:
        started = time.monotonic()
        refused = post(service, {"image": ("p.jpg", astronaut_jpeg)})
        answered_s = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] and refused.json()["error"]["code"] == "broker_unavailable"
        ready = service.hosts.call("client", requests.get, f"{service.api_url}/readyz", timeout=30)
        assert ready.status_code == 503
        print(f"503 answered in {answered_s:.1f} s while cut off")
    finally:
        service.hosts.heal("api", BACK)
    after: list[str] = []

    def accepted_again() -> bool:
        response = post(service, {"image": ("p.jpg", astronaut_jpeg)})
        if response.status_code == 202:
            after.append(response.json()["id"])
        return bool(after)

    wait_for(accepted_again, 30, "the API to accept jobs again")
    ended(service, [before, *after], 60)
    assert_ledger(service, [before, *after])


def test_the_store_killed_hard_and_restarted_from_its_aof_loses_no_job(service, astronaut_jpeg):
    ids = [accept(service, with_fault(astronaut_jpeg, "slow", 1)) for _ in range(8)]
    wait_for(lambda: running_on(service, ids, "worker-1") or running_on(service, ids, "worker-2"), 30, "a job running")
    service.kill_store()
    time.sleep(2)
    service.start_store()
    records = ended(service, ids, 180)
    assert all(r.status is JobStatus.SUCCEEDED for r in records), [r.error for r in records]
    assert_ledger(service, ids)


def test_a_video_whose_chunk_worker_is_cut_off_has_the_chunk_rendered_elsewhere(service, tmp_path):
    clip = videos.write_video(tmp_path / "clip.mp4", frames=120, width=320, height=240, audio_seconds=4.0)
    with clip.open("rb") as handle:
        response = post(service, {"video": ("clip.mp4", handle.read())}, effect="blur")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    worker_1 = service.processes["worker-1"]
    wait_for(lambda: job_id in worker_1.log_text() and "rendering" in worker_1.log_text(), 60, "a chunk on worker-1")
    service.hosts.cut("worker-1")
    try:
        time.sleep(LEASE_S + 10)  # its lease runs out; the chunk is rendered again on worker-2
    finally:
        service.hosts.heal("worker-1")  # back within its retry budget: it tries to record the chunk, fenced
    (record,) = ended(service, [job_id], 180)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert record.result.frames == 120
    url = service.hosts.call("client", requests.get, f"{service.api_url}/v1/jobs/{job_id}", timeout=10).json()
    result = tmp_path / "result.mp4"
    result.write_bytes(service.hosts.call("client", requests.get, url["result"]["url"], timeout=60).content)
    with av.open(str(result)) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    assert len(times) == 120 and times == sorted(set(times))  # every frame once, in order
    attempts = service.jobs().redis.hgetall(f"{KEY_PREFIX}{job_id}{ATTEMPTS_SUFFIX}")
    assert max(int(n) for part, n in attempts.items() if part.isdigit()) >= 2, attempts  # a chunk taken over
    # Worker-1's late attempt, back on the network, gives up without counting.
    gave_up = ("a later attempt has it", "is not recorded", "lost: another worker has", "no longer running")
    wait_for(lambda: any(line in worker_1.log_text() for line in gave_up), 60, "worker-1's late attempt to give up")
    assert_ledger(service, [job_id])


def test_a_worker_host_that_vanishes_has_its_job_finished_elsewhere(service, astronaut_jpeg):
    hosts = service.hosts
    processing_s = 3
    ids = [accept(service, with_fault(astronaut_jpeg, "slow", processing_s)) for _ in range(2)]
    held = wait_for(lambda: running_on(service, ids, "worker-2"), 30, "a job running on worker-2")
    hosts.vanish("worker-2")
    gone_at = time.time()
    records = ended(service, ids, LEASE_S + 60)
    record = next(r for r in records if r.id == held.id)
    print(f"finished {record.finished_at - gone_at:.1f} s after worker-2 vanished (lease {LEASE_S} s)")
    assert all(r.status is JobStatus.SUCCEEDED for r in records)
    assert host_of(service, record) == "worker-1" and record.attempts == 2
    assert_ledger(service, ids)
    hosts.add("worker-2")  # a new machine in its place
    service.start_worker("worker-2")
    later = [accept(service, astronaut_jpeg) for _ in range(2)]
    ended(service, later, 60)
    assert_ledger(service, later)


def test_sentinel_fails_over_when_the_primary_redis_host_dies(tmp_path, astronaut_jpeg):
    """A primary on ``store``, a replica on ``store-2``, three sentinels; ``store`` vanishes mid-run while
    clients keep submitting. The service is back once a sentinel promoted the replica; meanwhile requests
    are answered 503 (or wait a few seconds and succeed); every job accepted before, during and after
    ends, once."""
    require_hosts()
    env = {**os.environ, **HOSTS_ENV, "BACKDROP_SWEEP_INTERVAL_S": "5"}
    with TestHosts() as hosts:
        hosted = HostedService(hosts, tmp_path, env, sentinel=True)
        hosted.start()
        assert hosted.primary() == hosts["store"].address
        ids = [accept(hosted, with_fault(astronaut_jpeg, "slow", 1)) for _ in range(6)]
        answers: list[tuple[float, float, int, str | None, str | None]] = []  # sent, took, status, Retry-After, id
        stop = threading.Event()

        def keep_submitting() -> None:
            for _ in range(600):  # bounded: stopped long before
                if stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    response = post(hosted, {"image": ("p.jpg", astronaut_jpeg)})
                    job = response.json().get("id") if response.status_code == 202 else None
                    answers.append(
                        (sent, time.monotonic() - sent, response.status_code, response.headers.get("Retry-After"), job)
                    )
                except requests.RequestException as exc:
                    answers.append((sent, time.monotonic() - sent, 0, type(exc).__name__, None))
                time.sleep(0.2)

        submitter = threading.Thread(target=keep_submitting, daemon=True)
        submitter.start()
        try:
            wait_for(
                lambda: running_on(hosted, ids, "worker-1") or running_on(hosted, ids, "worker-2"), 30, "a job running"
            )
            died = time.monotonic()
            hosts.vanish("store")
            back = wait_for(
                lambda: next(
                    (sent + took for sent, took, status, _, _ in answers if sent > died and status == 202), None
                ),
                60,
                "an accepted job after the primary died",
            )
            time.sleep(3)
        finally:
            stop.set()
            submitter.join(90)
        assert hosted.primary() == hosts["store-2"].address  # the replica was promoted
        during = [a for a in answers if a[0] > died - 10]
        assert all(status in (202, 503) for _, _, status, _, _ in during), during
        assert all(retry for _, _, status, retry, _ in during if status == 503)
        refused = sum(1 for a in during if a[2] == 503)
        slowest = max(took for _, took, _, _, _ in during)
        print(
            f"failover: accepting again {back - died:.1f} s after the primary's host died; {refused} answered 503; "
            f"slowest answer {slowest:.1f} s"
        )
        accepted = ids + [job for *_, job in answers if job]
        ended(hosted, accepted, 180)
        report = assert_ledger(hosted, accepted)
        assert report["accepted"] > len(ids)


def test_teardown_leaves_nothing_behind(tmp_path):
    require_hosts()
    with TestHosts(["client", "store"]) as hosts:
        namespaces = [host.namespace for host in hosts.hosts.values()]
        links = [*hosts.bridges.values(), *(link for host in hosts.hosts.values() for link in host.links.values())]
        hosts.spawn("store", "sleeper", ["sleep", "600"], log_path=None)
        assert all(Path("/run/netns", name).exists() for name in namespaces)
    assert not any(Path("/run/netns", name).exists() for name in namespaces)
    shown = os.popen("ip -o link show").read()
    assert not any(f" {link}:" in shown or f" {link}@" in shown for link in links)
