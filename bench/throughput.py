"""Scaling on this machine, against the real local stack (Redis, S3, Celery workers, the API).

    .venv/bin/python bench/throughput.py [--small-jobs 60] [--large-jobs 12]

For 1 and 2 worker processes (one inference thread each) and for 0.3 MP and 12 MP blur jobs it prints:
jobs/s with every job submitted at once, p50/p95 end-to-end latency under that load, and the queue and
storage overhead per job measured one job at a time (end-to-end time minus the pipeline's own time,
from the job records: it covers the input upload, the record writes, queueing, delivery, the input
download and the result upload). Then how many submissions per second the API takes (small images,
16 concurrent clients, for a few seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import requests
from skimage import data as samples

from backdrop.pipeline import STAGES
from backdrop.service.jobs import JobRecord, JobStore
from backdrop.service.localstack import LocalStack, free_port
from backdrop.settings import Settings

SIZES = {"0.3 MP": (640, 480), "12 MP": (4000, 3000)}


def jpeg(width: int, height: int) -> bytes:
    image = cv2.resize(samples.astronaut()[:, :, ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 3, image.shape)
    return cv2.imencode(".jpg", np.clip(image + noise, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])[
        1
    ].tobytes()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * (len(ordered) - 1) + 0.5))]


class Bench:
    def __init__(self, stack: LocalStack) -> None:
        self.api = stack.api_url
        self.store = JobStore.connect(Settings.from_env(stack.env).redis_url, ttl_s=3600)
        self.session = requests.Session()

    def submit(self, image: bytes) -> str:
        response = requests.post(f"{self.api}/v1/jobs", files={"image": ("p.jpg", image)}, timeout=60)
        response.raise_for_status()
        return response.json()["id"]

    def finished(self, job_ids: list[str], timeout_s: float = 900) -> list[JobRecord]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records = [self.store.get(job_id) for job_id in job_ids]
            if all(r is not None and r.status.finished for r in records):
                failed = [r.error for r in records if r.error]  # type: ignore[union-attr]
                if failed:
                    raise RuntimeError(f"jobs failed: {failed[:3]}")
                return records  # type: ignore[return-value]
            time.sleep(0.02)
        raise TimeoutError("jobs did not finish")

    def burst(self, image: bytes, count: int) -> tuple[float, float, float]:
        """All jobs submitted at once: jobs/s, p50 and p95 end-to-end ms."""
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: self.submit(image), range(count)))
        records = self.finished(ids)
        span = max(r.finished_at for r in records) - min(r.created_at for r in records)  # type: ignore[operator]
        latencies = [(r.finished_at - r.created_at) * 1e3 for r in records]  # type: ignore[operator]
        return count / span, statistics.median(latencies), percentile(latencies, 0.95)

    def overhead(self, image: bytes, count: int) -> tuple[float, float]:
        """One job at a time: median end-to-end ms and median overhead (end-to-end minus pipeline) ms."""
        totals, overheads = [], []
        for _ in range(count):
            (record,) = self.finished([self.submit(image)])
            total = (record.finished_at - record.created_at) * 1e3  # type: ignore[operator]
            pipeline = sum(record.timings_ms.get(stage, 0.0) for stage in STAGES)
            totals.append(total)
            overheads.append(total - pipeline)
        return statistics.median(totals), statistics.median(overheads)

    def submission_rate(self, seconds: float = 5, clients: int = 16) -> float:
        small = jpeg(64, 48)
        accepted = 0
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client() -> None:
            nonlocal accepted
            session = requests.Session()
            while time.monotonic() < stop:
                response = session.post(f"{self.api}/v1/jobs", files={"image": ("s.jpg", small)}, timeout=30)
                if response.status_code == 202:
                    with lock:
                        accepted += 1

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return accepted / (time.monotonic() - started)


def run(workers: int, args: argparse.Namespace, images: dict[str, bytes]) -> dict[str, tuple]:
    env = {**os.environ, "BACKDROP_THREADS": "1", "BACKDROP_WORKER_METRICS_PORT": "0"}
    with tempfile.TemporaryDirectory(prefix="backdrop-throughput-") as root:
        stack = LocalStack(root=Path(root), api_port=free_port(), workers=workers)
        stack.start(env)
        try:
            bench = Bench(stack)
            results: dict[str, tuple] = {}
            for label, image in images.items():
                count = args.small_jobs if label == "0.3 MP" else args.large_jobs
                bench.burst(image, min(count, 2 * workers))  # warm-up: every process has run a job
                rate, p50, p95 = bench.burst(image, count)
                sequential, overhead = bench.overhead(image, max(3, count // 4))
                results[label] = (rate, p50, p95, sequential, overhead)
            if workers == args.rate_with_workers:
                results["submissions"] = (bench.submission_rate(),)
            return results
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-jobs", type=int, default=60)
    parser.add_argument("--large-jobs", type=int, default=12)
    parser.add_argument("--rate-with-workers", type=int, default=2)
    args = parser.parse_args()
    images = {label: jpeg(*size) for label, size in SIZES.items()}
    print(f"machine: {os.cpu_count()} cores; each worker process runs one inference thread\n")
    table = {workers: run(workers, args, images) for workers in (1, 2)}
    print(f"{'size':>7} {'workers':>7} {'jobs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'1-by-1 ms':>10} {'overhead ms':>12}")
    for label in images:
        for workers in (1, 2):
            rate, p50, p95, sequential, overhead = table[workers][label]
            print(f"{label:>7} {workers:>7} {rate:8.2f} {p50:8.0f} {p95:8.0f} {sequential:10.0f} {overhead:12.1f}")
        speedup = table[2][label][0] / table[1][label][0]
        print(f"{label:>7} scaling 2 vs 1 worker processes: {speedup:.2f}x")
    print(f"\nAPI: {table[args.rate_with_workers]['submissions'][0]:.0f} submissions/s of 64x48 JPEGs (16 clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
