"""Where a job's CPU goes, by part: in the worker against the bare pipeline on the same bytes, and in the
API per submission.

    .venv/bin/python bench/job_profile.py [--jobs 60] [--rounds 3] [--size 2000x1125] [--cprofile]

Real Redis and S3 (SeaweedFS) on loopback; jobs submitted through the API's own code (a Flask test
client: upload stored, record written, message queued); then this process runs them one at a time with
the worker's own ``JobRunner``, as a Celery pool process does after receiving the message, with every
collaborator's calls timed: the job's start (Redis), the upload's read, the pipeline, the result's put
(S3: body hash, signing, the request), the terminal write, the inputs' delete. CPU is the calling
thread's (``thread_time``); the lease keeper's thread is counted apart. Rounds of jobs alternate with
rounds of the bare pipeline (``Pipeline.process`` on the same bytes), so the machine's drift hits both.
What this leaves out, measured by ``bench/throughput.py --hosts``: Celery's receiving and handing on of
the message, and waiting on the servers when they share the worker's core.

The submissions themselves are measured the same way, in the API's own code (the WSGI application, called
by the test client): the request's parsing, the photo's probe, the upload's store, the record, the queue's
message; the test client's own work (building the request) is left out.

With ``--cprofile``: the functions that cost most, summed over one round of jobs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api import Services, create_app
from backdrop.params import JobParams
from backdrop.pipeline import Pipeline
from backdrop.pipeline.allocator import retain_freed_memory
from backdrop.service.localstack import (
    S3Credentials,
    free_port,
    service_env,
    start_redis,
    start_s3,
)
from backdrop.settings import Settings
from bench.throughput import jpeg
from worker.video import VideoRunner

PARTS = ("start", "upload get", "pipeline", "result put", "finish", "inputs delete")
SUBMISSION_PARTS = ("probe", "queue depth", "upload put", "record", "queue message")


class PartMeter:
    """CPU (this thread) and wall milliseconds spent inside named calls, summed per job."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.thread = threading.get_ident()

    def wrap(self, owner: object, attribute: str, part: str) -> None:
        function: Callable = getattr(owner, attribute)

        def timed(*args: object, **kwargs: object) -> object:
            if threading.get_ident() != self.thread:  # the lease keeper's calls count apart
                return function(*args, **kwargs)
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.cpu[part] += (time.thread_time() - cpu) * 1e3
                self.wall[part] += (time.perf_counter() - wall) * 1e3

        setattr(owner, attribute, timed)

    def wrap_all(self, calls: list[tuple[object, str, str]]) -> None:
        """``wrap`` for each (owner, attribute, part)."""
        for owner, attribute, part in calls:
            self.wrap(owner, attribute, part)

    def reset(self) -> None:
        self.cpu.clear()
        self.wall.clear()


@contextmanager
def servers(root: Path, cores: set[int]) -> Iterator[Settings]:
    """Redis and S3 on ``cores``."""
    credentials = S3Credentials.generate()
    redis_port, s3_port = free_port(), free_port()
    (root / "log").mkdir()
    pinned = ["taskset", "--cpu-list", ",".join(map(str, sorted(cores)))]
    redis = start_redis(root / "redis", redis_port, root / "log", prefix=pinned)
    s3 = start_s3(root / "s3", s3_port, credentials, "backdrop", root / "log", prefix=pinned)
    try:
        env = service_env(
            {**os.environ, "BACKDROP_THREADS": "1"},
            redis_port=redis_port,
            s3_port=s3_port,
            credentials=credentials,
            bucket="backdrop",
        )
        yield Settings.from_env(env)
    finally:
        for process in (s3, redis):
            process.stop()


def submit(client, image: bytes, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        answer = client.post("/v1/jobs", data={"image": (io.BytesIO(image), "p.jpg"), "effect": "blur"})
        assert answer.status_code == 202, answer.data[:300]
        ids.append(answer.get_json()["id"])
    return ids


def instrument_api(app, services: Services, meter: PartMeter) -> None:
    """The API's parts of a submission; ``request`` is the whole WSGI call."""
    import api.submission

    meter.wrap_all(
        [
            (api.submission, "probe_image", "probe"),
            (services.jobs, "queue_depth", "queue depth"),
            (services.uploads, "put", "upload put"),
            (services.jobs, "create", "record"),
            (api.submission, "enqueue", "queue message"),
            (app, "wsgi_app", "request"),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=60, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="2000x1125", help="WIDTHxHEIGHT of the JPEG (quality 90)")
    parser.add_argument("--cprofile", action="store_true", help="the costliest functions over one round of jobs")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    image = jpeg(width, height)
    # This process (the worker) on the first core, the servers on the others where there are others.
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    server_cores = set(cores[1:]) or {cores[0]}
    with (
        tempfile.TemporaryDirectory(prefix="backdrop-profile-") as folder,
        servers(Path(folder), server_cores) as settings,
    ):
        retain_freed_memory(settings.retain_freed_memory_mb)  # as the workers do
        services = Services.from_settings(settings)
        app = create_app(services=services)
        client = app.test_client()
        api_meter = PartMeter()
        instrument_api(app, services, api_meter)
        pipeline = Pipeline(settings)
        pipeline.preload(settings.worker_models)
        runner = VideoRunner(
            settings, pipeline, services.storage, services.uploads, services.jobs, queue_task=lambda *_: None
        )
        runner.leases.start()
        meter = PartMeter()
        meter.wrap_all(
            [
                (runner.jobs, "start", "start"),
                (runner.uploads, "get", "upload get"),
                (runner.pipeline, "process", "pipeline"),
                (runner.storage, "put", "result put"),
                (runner.jobs, "succeed", "finish"),
                (runner.uploads, "delete", "inputs delete"),
            ]
        )
        for job_id in submit(client, image, 4):  # warm-up: connections, caches, the allocator
            runner.run(job_id)
            pipeline.process(image, JobParams())
        jobs: list[dict[str, float]] = []
        bare: list[tuple[float, float]] = []
        profile = cProfile.Profile() if args.cprofile else None
        submissions: list[dict[str, float]] = []
        for round_number in range(args.rounds):
            api_meter.reset()
            ids = submit(client, image, args.jobs)
            submissions.append({part: api_meter.cpu[part] / args.jobs for part in (*SUBMISSION_PARTS, "request")})
            meter.reset()
            cpu, wall, process_cpu = time.thread_time(), time.perf_counter(), time.process_time()
            if profile and round_number == 0:
                profile.enable()
            for job_id in ids:
                outcome = runner.run(job_id)
                assert outcome == "succeeded", outcome
            if profile and round_number == 0:
                profile.disable()
            row = {part: meter.cpu[part] / args.jobs for part in PARTS}
            row["job cpu"] = (time.thread_time() - cpu) * 1e3 / args.jobs
            row["job wall"] = (time.perf_counter() - wall) * 1e3 / args.jobs
            row["other threads cpu"] = (time.process_time() - process_cpu) * 1e3 / args.jobs - row["job cpu"]
            row.update({f"{part} wall": meter.wall[part] / args.jobs for part in PARTS})
            jobs.append(row)
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(args.jobs):
                pipeline.process(image, JobParams())
            bare.append(((time.thread_time() - cpu) * 1e3 / args.jobs, (time.perf_counter() - wall) * 1e3 / args.jobs))

    def median(name: str) -> float:
        return statistics.median(row[name] for row in jobs)

    bare_cpu, bare_wall = statistics.median(c for c, _ in bare), statistics.median(w for _, w in bare)
    print(f"{width}x{height} JPEG ({len(image) / 1e3:.0f} KB), {args.rounds} rounds of {args.jobs} jobs, medians;"
          f" worker on core {cores[0]}, servers on {sorted(server_cores)}")  # fmt: skip
    print(f"\n{'part':<22}{'CPU ms':>8}{'wall ms':>9}")
    for part in PARTS:
        print(f"{part:<22}{median(part):8.2f}{median(part + ' wall'):9.2f}")
    outside = median("job cpu") - sum(median(part) for part in PARTS)
    print(f"{'rest of the runner':<22}{outside:8.2f}")
    print(f"{'lease thread':<22}{median('other threads cpu'):8.2f}")
    print(f"{'job, in all':<22}{median('job cpu'):8.2f}{median('job wall'):9.2f}")
    print(f"{'bare pipeline':<22}{bare_cpu:8.2f}{bare_wall:9.2f}")
    extra = median("job cpu") + median("other threads cpu") - bare_cpu
    print(f"\nextra CPU per job over the bare pipeline: {extra:.2f} ms"
          f" (of it the pipeline inside the job: {median('pipeline') - bare_cpu:+.2f} ms)")  # fmt: skip
    print(f"\nA submission in the API (CPU ms, medians){'':>4}")
    for part in (*SUBMISSION_PARTS, "request"):
        print(f"{part:<22}{statistics.median(row[part] for row in submissions):8.2f}")
    rest = statistics.median(row["request"] - sum(row[part] for part in SUBMISSION_PARTS) for row in submissions)
    print(f"{'of it the rest':<22}{rest:8.2f}  (multipart parsing, Flask, the answer)")
    if profile:
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime")
        print("\ncostliest functions, one round (the pipeline's own included):")
        stats.print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
