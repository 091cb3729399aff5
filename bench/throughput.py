"""What the service keeps of what the pipeline can do, on this machine, against the real local stack
(Redis, S3, Celery workers, the API).

    .venv/bin/python bench/throughput.py [--small-jobs 120] [--large-jobs 40] [--repeat 3]

For 0.3 MP and 2.25 MP blur jobs (JPEG in, JPEG out):
- the bare pipeline (``Pipeline.process`` on the bytes, no servers) in 1 and 2 processes: images/s;
- the same images as jobs through the service, every job submitted at once by keep-alive clients that
  poll the jobs' status through the API once a second (one read for up to 100 jobs: ``GET
  /v1/jobs?ids=...``), with 1 and 2 worker processes (one stack,
  two one-process worker nodes; for "1 worker" only the first consumes): jobs/s from the first
  submission to the last finish, and p50/p95 end-to-end;
- the *service efficiency*: service jobs/s / bare-pipeline images/s at the same number of processes;
- CPU milliseconds per job of every process (the API's, the workers', Redis's, S3's and this load
  client's), from /proc, against the bare pipeline's own CPU per image.
Then how many 0.3 MP uploads per second the API accepts while two workers process them (16 clients).

With --compat instead (the drop-in routes and waiting answers, 0.3 MP cut-outs, one at a time):
- remove.bg's route against ``POST /v1/jobs`` + polling every 5 ms + fetching the result: p50 of each and
  the route's overhead;
- webhooks: from the job's end (its record's finished_at) to the receiver's arrival, p50 and p95;
- ``POST /v1/jobs`` latency (p50, p95) with no request waiting, and with 64 waiting (``Prefer: wait=60``
  on jobs no worker takes meanwhile), and how many of the 64 did wait.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from skimage import data as samples

from backdrop.params import JobParams
from backdrop.pipeline import Pipeline
from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.service.jobs import JobRecord, JobStatus, JobStore
from backdrop.service.localstack import LOOPBACK_NETWORKS, LocalStack, free_port
from backdrop.service.queue import make_celery
from backdrop.settings import Settings

SIZES = {"0.3 MP": (640, 480), "2.25 MP": (2000, 1125)}
WORKER_COUNTS = (1, 2)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def jpeg(width: int, height: int) -> bytes:
    image = cv2.resize(samples.astronaut()[:, :, ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 3, image.shape)
    pixels = np.clip(image + noise, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * (len(ordered) - 1) + 0.5))]


# --- CPU time of the stack's processes, from /proc -----------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def tree_cpu(root: int, parents: dict[int, int]) -> float:
    """CPU seconds of a process and every live process below it (gunicorn's workers, Celery's pool)."""
    tree, grown = {root}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grown = True
    return sum(_cpu_seconds(pid) for pid in tree)


class CpuMeter:
    """CPU seconds used by each part of the stack (and this client) between two readings: ``roots`` names
    the processes (with everything below them) of each part."""

    def __init__(self, roots: dict[str, list[int]], alone: dict[str, int] | None = None) -> None:
        self.roots = roots
        self.alone = alone or {}  # processes read without their children (a Celery node's main process)

    @classmethod
    def of_stack(cls, stack: LocalStack) -> CpuMeter:
        return cls(
            {
                "api": [stack.process("api").process.pid],
                "workers": [p.process.pid for p in stack.processes if p.name.startswith("worker-")],
                "redis": [stack.process("redis").process.pid],
                "s3": [stack.process("s3").process.pid],
            }
        )

    def read(self) -> dict[str, float]:
        parents = _parents()
        reading = {name: sum(tree_cpu(pid, parents) for pid in pids) for name, pids in self.roots.items()}
        reading.update({name: _cpu_seconds(pid) for name, pid in self.alone.items()})
        reading["client"] = time.process_time()
        return reading


# --- the load client ------------------------------------------------------------------------------------


def multipart(image: bytes) -> tuple[bytes, str]:
    """A prepared ``POST /v1/jobs`` body: the client's own CPU time per request stays small."""
    boundary = "backdrop-bench-" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Connection:
    """One keep-alive connection to the API."""

    def __init__(self, api_url: str) -> None:
        host, port = api_url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        self.connection.request(method, path, body, headers or {})
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


class Bench:
    """``on_client(function)`` runs the client's side (submitting, polling) where the client is: here, or
    on the client test host; the job records are read from here."""

    def __init__(
        self,
        api_url: str,
        settings: Settings,
        meter: CpuMeter,
        nodes: list[str],
        on_client: Callable[[Callable[[], T]], T] = lambda function: function(),
    ) -> None:
        self.on_client = on_client
        self.api = api_url
        self.settings = settings
        self.store = JobStore.from_settings(settings)
        self.control = make_celery(self.settings).control
        self.nodes = nodes
        self.meter = meter
        self.pipeline_ms: list[float] = []  # the last burst's: each job's pipeline stages, from its record

    def consume_on(self, count: int) -> None:
        """Only the first ``count`` worker nodes take jobs from the queue."""
        for index, node in enumerate(self.nodes):
            command = self.control.add_consumer if index < count else self.control.cancel_consumer
            if not command(self.settings.queue, destination=[node], reply=True, timeout=5):
                raise RuntimeError(f"worker node {node} did not answer")

    def submit_all(self, image: bytes, count: int, clients: int = 8) -> list[str]:
        body, content_type = multipart(image)

        def post(share: int) -> list[str]:
            connection = Connection(self.api)
            ids = []
            for _ in range(share):
                status, answer = connection.call("POST", "/v1/jobs", body, {"Content-Type": content_type})
                if status != 202:
                    raise RuntimeError(f"submission refused: {status} {answer[:200]!r}")
                ids.append(json.loads(answer)["id"])
            connection.close()
            return ids

        shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        with ThreadPoolExecutor(clients) as pool:
            return [job_id for ids in pool.map(post, shares) for job_id in ids]

    def wait_through_the_api(self, job_ids: list[str], timeout_s: float = 900) -> None:
        """Poll the unfinished jobs' status through the API as a client with many jobs in flight does:
        one read for up to 100 of them (``GET /v1/jobs?ids=...``), again after the answer's
        ``Retry-After``. The rates and latencies come from the job records' own times, so polling once a
        second does not change them; what the polls cost the API is counted."""
        connection = Connection(self.api)
        deadline = time.monotonic() + timeout_s
        waiting = list(job_ids)
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} jobs did not finish")
            started = time.monotonic()
            still, retry_after = [], 1.0
            for first in range(0, len(waiting), 100):
                ids = ",".join(waiting[first : first + 100])
                connection.connection.request("GET", f"/v1/jobs?ids={ids}")
                response = connection.connection.getresponse()
                answer = json.loads(response.read())
                retry_after = float(response.headers.get("Retry-After") or retry_after)
                done = {job["id"] for job in answer["jobs"] if JobStatus(job["status"]).finished}
                still += [job_id for job_id in waiting[first : first + 100] if job_id not in done]
            waiting = still
            if waiting:
                time.sleep(max(0.0, retry_after - (time.monotonic() - started)))
        connection.close()

    def records(self, job_ids: list[str]) -> list[JobRecord]:
        records = [self.store.get(job_id) for job_id in job_ids]
        failed = [r.error for r in records if r is None or r.error]  # type: ignore[union-attr]
        if failed:
            raise RuntimeError(f"jobs failed: {failed[:3]}")
        return records  # type: ignore[return-value]

    def burst(self, image: bytes, count: int, workers: int) -> tuple[float, list[float], dict[str, float]]:
        """Every job submitted at once and waited for: jobs/s from the first submission to the last finish,
        each job's end-to-end ms, and CPU ms per job of each process."""
        self.consume_on(workers)
        before = self.meter.read()

        def client() -> list[str]:
            ids = self.submit_all(image, count)
            self.wait_through_the_api(ids)
            return ids

        ids = self.on_client(client)
        after = self.meter.read()
        records = self.records(ids)
        span = max(r.finished_at for r in records) - min(r.created_at for r in records)  # type: ignore[operator]
        latencies = [(r.finished_at - r.created_at) * 1e3 for r in records]  # type: ignore[operator]
        cpu = {name: (after[name] - before[name]) * 1e3 / count for name in after}
        service_parts = ("download", "upload")
        self.pipeline_ms = [
            sum(ms for stage, ms in (r.timings_ms or {}).items() if stage not in service_parts) for r in records
        ]
        return count / span, latencies, cpu

    def submission_rate(self, image: bytes, seconds: float = 5, clients: int = 16) -> float:
        """Uploads accepted per second while the workers process them."""
        body, content_type = multipart(image)
        accepted = 0
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client() -> None:
            nonlocal accepted
            connection = Connection(self.api)
            while time.monotonic() < stop:
                status, _ = connection.call("POST", "/v1/jobs", body, {"Content-Type": content_type})
                if status == 202:
                    with lock:
                        accepted += 1
            connection.close()

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return accepted / (time.monotonic() - started)


# --- the bare pipeline ------------------------------------------------------------------------------------


def _pipeline_loop(
    image: bytes,
    seconds: float,
    start: float,
    rates: multiprocessing.Queue,
    cpus: set[int] | None = None,
    singles: int = 0,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    settings = Settings.from_env({**os.environ, "BACKDROP_THREADS": "1"})
    retain_freed_memory(settings.retain_freed_memory_mb)  # as the workers do
    pipeline = Pipeline(settings)
    for _ in range(3):  # warm-up
        pipeline.process(image, JobParams())
    while time.time() < start:
        time.sleep(0.005)
    done, began, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - began < seconds:
        pipeline.process(image, JobParams())
        done += 1
    rate, cpu_ms = done / (time.perf_counter() - began), (time.process_time() - cpu) * 1e3 / done
    # Then images one at a time with pauses between them, as jobs sent one after another arrive: caches
    # and the core's clock cool down meanwhile, and an image costs more than back to back.
    alone = []
    for _ in range(singles):
        time.sleep(SINGLE_GAP_S)
        began = time.perf_counter()
        pipeline.process(image, JobParams())
        alone.append((time.perf_counter() - began) * 1e3)
    rates.put((rate, cpu_ms, alone))


# The pause between one-at-a-time jobs is about what the service adds around each (client, API, queue).
SINGLE_GAP_S = 0.03


def _spin(cpus: set[int], duty: float, start: float, until: float) -> None:
    """Keep ``cpus`` busy ``duty`` of the time (a spin loop, 10 ms periods) from ``start`` to ``until``."""
    os.sched_setaffinity(0, cpus)
    period = 0.01
    while time.time() < start:
        time.sleep(0.005)
    while (now := time.time()) < until:
        busy_until = now + duty * period
        while time.time() < busy_until:
            pass
        time.sleep(max(0.0, period - duty * period))


def bare_pipeline(
    image: bytes,
    processes: int,
    seconds: float = 6,
    cpus: set[int] | None = None,
    singles: int = 0,
    neighbour: tuple[set[int], float] | None = None,
) -> tuple[float, float, list[float]]:
    """Images/s of the pipeline alone in ``processes`` processes at once (no servers, no queue; on ``cpus``
    if given), its CPU ms per image, and with ``singles`` the ms of that many images run one at a time.
    ``neighbour``: other cores and a share of their time to keep busy meanwhile (what the servers took of
    them while the service ran beside a worker on ``cpus``)."""
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no fork of this threaded process
    rates = spawn.Queue()
    start = time.time() + 20  # every process has loaded its models and warmed up by then
    workers = [
        spawn.Process(target=_pipeline_loop, args=(image, seconds, start, rates, cpus, singles))
        for _ in range(processes)
    ]
    if neighbour:
        # One spinner per core: the share is of each core's time.
        until = start + seconds + singles * (SINGLE_GAP_S + 0.3) + 5
        workers += [spawn.Process(target=_spin, args=({core}, neighbour[1], start, until)) for core in neighbour[0]]
    for worker in workers:
        worker.start()
    results = [rates.get(timeout=120) for _ in range(processes)]
    for worker in workers:
        worker.join()
    return (
        sum(rate for rate, _, _ in results),
        statistics.mean(cpu for _, cpu, _ in results),
        [ms for _, _, alone in results for ms in alone],
    )


@dataclass
class Measured:
    """One image size and worker count: medians over the runs."""

    rate: float
    p50: float
    p95: float
    cpu: dict[str, float]


def measure(bench: Bench, image: bytes, count: int, repeat: int) -> dict[int, Measured]:
    bench.burst(image, 2 * len(WORKER_COUNTS), workers=max(WORKER_COUNTS))  # warm-up
    runs: dict[int, list[tuple[float, list[float], dict[str, float]]]] = {w: [] for w in WORKER_COUNTS}
    for _ in range(repeat):  # 1 and 2 workers alternating: the machine's drift hits both alike
        for workers in WORKER_COUNTS:
            runs[workers].append(bench.burst(image, count, workers))
    measured = {}
    for workers, results in runs.items():
        latencies = [ms for _, run, _ in results for ms in run]
        names = results[0][2]
        measured[workers] = Measured(
            rate=statistics.median(rate for rate, _, _ in results),
            p50=statistics.median(latencies),
            p95=percentile(latencies, 0.95),
            cpu={name: statistics.median(cpu[name] for _, _, cpu in results) for name in names},
        )
    return measured


def run(args: argparse.Namespace, images: dict[str, bytes]) -> tuple[dict[str, dict[int, Measured]], float]:
    """The stack with two one-process worker nodes; every size measured, then the API's submission rate."""
    env = {**os.environ, "BACKDROP_THREADS": "1", "BACKDROP_WORKER_METRICS_PORT": "0"}
    with tempfile.TemporaryDirectory(prefix="backdrop-throughput-") as root:
        stack = LocalStack(root=Path(root), api_port=free_port(), workers=1)
        stack.start(env)
        try:
            stack.start_worker_node("backdrop2")
            host = socket.gethostname()
            settings = Settings.from_env(stack.env)
            nodes = [f"backdrop@{host}", f"backdrop2@{host}"]
            bench = Bench(stack.api_url, settings, CpuMeter.of_stack(stack), nodes)
            results = {}
            for label, image in images.items():
                count = args.small_jobs if label == "0.3 MP" else args.large_jobs
                results[label] = measure(bench, image, count, args.repeat)
            bench.consume_on(max(WORKER_COUNTS))
            return results, bench.submission_rate(images["0.3 MP"])
        finally:
            stack.stop()


# --- across test hosts: the worker on a core of its own --------------------------------------------------


def one_at_a_time(api_url: str, image: bytes, count: int) -> list[float]:
    """End-to-end ms of jobs sent one after another, each answered when done (``Prefer: wait``)."""
    body, content_type = multipart(image)
    connection = Connection(api_url)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        headers = {"Content-Type": content_type, "Prefer": "wait=30"}
        status, answer = connection.call("POST", "/v1/jobs", body, headers)
        if status != 201:
            raise RuntimeError(f"job not done within the wait: {status} {answer[:200]!r}")
        latencies.append((time.perf_counter() - started) * 1e3)
    connection.close()
    return latencies


# A worker configuration: pool, concurrency, and whether the segmentation models are the recorded stand-in
# (bench/recorded_engine.py: the real output after a 2 ms sleep, as an accelerator would nearly give).
Config = tuple[str, int, bool]


def parse_configs(text: str) -> list[Config]:
    """``prefork:1,threads:2,threads:2:recorded`` -> [("prefork", 1, False), ("threads", 2, False), ...]."""
    configs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) > 3 or parts[2:] not in ([], ["recorded"]):
            raise ValueError(f"not a worker configuration: {item!r} (pool[:concurrency[:recorded]])")
        configs.append((parts[0], int(parts[1]) if len(parts) > 1 else 1, parts[2:] == ["recorded"]))
    return configs


def config_name(config: Config) -> str:
    pool, concurrency, recorded = config
    return f"{pool}:{concurrency}" + (":recorded" if recorded else "")


def across_hosts(args: argparse.Namespace, images: dict[str, bytes]) -> int:
    """``--hosts``: the service on test hosts, the worker host pinned to one core and ``store``, ``api`` and
    ``client`` (this process) on the other(s), against the bare pipeline pinned to the worker's core. Each
    worker configuration (pool and concurrency) in ``--configs`` runs in turn with the bare pipeline, round
    after round, so the machine's drift hits all alike."""
    # The harnesses are a folder beside bench/, not part of the installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from harness.hosts import HostedService, TestHosts, unavailable

    reason = unavailable()
    cores = sorted(os.sched_getaffinity(0))
    if reason or len(cores) < 2:
        print(f"--hosts cannot run here: {reason or 'it needs two cores'}", file=sys.stderr)
        return 1
    configs = parse_configs(args.configs or f"{args.pool}:{args.concurrency}")
    # The worker on the last core: the first takes more of the machine's interrupts on a small VM.
    worker_core, others = cores[-1], cores[:-1]
    os.sched_setaffinity(0, set(others))  # the load client and the harness (threads inherit it)
    others_list = ",".join(map(str, others))
    names = ", ".join(config_name(config) for config in configs)
    print(f"machine: {len(cores)} cores; worker host on core {worker_core} ({names}); store, api and client"
          f" on {others_list}")  # fmt: skip
    env = {**os.environ, "BACKDROP_THREADS": "1", **dict(item.split("=", 1) for item in args.worker_env)}
    with (
        tempfile.TemporaryDirectory(prefix="backdrop-hosts-") as root,
        TestHosts(["client", "api", "store", "worker-1"]) as hosts,
    ):
        cpus = {"worker-1": str(worker_core), "store": others_list, "api": others_list}
        pool, concurrency, recorded = configs[0]
        engine = env.get("BACKDROP_ENGINE", "auto")
        worker_env = {**env, "BACKDROP_ENGINE": "recorded" if recorded else engine}
        hosted = HostedService(
            hosts, Path(root), worker_env, workers=("worker-1",), cpus=cpus, pool=pool, concurrency=concurrency,
            worker_include=("bench.recorded_engine",),
        )  # fmt: skip
        hosted.start()
        processes = hosted.processes
        current: list[Config] = [configs[0]]

        def switch_to(config: Config) -> Bench:
            if current[0] != config:
                processes["worker-1"].stop(timeout_s=60)
                hosted.pool, hosted.concurrency, recorded = config
                # Read by the worker only (the API loads no model); the people models stay on LiteRT.
                hosted.env["BACKDROP_ENGINE"] = "recorded" if recorded else engine
                hosted.start_worker("worker-1")
                current[0] = config
            worker = processes["worker-1"].process.pid
            meter = CpuMeter(
                {
                    "worker": [worker],
                    "api": [processes["api"].process.pid, processes["beat"].process.pid],
                    "store": [processes["redis"].process.pid, processes["s3"].process.pid],
                },
                alone={"worker main": worker},
            )
            bench = Bench(hosted.api_url, hosted.settings, meter, [], lambda function: hosts.call("client", function))
            bench.burst(images["0.3 MP"], 4, 1)  # warm-up
            return bench

        rows, bare = [], {}
        for label, image in images.items():
            count = args.small_jobs if label == "0.3 MP" else args.large_jobs
            runs: dict[Config, list] = {config: [] for config in configs}
            singles: dict[Config, list[float]] = {config: [] for config in configs}
            in_jobs: dict[Config, list[float]] = {config: [] for config in configs}
            bare_runs, bare_singles, loaded_runs, loads = [], [], [], []
            for _ in range(args.repeat):
                *bare_run, alone = bare_pipeline(image, 1, cpus={worker_core}, singles=max(5, count // 8))
                bare_runs.append(bare_run)
                bare_singles += alone
                for config in configs:
                    bench = switch_to(config)
                    runs[config].append(bench.burst(image, count, 1))
                    in_jobs[config] += bench.pipeline_ms
                    singles[config] += hosts.call("client", one_at_a_time, hosted.api_url, image, max(5, count // 8))
                # The bare pipeline again, with the other cores as busy as the first configuration's servers
                # and client kept them (the service's neighbour load, as a spin loop).
                rate, _, cpu = runs[configs[0]][-1]
                busy = sum(cpu[name] for name in ("api", "store", "client")) * rate / 1e3 / len(others)
                loads.append(min(1.0, busy))
                loaded_runs.append(bare_pipeline(image, 1, cpus={worker_core}, neighbour=(set(others), loads[-1])))
            bare[label] = (
                statistics.median(r for r, _ in bare_runs),
                statistics.median(c for _, c in bare_runs),
                statistics.median(bare_singles),
                statistics.median(r for r, _, _ in loaded_runs),
                statistics.median(loads),
            )
            for config in configs:
                rate = statistics.median(r for r, _, _ in runs[config])
                cpu = {name: statistics.median(c[name] for _, _, c in runs[config]) for name in runs[config][0][2]}
                single = singles[config]
                cpu["pipeline in jobs"] = statistics.median(in_jobs[config])  # wall ms, not CPU
                rows.append((label, config, rate, statistics.median(single), percentile(single, 0.95), cpu))
    print(f"\n{'size':>7} {'worker':>18} {'bare img/s':>10} {'jobs/s':>7} {'efficiency':>10} {'bare ms':>8}"
          f" {'p50 ms':>7} {'p95 ms':>7} {'overhead p50':>12} {'bare alone':>10} {'overhead':>8}"
          f" {'bare+load':>9} {'load':>5} {'eff. vs it':>10}")  # fmt: skip
    for label, config, rate, p50, p95, _ in rows:
        bare_rate, _, alone, loaded_rate, load = bare[label]
        bare_ms = 1e3 / bare_rate
        print(f"{label:>7} {config_name(config):>18} {bare_rate:10.2f} {rate:7.2f} {rate / bare_rate:10.2f}"
              f" {bare_ms:8.1f} {p50:7.1f} {p95:7.1f} {p50 - bare_ms:12.1f} {alone:10.1f}"
              f" {p50 - alone:8.1f} {loaded_rate:9.2f} {load:5.2f} {rate / loaded_rate:10.2f}")  # fmt: skip
    parts = ("worker", "worker main", "api", "store", "client")
    print(f"\nCPU ms per job {'':>11}" + "".join(f"{name:>12}" for name in parts) + f"{'bare':>9}{'extra':>9}")
    for label, config, *_, cpu in rows:
        cells = "".join(f"{cpu[name]:12.1f}" for name in parts)
        extra = cpu["worker"] - bare[label][1]
        print(f"{label:>7} {config_name(config):>18}{cells}{bare[label][1]:9.1f}{extra:9.1f}")
    print(f"\nThe pipeline's own stages (decode to encode), wall ms per image {'':>4}{'in jobs':>10}{'bare':>9}")
    for label, config, *_, cpu in rows:
        print(f"{label:>7} {config_name(config):>18}{'':>36}{cpu['pipeline in jobs']:10.1f}{1e3 / bare[label][0]:9.1f}")
    print("\n(jobs/s: bursts of jobs through the service, from the first submission to the last job's finished_at;")
    print(" p50/p95: jobs one at a time, from the client's POST to its answer with Prefer: wait; overhead: p50 -")
    print(" bare ms; worker main: the node's main process alone, included in worker; extra: worker - bare;")
    print(" pipeline in jobs: the stages' times the jobs recorded, median, against the bare pipeline's time;")
    print(f" bare alone: the bare pipeline's p50 with {SINGLE_GAP_S * 1e3:.0f} ms between images, as single jobs come;")
    print(" the last overhead: p50 - bare alone; bare+load: the bare pipeline's img/s while a spin loop keeps")
    print(" the other core(s) busy the share ('load') the first configuration's API, store and client used)")
    return 0


# --- the drop-in routes and the answers that wait ------------------------------------------------------


def _multipart_fields(fields: dict[str, str], image: bytes, image_field: str) -> tuple[bytes, str]:
    boundary = "backdrop-bench-" + os.urandom(8).hex()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{image_field}"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def compat(stack: LocalStack, image: bytes, count: int) -> None:
    import requests

    api = stack.api_url
    settings = Settings.from_env(stack.env)
    store = JobStore.connect(settings.redis_url, ttl_s=3600)
    connection = Connection(api)
    v1_body, v1_type = _multipart_fields({"effect": "cutout", "format": "png"}, image, "image")
    rb_body, rb_type = _multipart_fields({"size": "full", "type": "person", "format": "png"}, image, "image_file")

    def through_v1() -> float:
        started = time.perf_counter()
        _, answer = connection.call("POST", "/v1/jobs", v1_body, {"Content-Type": v1_type})
        job_id = json.loads(answer)["id"]
        while True:
            _, answer = connection.call("GET", f"/v1/jobs/{job_id}")
            job = json.loads(answer)
            if JobStatus(job["status"]).finished:
                break
            time.sleep(0.005)
        requests.get(job["result"]["url"], timeout=30).raise_for_status()
        return (time.perf_counter() - started) * 1e3

    def through_removebg() -> float:
        started = time.perf_counter()
        status, _ = connection.call("POST", "/v1.0/removebg", rb_body, {"Content-Type": rb_type})
        if status != 200:
            raise RuntimeError(f"remove.bg route answered {status}")
        return (time.perf_counter() - started) * 1e3

    for _ in range(3):  # warm-up
        through_v1(), through_removebg()
    v1, rb = [], []
    for _ in range(count):  # alternating: the machine's drift hits both alike
        v1.append(through_v1())
        rb.append(through_removebg())
    print(f"0.3 MP cut-out, one at a time, {count} each:")
    for label, times in (("POST /v1/jobs + poll every 5 ms + fetch", v1), ("POST /v1.0/removebg (waits)", rb)):
        print(f"  {label:>40}: p50 {statistics.median(times):6.1f} ms  p95 {percentile(times, 0.95):6.1f}")
    print(f"  the route's overhead, p50: {statistics.median(rb) - statistics.median(v1):+.1f} ms")

    # Webhooks: a receiver on loopback, arrival against the record's finished_at.
    arrivals: dict[str, float] = {}

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            arrivals[json.loads(body)["id"]] = time.time()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    hook_body, hook_type = _multipart_fields({"callback_url": hook}, image, "image")
    ids = []
    for _ in range(count):
        _, answer = connection.call("POST", "/v1/jobs", hook_body, {"Content-Type": hook_type})
        ids.append(json.loads(answer)["id"])
        deadline = time.monotonic() + 30
        while ids[-1] not in arrivals and time.monotonic() < deadline:
            time.sleep(0.01)
    delays = [(arrivals[i] - store.get(i).finished_at) * 1e3 for i in ids if i in arrivals]  # type: ignore[operator]
    server.shutdown()
    print(
        f"webhooks: {len(delays)}/{count} arrived; from the job's end: p50 {statistics.median(delays):.1f} ms"
        f"  p95 {percentile(delays, 0.95):.1f} ms"
    )

    # Submissions while 64 requests wait on jobs no worker takes meanwhile.
    control = make_celery(settings).control
    host = socket.gethostname()

    def submissions(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            status, _ = connection.call("POST", "/v1/jobs", v1_body, {"Content-Type": v1_type})
            times.append((time.perf_counter() - started) * 1e3)
            if status != 202:
                raise RuntimeError(f"submission answered {status}")
        return times

    control.cancel_consumer(settings.queue, destination=[f"backdrop@{host}"], reply=True, timeout=5)
    try:
        submissions(10)
        alone = submissions(count * 2)
        waited = []

        def wait_one() -> None:
            own = Connection(api)
            started = time.perf_counter()
            status, _ = own.call("POST", "/v1/jobs", v1_body, {"Content-Type": v1_type, "Prefer": "wait=60"})
            waited.append((status, time.perf_counter() - started))
            own.close()

        waiters = [threading.Thread(target=wait_one, daemon=True) for _ in range(64)]
        for thread in waiters:
            thread.start()
        time.sleep(2)  # every waiter has sent its request
        still = sum(thread.is_alive() for thread in waiters)
        crowded = submissions(count * 2)
    finally:
        control.add_consumer(settings.queue, destination=[f"backdrop@{host}"], reply=True, timeout=5)
    for thread in waiters:
        thread.join(timeout=120)
    print(f"POST /v1/jobs alone: p50 {statistics.median(alone):.1f} ms  p95 {percentile(alone, 0.95):.1f} ms")
    print(
        f"with 64 requests waiting ({still} waiting when measured): p50 {statistics.median(crowded):.1f} ms"
        f"  p95 {percentile(crowded, 0.95):.1f} ms  ({percentile(crowded, 0.95) / percentile(alone, 0.95):.2f}x)"
    )
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-jobs", type=int, default=120)
    parser.add_argument("--large-jobs", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (medians are printed)")
    parser.add_argument("--compat", action="store_true", help="the drop-in routes, webhooks and waiting answers")
    parser.add_argument("--hosts", action="store_true", help="across test hosts, the worker on a core of its own")
    parser.add_argument("--pool", default="prefork", help="with --hosts: the worker's Celery pool (prefork, threads)")
    parser.add_argument("--concurrency", type=int, default=1, help="with --hosts: the worker's concurrency")
    parser.add_argument(
        "--configs", help="with --hosts: worker configurations measured in turn, e.g. prefork:1,threads:2"
    )
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE", help="with --hosts: more worker settings"
    )
    args = parser.parse_args()
    if args.hosts:
        return across_hosts(args, {label: jpeg(*size) for label, size in SIZES.items()})
    if args.compat:
        env = {**os.environ, "BACKDROP_WORKER_METRICS_PORT": "0",
               "BACKDROP_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
               "BACKDROP_WEBHOOK_SECRETS": "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtMTIz"}  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="backdrop-compat-") as root:
            stack = LocalStack(root=Path(root), api_port=free_port(), workers=2)
            stack.start(env)
            try:
                print(f"machine: {os.cpu_count()} cores; make run's stack (2 worker processes, 2 API processes)\n")
                compat(stack, jpeg(*SIZES["0.3 MP"]), args.small_jobs // 4)
            finally:
                stack.stop()
        return 0
    images = {label: jpeg(*size) for label, size in SIZES.items()}
    sizes = ", ".join(f"{label} {len(image) // 1024} KiB" for label, image in images.items())
    print(f"machine: {os.cpu_count()} cores; one inference thread per process; JPEGs: {sizes}\n")
    bare = {label: {n: bare_pipeline(image, n)[:2] for n in WORKER_COUNTS} for label, image in images.items()}
    results, submissions = run(args, images)
    print(
        f"{'size':>7} {'procs':>5} {'bare img/s':>10} {'service jobs/s':>14} {'efficiency':>10}"
        f" {'p50 ms':>7} {'p95 ms':>7}"
    )
    for label, measured in results.items():
        for workers, m in measured.items():
            rate = bare[label][workers][0]
            print(
                f"{label:>7} {workers:>5} {rate:10.2f} {m.rate:14.2f} {m.rate / rate:10.2f} {m.p50:7.0f} {m.p95:7.0f}"
            )
    names = ("api", "workers", "redis", "s3", "client")
    print(f"\nCPU ms per job {'':>8}" + "".join(f"{name:>9}" for name in names) + f"{'total':>9}{'bare':>8}")
    for label, measured in results.items():
        for workers, m in measured.items():
            cells = "".join(f"{m.cpu[name]:9.1f}" for name in names)
            total = sum(m.cpu[name] for name in names)
            print(f"{label:>7} {workers} worker(s) {cells}{total:9.1f}{bare[label][workers][1]:8.1f}")
    print(f"\nAPI: {submissions:.0f} submissions/s of 0.3 MP JPEGs (16 clients) while two workers process them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
