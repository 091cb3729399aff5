"""Scaling on this machine, against the real local stack (Redis, S3, Celery workers, the API).

    .venv/bin/python bench/throughput.py [--small-jobs 120] [--large-jobs 24] [--repeat 3]

One stack with two worker nodes of one process each (one inference thread each); a measurement with 1
worker process lets only the first node consume (Celery's ``cancel_consumer``), so runs with 1 and 2
processes alternate on the same servers and drift of the machine's speed hits both alike. For 0.3 MP
and 12 MP blur jobs it prints:
- burst: jobs/s with every job submitted at once, so the API and the benchmark's clients compete with the
  workers for the same cores, and p50/p95 end-to-end latency under that load;
- drain: jobs/s of the workers alone, emptying a queue filled while they did not consume it (the API
  and clients idle, as on their own machines; the Redis and S3 servers still share the cores);
- the queue and storage overhead per job, one job at a time (end-to-end time minus the pipeline's own
  time, from the job records: the upload, record writes, queueing, delivery, reading the upload and
  storing the result).
Then how many submissions per second the API takes (64x48 JPEGs, 16 keep-alive clients, 5 s), and the
pipeline alone in 1 and 2 processes with no servers: the ceiling the cores themselves set.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from skimage import data as samples

from backdrop.params import JobParams
from backdrop.pipeline import STAGES, Pipeline
from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.service.jobs import KEY_PREFIX, JobRecord, JobStatus, JobStore
from backdrop.service.localstack import LocalStack, free_port
from backdrop.service.queue import make_celery
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


def multipart(image: bytes) -> tuple[bytes, str]:
    """A prepared ``POST /v1/jobs`` body: the benchmark's own CPU time per request stays tiny."""
    boundary = "backdrop-bench-" + os.urandom(8).hex()
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class Submitter:
    """One keep-alive connection to the API posting a prepared request (requests' per-call overhead would
    otherwise count against the services sharing these cores)."""

    def __init__(self, api_url: str, image: bytes) -> None:
        host, port = api_url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.body, self.content_type = multipart(image)

    def submit(self) -> tuple[int, bytes]:
        self.connection.request("POST", "/v1/jobs", self.body, {"Content-Type": self.content_type})
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


class Bench:
    def __init__(self, stack: LocalStack, nodes: list[str]) -> None:
        self.api = stack.api_url
        self.settings = Settings.from_env(stack.env)
        self.store = JobStore.connect(self.settings.redis_url, ttl_s=3600)
        self.control = make_celery(self.settings).control
        self.nodes = nodes

    def consume_on(self, count: int) -> None:
        """Only the first ``count`` worker nodes take jobs from the queue (0: none, to fill it)."""
        for index, node in enumerate(self.nodes):
            command = self.control.add_consumer if index < count else self.control.cancel_consumer
            if not command(self.settings.queue, destination=[node], reply=True, timeout=5):
                raise RuntimeError(f"worker node {node} did not answer")

    def submit_all(self, image: bytes, count: int, clients: int = 8) -> list[str]:
        def post(share: int) -> list[str]:
            submitter = Submitter(self.api, image)
            ids = []
            for _ in range(share):
                status, body = submitter.submit()
                if status != 202:
                    raise RuntimeError(f"submission refused: {status} {body[:200]!r}")
                ids.append(json.loads(body)["id"])
            submitter.close()
            return ids

        shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        with ThreadPoolExecutor(clients) as pool:
            return [job_id for ids in pool.map(post, shares) for job_id in ids]

    def finished(self, job_ids: list[str], timeout_s: float = 900) -> list[JobRecord]:
        """Waits with one pipelined status read of the unfinished jobs every 50 ms or more (cheap for Redis
        and for this process, which share the cores with the workers; the rates and latencies come from
        the job records' own times, not from when this loop notices), then reads the records once."""
        deadline = time.monotonic() + timeout_s
        waiting = list(job_ids)
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} jobs did not finish")
            time.sleep(max(0.05, 0.002 * len(waiting)))  # at most ~500 status reads per second
            with self.store.redis.pipeline(transaction=False) as pipe:
                for job_id in waiting:
                    pipe.hget(KEY_PREFIX + job_id, "status")
                statuses = pipe.execute()
            waiting = [
                j for j, s in zip(waiting, statuses, strict=True) if s is None or not JobStatus(json.loads(s)).finished
            ]
        records = [self.store.get(job_id) for job_id in job_ids]
        failed = [r.error for r in records if r is None or r.error]  # type: ignore[union-attr]
        if failed:
            raise RuntimeError(f"jobs failed: {failed[:3]}")
        return records  # type: ignore[return-value]

    def burst(self, image: bytes, count: int, workers: int) -> tuple[float, list[float]]:
        """All jobs submitted at once (the API and these clients share the cores with the workers): jobs/s
        from the first submission to the last finish, and each job's end-to-end ms."""
        self.consume_on(workers)
        records = self.finished(self.submit_all(image, count))
        span = max(r.finished_at for r in records) - min(r.created_at for r in records)  # type: ignore[operator]
        return count / span, [(r.finished_at - r.created_at) * 1e3 for r in records]  # type: ignore[operator]

    def drain(self, image: bytes, count: int, workers: int) -> float:
        """Worker throughput alone: the queue is filled while no worker consumes it, then ``workers``
        processes drain it; jobs/s from the first start to the last finish. The API and the benchmark's
        clients are idle meanwhile, as they would be on their own machines."""
        self.consume_on(0)
        try:
            ids = self.submit_all(image, count)
            if self.store.queue_depth(self.settings.queue) != count:
                raise RuntimeError("workers kept consuming: the queue did not fill")
        finally:
            self.consume_on(workers)
        records = self.finished(ids)
        span = max(r.finished_at for r in records) - min(r.started_at for r in records)  # type: ignore[operator]
        return count / span

    def overhead(self, image: bytes, count: int, workers: int) -> tuple[float, float]:
        """One job at a time: median end-to-end ms and median overhead (end-to-end minus pipeline) ms."""
        self.consume_on(workers)
        totals, overheads = [], []
        for _ in range(count):
            (record,) = self.finished(self.submit_all(image, 1, clients=1))
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
            submitter = Submitter(self.api, small)
            while time.monotonic() < stop:
                status, _ = submitter.submit()
                if status == 202:
                    with lock:
                        accepted += 1
            submitter.close()

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return accepted / (time.monotonic() - started)


def _pipeline_loop(image: bytes, seconds: float, start: float, rates: multiprocessing.Queue) -> None:
    settings = Settings.from_env({**os.environ, "BACKDROP_THREADS": "1"})
    retain_freed_memory(settings.retain_freed_memory_mb)  # as the workers do
    pipeline = Pipeline(settings)
    for _ in range(3):  # warm-up
        pipeline.process(image, JobParams())
    while time.time() < start:
        time.sleep(0.005)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        pipeline.process(image, JobParams())
        done += 1
    rates.put(done / (time.perf_counter() - began))


def pipeline_ceiling(image: bytes, processes: int, seconds: float = 5) -> float:
    """Jobs/s of the pipeline alone in ``processes`` processes running at once (no servers, no queue):
    what the cores themselves allow, for comparison with the stack."""
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no fork of this threaded process
    rates = spawn.Queue()
    start = time.time() + 20  # every process has loaded its models and warmed up by then
    workers = [spawn.Process(target=_pipeline_loop, args=(image, seconds, start, rates)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    total = sum(rates.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join()
    return total


WORKER_COUNTS = (1, 2)


@dataclass
class Measured:
    """One image size: per worker count the medians (burst jobs/s, p50 ms, p95 ms, drain jobs/s, 1-by-1
    ms, overhead ms), and the 2-vs-1 ratio of each paired run."""

    rows: dict[int, tuple[float, ...]]
    burst_ratios: list[float]
    drain_ratios: list[float]


def measure(bench: Bench, image: bytes, count: int, repeat: int) -> Measured:
    bench.burst(image, 2 * len(WORKER_COUNTS), workers=max(WORKER_COUNTS))  # warm-up
    bursts: dict[int, list[float]] = {w: [] for w in WORKER_COUNTS}
    latencies: dict[int, list[float]] = {w: [] for w in WORKER_COUNTS}
    drains: dict[int, list[float]] = {w: [] for w in WORKER_COUNTS}
    for _ in range(repeat):  # several runs, 1 and 2 workers alternating: one run varies by several percent
        for workers in WORKER_COUNTS:
            rate, run_latencies = bench.burst(image, count, workers)
            bursts[workers].append(rate)
            latencies[workers] += run_latencies
            drains[workers].append(bench.drain(image, count, workers))
    rows = {}
    for workers in WORKER_COUNTS:
        sequential, overhead = bench.overhead(image, max(3, count // 4), workers)
        rows[workers] = (
            statistics.median(bursts[workers]),
            statistics.median(latencies[workers]),
            percentile(latencies[workers], 0.95),
            statistics.median(drains[workers]),
            sequential,
            overhead,
        )
    return Measured(
        rows,
        [two / one for one, two in zip(bursts[1], bursts[2], strict=True)],
        [two / one for one, two in zip(drains[1], drains[2], strict=True)],
    )


def run(args: argparse.Namespace, images: dict[str, bytes]) -> tuple[dict[str, Measured], float]:
    """The stack with two one-process worker nodes; every size measured, then the API's submission rate."""
    env = {**os.environ, "BACKDROP_THREADS": "1", "BACKDROP_WORKER_METRICS_PORT": "0"}
    with tempfile.TemporaryDirectory(prefix="backdrop-throughput-") as root:
        stack = LocalStack(root=Path(root), api_port=free_port(), workers=1)
        stack.start(env)
        try:
            stack.start_worker_node("backdrop2")
            host = socket.gethostname()
            bench = Bench(stack, [f"backdrop@{host}", f"backdrop2@{host}"])
            results = {}
            for label, image in images.items():
                count = args.small_jobs if label == "0.3 MP" else args.large_jobs
                results[label] = measure(bench, image, count, args.repeat)
            bench.consume_on(max(WORKER_COUNTS))
            return results, bench.submission_rate()
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-jobs", type=int, default=120)
    parser.add_argument("--large-jobs", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (medians are printed)")
    args = parser.parse_args()
    images = {label: jpeg(*size) for label, size in SIZES.items()}
    print(f"machine: {os.cpu_count()} cores; each worker process runs one inference thread\n")
    ceiling = {label: [pipeline_ceiling(image, n) for n in WORKER_COUNTS] for label, image in images.items()}
    results, submissions = run(args, images)
    print(
        f"{'size':>7} {'workers':>7} {'burst jobs/s':>12} {'p50 ms':>7} {'p95 ms':>7} {'drain jobs/s':>12}"
        f" {'1-by-1 ms':>9} {'overhead ms':>11}"
    )
    for label, measured in results.items():
        for workers, (rate, p50, p95, drained, sequential, overhead) in measured.rows.items():
            print(
                f"{label:>7} {workers:>7} {rate:12.2f} {p50:7.0f} {p95:7.0f} {drained:12.2f}"
                f" {sequential:9.0f} {overhead:11.1f}"
            )
        runs = {"burst": measured.burst_ratios, "drain": measured.drain_ratios}
        print(
            f"{label:>7} 2 vs 1 worker processes: "
            + ", ".join(
                f"{name} {statistics.median(ratios):.2f}x (runs {' '.join(f'{r:.2f}' for r in ratios)})"
                for name, ratios in runs.items()
            )
        )
        one, two = ceiling[label]
        print(
            f"{label:>7} the pipeline alone, no servers: {one:.2f} -> {two:.2f} jobs/s with 2 processes,"
            f" {two / one:.2f}x (the cores' own ceiling)"
        )
    print(f"\nAPI: {submissions:.0f} submissions/s of 64x48 JPEGs (16 clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
