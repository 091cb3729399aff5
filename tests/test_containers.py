"""The images built and the compose files run, with podman (or docker) on this machine: what users run.

The three images build (``harness.containers``, as ``make images`` does; where no registry answers,
on local stand-ins of the upstream images), run as uid 10001, carry no secret, and a worker with no
network has every model verified. ``docker-compose.yml`` comes up with a ``.env`` made from
``.env.example``; jobs go through the API's container, results are fetched from the host through the
presigned URL; two workers share jobs and a worker killed mid-job hands it on; the live container
answers frames; ``down``/``up`` keeps queued and finished jobs; the Sentinel override survives its
primary's death; the GPU override merges.

Needs root and podman (or docker with compose); skipped with the reason elsewhere, but CI runs it
(``BACKDROP_REQUIRE_CONTAINERS=1``). Figures (sizes, times, memory) are written to
``var/containers-figures.json`` for docs/deploy.md.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import av
import pytest
import requests
import yaml
from websockets.sync.client import connect

from backdrop.service.jobs import ATTEMPTS_SUFFIX, KEY_PREFIX
from harness import containers
from harness.containers import ComposeProject, ContainersUnavailable, Engine, container_name
from tests import videos
from tests.conftest import decode_rgb, encode_rgb
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "var" / "containers-figures.json"
TERMINAL = {"succeeded", "failed", "cancelled"}
# How long every job accepted around a failover may take to end: three sweeps (60 s apart, the default)
# and a lease, with room for a loaded machine.
RECOVERY_S = 420


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the container tests need root (podman's root storage and networks)"
    try:
        engine = containers.detect_engine()
        containers.compose_command(engine)
    except (ContainersUnavailable, subprocess.SubprocessError) as exc:
        return str(exc)
    return None


REASON = _unavailable()
if REASON is not None:
    if os.environ.get("BACKDROP_REQUIRE_CONTAINERS") == "1":
        raise RuntimeError(f"BACKDROP_REQUIRE_CONTAINERS=1, but: {REASON}")
    pytest.skip(REASON, allow_module_level=True)


def record_figures(**figures: object) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    known.update(figures)
    FIGURES.write_text(json.dumps(known, indent=2, sort_keys=True))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return containers.detect_engine()


@pytest.fixture(scope="module")
def images(engine: Engine) -> containers.BuildReport:
    """``make images``, with this machine's CA bundle mounted into the builds where it has one."""
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    ca_bundle = Path(bundle) if bundle and Path(bundle).is_file() and engine.name == "podman" else None
    report = containers.build_images(engine, ca_bundle=ca_bundle)
    record_figures(build_seconds=report.seconds, image_mb=report.sizes_mb, upstream=report.upstream)
    return report


def env_file(folder: Path, **overrides: str) -> Path:
    """A ``.env`` made from ``.env.example``: the same variables, with keys of its own."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("BACKDROP_S3_ACCESS_KEY="):
            line = "BACKDROP_S3_ACCESS_KEY=backdrop-" + secrets.token_hex(6)
        elif line.startswith("BACKDROP_S3_SECRET_KEY="):
            line = "BACKDROP_S3_SECRET_KEY=" + secrets.token_urlsafe(24)
        elif line.startswith("# BACKDROP_REDIS_PASSWORD="):
            line = "BACKDROP_REDIS_PASSWORD=" + secrets.token_hex(16)
        lines.append(line)
    lines += [f"{name}={value}" for name, value in overrides.items()]
    path = folder / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


class Service:
    """The API of a compose project, from the host."""

    def __init__(self, project: ComposeProject, api_port: int, live_port: int) -> None:
        self.project = project
        self.url = f"http://127.0.0.1:{api_port}"
        self.live_url = f"ws://127.0.0.1:{live_port}/v1/live"

    def submit(self, field: str, name: str, data: bytes, **params: str) -> str:
        response = requests.post(f"{self.url}/v1/jobs", files={field: (name, data)}, data=params, timeout=60)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        response = requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def ended(self, job_id: str, timeout_s: float = 180) -> dict:
        return wait_for(
            lambda: (job := self.job(job_id))["status"] in TERMINAL and job, timeout_s, f"job {job_id}", poll_s=0.25
        )

    def valkey_cli(self, *args: str) -> str:
        """What ``valkey-cli`` answers inside the project's Redis container."""
        redis = self.project.container_names("redis")[0]
        return self.project.engine.text("exec", redis, "valkey-cli", *args)

    def record_field(self, job_id: str, name: str) -> str:
        """A field of the job's record in Redis that the API does not show (which worker, which attempt)."""
        answer = self.valkey_cli("HGET", f"{KEY_PREFIX}{job_id}", name)
        return str(json.loads(answer)) if answer.strip() else ""

    def part_attempts(self, job_id: str) -> dict[str, int]:
        """A video's attempts per part (its plan, each chunk, its join): a part taken over counts 2."""
        words = self.valkey_cli("--raw", "HGETALL", f"{KEY_PREFIX}{job_id}{ATTEMPTS_SUFFIX}").split()
        return {part: int(count) for part, count in zip(words[::2], words[1::2], strict=True)}


def fetched_result(service: Service, job: dict) -> bytes:
    """The result from the host through its presigned URL (the S3 server's published port)."""
    assert job["status"] == "succeeded", job
    url = job["result"]["download_url"]
    assert url.startswith(service.project.env["BACKDROP_S3_PUBLIC_URL"]), url
    response = requests.get(url, timeout=60)
    assert response.status_code == 200, response.text[:300]
    return response.content


def memory_mb(engine: Engine, project: ComposeProject) -> dict[str, float]:
    """Each container's memory now (``stats --no-stream``), in MB."""
    rows = json.loads(engine.text("stats", "--no-stream", "--format", "json", *project.container_names()))
    units = {"kb": 1e-3, "kib": 1.024e-3, "mb": 1, "mib": 1.048576, "gb": 1e3, "gib": 1073.741824, "b": 1e-6}
    found = {}
    for row in rows:
        used = str(row.get("mem_usage") or row.get("MemUsage")).split("/")[0].strip().lower()
        number = float("".join(c for c in used if c.isdigit() or c == "."))
        unit = used.lstrip("0123456789.").strip()
        found[row.get("name") or row.get("Name")] = round(number * units[unit], 1)
    return found


@pytest.fixture(scope="module")
def photo(astronaut) -> bytes:
    return encode_rgb(astronaut, quality=90)


@pytest.fixture(scope="module")
def compose(engine: Engine, images, tmp_path_factory) -> Iterator[Service]:
    """``docker-compose.yml`` up, with a ``.env`` from ``.env.example``, on free ports of 127.0.0.1."""
    ports = {"PORT": free_port(), "S3_PORT": free_port(), "LIVE_PORT": free_port()}
    folder = tmp_path_factory.mktemp("compose")
    public = f"http://localhost:{ports['S3_PORT']}"
    env = env_file(folder, **{k: str(v) for k, v in ports.items()}, BACKDROP_S3_PUBLIC_URL=public)
    project = ComposeProject(
        engine, f"bdtest{os.getpid()}", [containers.COMPOSE_FILE], env, env={"BACKDROP_S3_PUBLIC_URL": public}
    )
    project.down(volumes=True)
    service = Service(project, ports["PORT"], ports["LIVE_PORT"])
    try:
        with project.health_checks_ticked():
            started = time.monotonic()
            project.up(timeout=600)
            up_s = time.monotonic() - started
            project.wait_healthy(timeout_s=180)
            healthy_s = time.monotonic() - started
            record_figures(compose_up_s=round(up_s, 1), compose_healthy_s=round(healthy_s, 1), up_started=started)
            yield service
    finally:
        for name in project.container_names():
            if project.health().get(name) not in ("healthy", "none"):
                print(f"--- {name} ---\n{project.logs(name)}")
        project.down(volumes=True)


def test_the_images_run_as_10001_hold_no_secret_and_the_worker_needs_no_network(engine, images):
    for target in containers.TARGETS:
        image = f"backdrop-{target}"
        config = engine.image(image)["Config"]
        assert config.get("User") == "10001", (image, config.get("User"))
        assert engine.text("run", "--rm", "--entrypoint", "id", image, "-u").strip() == "10001"
        for variable in config.get("Env") or []:
            name = variable.split("=", 1)[0].upper()
            assert not any(word in name for word in ("KEY", "SECRET", "PASSWORD", "TOKEN")), (image, variable)
        history = engine.text("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
        assert "ca-certificates.crt" not in history and "BACKDROP_S3_SECRET" not in history, image
        listing = engine.text("run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c",
                              "find / -xdev \\( -name .env -o -name '*.pem' -o -name id_rsa -o -name .git "
                              "-o -name .aws \\) -not -path '/usr/*' -not -path '/etc/ssl/*' 2>/dev/null")  # fmt: skip
        assert listing.strip() == "", (image, listing)
        shipped = engine.run("run", "--rm", "--entrypoint", "ls", image, "/app/harness", "/app/tests", check=False)
        assert shipped.returncode != 0, (image, shipped.stdout)  # the harnesses and tests are not shipped
    listed = engine.text("run", "--rm", "--network", "none", "backdrop-worker", "backdrop", "models", "list", "--json")
    files = [file for model in json.loads(listed)["models"] for file in model["files"]]
    assert files and all(file["cached"] for file in files), listed
    assert engine.run("run", "--rm", "--network", "none", "backdrop-api", "python", "-c", "import cv2",
                      check=False).returncode != 0  # fmt: skip  # the API image carries no ML stack


def test_the_sentinel_override_survives_its_primary(engine, images, photo, tmp_path):
    ports = {"PORT": free_port(), "S3_PORT": free_port(), "LIVE_PORT": free_port()}
    public = f"http://localhost:{ports['S3_PORT']}"
    env = env_file(tmp_path, **{k: str(v) for k, v in ports.items()}, BACKDROP_S3_PUBLIC_URL=public)
    files = [containers.COMPOSE_FILE, containers.ROOT / "deploy" / "docker-compose.sentinel.yml"]
    project = ComposeProject(engine, f"bdsent{os.getpid()}", files, env, env={"BACKDROP_S3_PUBLIC_URL": public})
    service = Service(project, ports["PORT"], ports["LIVE_PORT"])
    project.down(volumes=True)
    accepted: list[str] = []
    try:
        with project.health_checks_ticked():
            project.up("api", "worker", "beat", "sentinel-1", "sentinel-2", "sentinel-3", "redis-replica")
            project.wait_healthy(timeout_s=240)
            for _ in range(4):
                accepted.append(service.submit("image", "me.jpg", photo, effect="gray"))
            primary = project.container_names("redis")[0]
            sentinel = project.container_names("sentinel-1")[0]
            password = next(line.split("=", 1)[1] for line in env.read_text().splitlines()
                            if line.startswith("BACKDROP_REDIS_PASSWORD="))  # fmt: skip

            def primary_address() -> str:
                asked = engine.run("exec", sentinel, "valkey-cli", "-p", "26379", "-a", password, "--no-auth-warning",
                                   "sentinel", "get-master-addr-by-name", "backdrop", check=False)  # fmt: skip
                return asked.stdout.decode().split("\n")[0].strip()

            before = primary_address()
            engine.run("kill", "--signal", "KILL", primary)
            # Marked stopped, so its restart policy does not bring it back (the containers that depend on it
            # keep it from being removed).
            project.stop(primary, timeout_s=0)
            wait_for(lambda: primary_address() not in ("", before), 120, "the sentinels to promote the replica", 1)

            def accepts() -> bool:
                try:
                    files = {"image": ("me.jpg", photo)}
                    response = requests.post(f"{service.url}/v1/jobs", files=files, data={"effect": "gray"}, timeout=15)
                except requests.RequestException:
                    return False
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                    return True
                assert response.status_code == 503, response.text
                return False

            wait_for(accepts, 120, "the service to accept jobs after the failover", poll_s=1)
            for _ in range(3):
                accepted.append(service.submit("image", "me.jpg", photo, effect="gray"))
            # A job whose queue message the failover lost (accepted while the replica lagged) ends once the
            # sweep (every 60 s here) has found it without a message twice, 30 s or more apart; one running
            # on the dead primary's data, once its lease (30 s) runs out. One deadline for all of them.
            deadline = time.monotonic() + RECOVERY_S
            ends = [service.ended(job_id, max(1.0, deadline - time.monotonic()))["status"] for job_id in accepted]
            assert ends == ["succeeded"] * len(accepted), ends
    except AssertionError:
        for job_id in accepted:  # what became of each (the job store is the promoted replica now)
            with suppress(Exception):
                print(job_id, service.job(job_id)["status"])
        for container in project.containers(running_only=False):  # a worker that exited too
            name = container_name(container)
            print(f"{name}: {container.get('State')} {container.get('Status', '')}")
            if any(part in name for part in ("worker", "api", "sentinel-1")):
                print(f"--- {name} ---\n{project.logs(name, tail=80)}")
        raise
    finally:
        project.down(volumes=True)


def test_compose_up_runs_a_photo_and_a_video_through_the_api_container(compose: Service, photo, tmp_path):
    states = compose.project.health()
    assert {"healthy"} == {s for s in states.values() if s != "none"}, states
    assert sum(s == "healthy" for s in states.values()) >= 4, states  # redis, s3, api, live
    job = compose.ended(compose.submit("image", "me.jpg", photo, effect="blur"))
    first_finished_s = time.monotonic() - json.loads(FIGURES.read_text())["up_started"]
    record_figures(compose_up_to_first_photo_s=round(first_finished_s, 1))
    result = decode_rgb(fetched_result(compose, job))
    assert result.shape == (512, 512, 3) and job["found"] is True

    clip = videos.write_video(tmp_path / "clip.mp4", frames=48, width=320, height=240, audio_seconds=1.6)
    video_job = compose.ended(compose.submit("video", "clip.mp4", clip.read_bytes(), effect="blur"))
    with av.open(io.BytesIO(fetched_result(compose, video_job))) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 48 and video_job["result"]["audio"], video_job


def test_the_live_container_answers_frames_from_the_host(compose: Service, photo):
    with connect(compose.live_url, max_size=None, open_timeout=30) as session:
        for _ in range(3):
            session.send(photo)
        answers = [session.recv(timeout=60) for _ in range(3)]
    assert all(isinstance(a, bytes) and decode_rgb(a).shape == (512, 512, 3) for a in answers)


def test_two_workers_share_jobs_and_one_killed_mid_job_hands_it_on(compose: Service, engine, photo, tmp_path):
    project = compose.project
    started = time.monotonic()
    project.up("worker", scale={"worker": 2})
    workers = wait_for(lambda: len(n := project.container_names("worker")) == 2 and n, 60, "two workers")
    for name in workers:  # Celery says so once its processes have loaded the models
        wait_for(lambda name=name: " ready." in project.logs(name, tail=400), 120, f"{name} ready", poll_s=0.5)
    ids = [compose.submit("image", "me.jpg", photo, effect="gray") for _ in range(12)]
    ended = [compose.ended(job_id) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in ended)
    hosts = {compose.record_field(job_id, "worker").rsplit(":", 1)[0] for job_id in ids}
    assert len(hosts) == 2, hosts  # both workers took jobs
    record_figures(scale_to_two_and_12_jobs_s=round(time.monotonic() - started, 1))

    # A clip long enough to be caught mid-job; the worker that holds it is killed outright.
    clip = videos.write_video(tmp_path / "long.mp4", frames=240, width=640, height=360)
    job_id = compose.submit("video", "long.mp4", clip.read_bytes(), effect="blur")

    def rendering() -> str | None:  # the worker whose log says it renders the clip's chunk
        for name in workers:
            if any(job_id in line and "rendering" in line for line in project.logs(name, tail=200).splitlines()):
                return name
        return None

    victim = wait_for(rendering, 60, "a worker to render the clip", poll_s=0.2)
    record_figures(memory_mb_under_load=memory_mb(engine, project))  # a chunk rendering, jobs done just now
    engine.run("kill", "--signal", "KILL", victim)
    engine.run("rm", "--force", victim)  # no restart: the job must go to the other worker
    job = compose.ended(job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    assert max(compose.part_attempts(job_id).values()) >= 2, compose.part_attempts(job_id)  # a part taken over
    survivor = next(name for name in workers if name != victim)
    assert any(job_id in line and "rendering" in line for line in project.logs(survivor, tail=400).splitlines())


def test_down_and_up_keep_queued_and_finished_jobs(compose: Service, photo):
    project = compose.project
    finished = compose.ended(compose.submit("image", "me.jpg", photo, effect="gray"))
    before = fetched_result(compose, finished)
    # Workers at 0: the next job stays queued. Every worker container, by its label (compose implementations
    # differ on whether a scaled service's extra containers are theirs to stop).
    project.stop(*project.container_names("worker"))
    queued = compose.submit("image", "me.jpg", photo, effect="blur")
    time.sleep(2)  # past the append-only file's once-a-second fsync
    assert compose.job(queued)["status"] == "queued"
    project.down()
    assert project.container_names() == []
    with project.health_checks_ticked():
        started = time.monotonic()
        project.up()
        project.wait_healthy(timeout_s=180)
        job = compose.ended(queued, timeout_s=180)
        record_figures(up_again_to_queued_job_done_s=round(time.monotonic() - started, 1))
    assert job["status"] == "succeeded"
    again = compose.job(finished["id"])
    assert again["status"] == "succeeded" and fetched_result(compose, again) == before
    worker = project.container_names("worker")[0]
    started_at = project.engine.container(worker)["State"]["StartedAt"]
    record_figures(worker_started_at=started_at, queued_job_finished_at=job["finished_at"])
    record_figures(memory_mb_at_rest=memory_mb(project.engine, project))


def test_the_gpu_override_merges_into_a_gpu_worker(engine, tmp_path):
    """No GPU here: the override is merged by compose itself and holds a GPU worker that reaches the same
    S3, with the NVIDIA device reservation, and the API routes DeepLab's jobs to its queue."""
    files = [containers.COMPOSE_FILE, containers.ROOT / "deploy" / "docker-compose.gpu.yml"]
    project = ComposeProject(engine, "bdgpu", files, env_file(tmp_path))
    merged = yaml.safe_load(project.compose("config").stdout)
    gpu, api = merged["services"]["worker-gpu"], merged["services"]["api"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert as_mapping(gpu["build"]["args"])["EXTRAS"] == "service,tensorflow-gpu" and gpu["build"]["target"] == "worker"
    gpu_env, api_env = as_mapping(gpu["environment"]), as_mapping(api["environment"])
    assert gpu_env["BACKDROP_S3_ENDPOINT_URL"] == api_env["BACKDROP_S3_ENDPOINT_URL"] == "http://s3:8333"
    assert api_env["BACKDROP_QUEUE_ROUTES"] == "deeplab=backdrop-gpu"


def as_mapping(value: dict | list) -> dict:
    """Compose's two spellings of variables and build arguments: a mapping, or ``KEY=VALUE`` lines."""
    return value if isinstance(value, dict) else dict(item.split("=", 1) for item in value)
