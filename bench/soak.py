"""Load and soak: concurrent clients against a real local stack, then the job ledger.

    make soak                          # 8 clients, 400 jobs, 2 worker processes; then across hosts
    .venv/bin/python bench/soak.py --clients 4 --jobs 60
    .venv/bin/python bench/soak.py --hosts [--cuts 6 --lease 10]   # test hosts, worker links cut at random

Jobs mix effects, sizes and invalid requests, and some are cancelled right after submission. Clients
honour 429/503 with Retry-After (backpressure). Afterwards every accepted job must be in exactly one
terminal state, once, with exactly its linked result object (``harness.ledger``): the ledger
prints accepted = succeeded + failed + cancelled, lost, stuck and duplicate terminal writes, with p50/p95
latency and throughput.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import requests
from skimage import data as samples

from backdrop.service.jobs import JobStatus, JobStore
from backdrop.service.localstack import LocalStack, free_port
from backdrop.service.storage import open_storage
from backdrop.settings import Settings

# The harnesses (test hosts, the ledger) are a folder beside bench/, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.hosts import HostedService, TestHosts
from harness.ledger import audit

EFFECTS = [
    {"effect": "blur"}, {"effect": "blur", "bokeh": "lens", "strength": "80"}, {"effect": "gray"},
    {"effect": "color", "color": "#1E90FF"}, {"effect": "cutout"}, {"effect": "mask"},
    {"effect": "blur", "targets": "cat"},
]  # fmt: skip
INVALID = [
    ({"effect": "sparkle"}, None),
    ({"targets": "dragon"}, None),
    ({}, b"<html>not an image</html>"),
]


def photo(width: int, height: int, seed: int) -> bytes:
    base = samples.astronaut() if seed % 2 else samples.chelsea()
    image = cv2.resize(base[:, :, ::-1], (width, height), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


@dataclass
class Ledger:
    accepted: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)
    backpressure: int = 0
    cancel_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(api: str, jobs: int, seed: int, ledger: Ledger, photos: list[bytes], deadline: float) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    for _ in range(jobs):
        if rng.random() < 0.1:
            fields, image = rng.choice(INVALID)
            image = image or photos[0]
        else:
            fields, image = dict(rng.choice(EFFECTS)), rng.choice(photos)
        while True:
            if time.monotonic() > deadline:
                return
            try:
                response = session.post(f"{api}/v1/jobs", files={"image": ("p.jpg", image)}, data=fields, timeout=30)
            except requests.RequestException:
                time.sleep(0.5)
                continue
            if response.status_code in (429, 503):
                with ledger.lock:
                    ledger.backpressure += 1
                time.sleep(float(response.headers.get("Retry-After", "1")) * rng.uniform(0.2, 0.6))
                continue
            break
        if response.status_code != 202:
            with ledger.lock:
                ledger.refused[response.status_code] += 1
            continue
        job_id = response.json()["id"]
        with ledger.lock:
            ledger.accepted.append(job_id)
        if rng.random() < 0.05:
            session.delete(f"{api}/v1/jobs/{job_id}", timeout=10)
            with ledger.lock:
                ledger.cancel_requests += 1


def run_soak(stack: LocalStack, *, clients: int, jobs: int, timeout_s: float = 600) -> dict:
    return soak(stack.api_url, Settings.from_env(stack.env), clients=clients, jobs=jobs, timeout_s=timeout_s)


def soak(
    api_url: str,
    settings: Settings,
    *,
    clients: int,
    jobs: int,
    timeout_s: float = 600,
    executor: ThreadPoolExecutor | None = None,
) -> dict:
    """The clients (in ``executor``'s threads if given: e.g. on the client test host), then the ledger."""
    store = JobStore.from_settings(settings)
    photos = [photo(640, 480, 1), photo(640, 480, 2), photo(1632, 1224, 3)]
    ledger = Ledger()
    started = time.monotonic()
    deadline = started + timeout_s
    pool = executor or ThreadPoolExecutor(clients)
    runs = [pool.submit(client, api_url, jobs // clients, i, ledger, photos, deadline) for i in range(clients)]
    for run in runs:
        run.result()
    if executor is None:
        pool.shutdown()
    submitted = time.monotonic()

    records = {}
    while time.monotonic() < deadline:
        records = {job_id: store.get(job_id) for job_id in ledger.accepted}
        if all(r is not None and r.status.finished for r in records.values()):
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started

    ledger_report = audit(store, open_storage(settings), ledger.accepted)
    latencies = sorted(
        (r.finished_at - r.created_at) * 1e3 for r in records.values() if r and r.status is JobStatus.SUCCEEDED
    )
    report = {
        "clients": clients,
        "refused_4xx": dict(ledger.refused),
        "backpressure_retries": ledger.backpressure,
        "cancel_requests": ledger.cancel_requests,
        **ledger_report,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
        "throughput_jobs_per_s": round(ledger_report["succeeded"] / elapsed, 2),
        "submit_s": round(submitted - started, 1),
        "elapsed_s": round(elapsed, 1),
    }
    return report


class Cuts:
    """Random cuts of worker hosts' links while the soak runs: at most ``limit`` cuts, one host at a time,
    each healed after 5-25 s; stops by itself, and heals everything when stopped."""

    def __init__(self, hosts: TestHosts, victims: list[str], limit: int, seed: int = 7) -> None:
        self.hosts, self.victims, self.limit = hosts, victims, limit
        self.rng = random.Random(seed)
        self.done: list[tuple[str, float]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(self.limit):
            if self.stopping.wait(self.rng.uniform(2, 10)):
                return
            victim, seconds = self.rng.choice(self.victims), self.rng.uniform(5, 25)
            self.hosts.cut(victim)
            try:
                self.stopping.wait(seconds)
            finally:
                self.hosts.heal(victim)
            self.done.append((victim, round(seconds, 1)))

    def __enter__(self) -> Cuts:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(60)
        for victim in self.victims:
            self.hosts.heal(victim)


def across_hosts(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """The soak with each part on a test host of its own, and random cuts of the workers' links."""
    with tempfile.TemporaryDirectory(prefix="backdrop-soak-hosts-") as root, TestHosts() as hosts:
        hosted = HostedService(
            hosts, Path(root), {**env, "BACKDROP_LEASE_S": str(args.lease)}, concurrency=args.workers
        )
        hosted.start()
        with Cuts(hosts, ["worker-1", "worker-2"], args.cuts) as cuts:
            report = soak(
                hosted.api_url,
                hosted.settings,
                clients=args.clients,
                jobs=args.jobs,
                timeout_s=900,
                executor=hosts.executor("client", threads=args.clients),
            )
        return {**report, "cuts": cuts.done, "lease_s": args.lease}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue-limit", type=int, default=40, help="BACKDROP_MAX_QUEUE_DEPTH for the run")
    parser.add_argument("--hosts", action="store_true", help="each part on a test host, worker links cut at random")
    parser.add_argument("--cuts", type=int, default=6, help="with --hosts: how many cuts at most")
    parser.add_argument("--lease", type=float, default=10, help="with --hosts: BACKDROP_LEASE_S")
    args = parser.parse_args()
    env = {**os.environ, "BACKDROP_THREADS": "1", "BACKDROP_MAX_QUEUE_DEPTH": str(args.queue_limit)}
    if args.hosts:
        report = across_hosts(args, env)
        print_report(report)
        return 0 if report["balanced"] else 1
    with tempfile.TemporaryDirectory(prefix="backdrop-soak-") as root:
        stack = LocalStack(root=Path(root), api_port=free_port(), workers=args.workers)
        stack.start(env)
        try:
            report = run_soak(stack, clients=args.clients, jobs=args.jobs)
        finally:
            stack.stop()
    print_report(report)
    return 0 if report["balanced"] else 1


def print_report(report: dict) -> None:
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print("ledger:", "OK" if report["balanced"] else "BROKEN")


if __name__ == "__main__":
    sys.exit(main())
