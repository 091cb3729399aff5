"""Test hosts: the service's parts on hosts of their own, on one Linux machine (tests and benches).

Each host is a network namespace with its own addresses, joined by veth pairs to two bridges: ``front``
(the client, the API, and S3 for presigned downloads) and ``back`` (the API, the stores and the
workers), so the API can be cut off from the stores while clients still reach it. The harness (this
process) has an address on both bridges to start, watch and check things; IP forwarding stays as it is
(off), and no host has a route beyond its bridges, so hosts reach each other only over the links made
here.

- cutting a host off = its link(s) down (``cut``); healing = up again (``heal``);
- a host vanishing = its processes killed and its namespace deleted (``vanish``).

Every part is started with the commands a user runs on separate machines (docs/operating.md), with the
hosts' addresses in its settings. Teardown is complete even when a test fails, and namespaces left by a
harness that was killed outright are removed by the next one. Needs root (CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis

from backdrop.service.jobs import JobStore
from backdrop.service.localstack import (
    ManagedProcess,
    S3Credentials,
    _port_open,
    _spawn,
    _wait_until,
    _with_metrics_dir,
    redis_server_binary,
    service_env,
    start_api,
    start_beat,
    start_redis,
    start_s3,
    start_workers,
    wait_for_workers,
)
from backdrop.service.storage import Storage, open_storage
from backdrop.settings import Settings

FRONT, BACK = "front", "back"
# Which networks each host is on.
HOST_NETWORKS: dict[str, tuple[str, ...]] = {
    "client": (FRONT,),
    "api": (FRONT, BACK),
    "store": (FRONT, BACK),  # clients fetch results from S3 (presigned URLs) over the front
    "store-2": (FRONT, BACK),  # S3 in Sentinel mode
    "worker-1": (BACK,),
    "worker-2": (BACK,),
}
NETNS_DIR = Path("/run/netns")
_NAMESPACE = re.compile(r"^bdh-(\d+)-([0-9a-f]{4})-")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class HostsUnavailable(RuntimeError):
    """Test hosts cannot be made here (not root, no iproute2, namespaces not permitted)."""


def unavailable() -> str | None:
    """Why test hosts cannot be made on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "test hosts need iproute2's `ip`"
    probe = f"bdh-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        return f"network namespaces are not permitted here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = ["ip", *(("-n", namespace) if namespace else ()), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=15)
    if check and done.returncode != 0:
        raise HostsUnavailable(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


def _pids_in(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(pid) for pid in done.stdout.split()]


def _kill_namespace(namespace: str) -> None:
    """Kill every process in ``namespace`` (bounded: a few rounds), then delete it."""
    for _ in range(5):
        pids = _pids_in(namespace)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    _ip("netns", "del", namespace, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> int:
    """Remove the namespaces and links of harnesses whose process is gone; returns how many namespaces."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    stale_tokens, removed = set(), 0
    for line in listed:
        name = line.split(" ", 1)[0]
        found = _NAMESPACE.match(name)
        if found and not _alive(int(found.group(1))):
            _kill_namespace(name)
            stale_tokens.add(found.group(2))
            removed += 1
    if stale_tokens:
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            link = line.split(": ", 2)[1].split("@", 1)[0] if ": " in line else ""
            if any(link.startswith(f"bh{token}") for token in stale_tokens):
                _ip("link", "del", link, check=False)
    return removed


@dataclass
class Host:
    name: str
    namespace: str
    addresses: dict[str, str]  # network -> address
    links: dict[str, str]  # network -> the veth end on the harness's side (down = cut off)
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The host's address on the back network (the front one for the client)."""
        return self.addresses.get(BACK) or self.addresses[FRONT]

    def pids(self) -> set[int]:
        """The processes running on this host."""
        return set(_pids_in(self.namespace))

    @property
    def prefix(self) -> list[str]:
        """Runs a command on this host."""
        return ["ip", "netns", "exec", self.namespace]


class TestHosts:
    """The hosts of one test run (see the module's docstring); a context manager that tears them down."""

    __test__ = False  # not a pytest class

    def __init__(self, names: Iterable[str] = tuple(HOST_NETWORKS)) -> None:
        self.token = secrets.token_hex(2)
        self.names = list(names)
        self.hosts: dict[str, Host] = {}
        self.bridges: dict[str, str] = {}
        self.harness: dict[str, str] = {}  # network -> this process's address on it
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._subnets: dict[str, ipaddress.IPv4Network] = {}

    def __enter__(self) -> TestHosts:
        try:
            self.create()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.teardown()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def _free_subnets(self) -> dict[str, ipaddress.IPv4Network]:
        used = _ip("-4", "-o", "addr", "show", check=False).stdout
        taken = {int(octet) for octet in re.findall(r"inet 10\.(\d+)\.", used)}
        for second in range(200, 251):
            if second not in taken:
                return {
                    FRONT: ipaddress.ip_network(f"10.{second}.0.0/24"),
                    BACK: ipaddress.ip_network(f"10.{second}.1.0/24"),
                }
        raise HostsUnavailable("no free 10.x subnet for the test hosts")

    def create(self) -> None:
        reason = unavailable()
        if reason:
            raise HostsUnavailable(reason)
        remove_stale()
        self._subnets = self._free_subnets()
        for network, subnet in self._subnets.items():
            bridge = f"bh{self.token}{network[0]}"
            _ip("link", "add", bridge, "type", "bridge")
            self.bridges[network] = bridge
            address = str(subnet.network_address + 1)
            _ip("addr", "add", f"{address}/{subnet.prefixlen}", "dev", bridge)
            _ip("link", "set", bridge, "up")
            self.harness[network] = address
        for name in self.names:
            self.add(name)

    def add(self, name: str) -> Host:
        """Make host ``name`` (again, after it vanished: same addresses)."""
        index = self.names.index(name)
        namespace = f"bdh-{os.getpid()}-{self.token}-{name}"
        _ip("netns", "add", namespace)
        host = Host(name, namespace, {}, {})
        self.hosts[name] = host
        _ip("link", "set", "lo", "up", namespace=namespace)
        for network in HOST_NETWORKS[name]:
            outside, inside = f"bh{self.token}{index}{network[0]}", f"eth-{network}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
            _ip("link", "set", outside, "master", self.bridges[network], "up")
            subnet = self._subnets[network]
            address = str(subnet.network_address + 10 + index)
            _ip("addr", "add", f"{address}/{subnet.prefixlen}", "dev", inside, namespace=namespace)
            _ip("link", "set", inside, "up", namespace=namespace)
            host.addresses[network], host.links[network] = address, outside
        return host

    # --- what happens to hosts ------------------------------------------------------------------------

    def cut(self, name: str, network: str | None = None) -> None:
        """Cut ``name`` off (from one network, or from all of its own)."""
        for net, link in self.hosts[name].links.items():
            if network in (None, net):
                _ip("link", "set", link, "down")

    def heal(self, name: str, network: str | None = None) -> None:
        for net, link in self.hosts[name].links.items():
            if network in (None, net):
                _ip("link", "set", link, "up")

    def vanish(self, name: str) -> None:
        """The host is gone: its processes killed, its namespace (and its links) deleted."""
        host = self.hosts.pop(name)
        executor = self._executors.pop(name, None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        _kill_namespace(host.namespace)
        for process in host.processes:
            process.process.poll()
        for link in host.links.values():
            _ip("link", "del", link, check=False)

    # --- running things on hosts ------------------------------------------------------------------------

    def spawn(
        self,
        host: str,
        name: str,
        command: list[str],
        *,
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        process = _spawn(name, command, log_path=log_path, env=env, prefix=self.hosts[host].prefix)
        self.hosts[host].processes.append(process)
        return process

    def adopt(self, host: str, process: ManagedProcess) -> ManagedProcess:
        """Count a process started with ``prefix`` as ``host``'s (stopped with it)."""
        self.hosts[host].processes.append(process)
        return process

    def call(self, host: str, function: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run ``function`` in a thread of this process that lives in ``host``'s namespace: its sockets are
        the host's (a client's requests, say)."""
        return self.executor(host).submit(function, *args, **kwargs).result()

    def executor(self, host: str, threads: int = 8) -> ThreadPoolExecutor:
        """Threads that live in ``host``'s namespace."""
        if host not in self._executors:
            path = str(NETNS_DIR / self.hosts[host].namespace)
            self._executors[host] = ThreadPoolExecutor(
                threads, thread_name_prefix=f"host-{host}", initializer=_enter_namespace, initargs=(path,)
            )
        return self._executors[host]

    # --- teardown ---------------------------------------------------------------------------------------

    def teardown(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
        # Clients and the API first, then the workers, the stores last (the others shut down against them).
        for host in sorted(
            self.hosts.values(), key=lambda h: (h.name.startswith("store"), h.name.startswith("worker"))
        ):
            for process in reversed(host.processes):
                with contextlib.suppress(Exception):  # keep tearing down
                    process.stop(timeout_s=10)
            _kill_namespace(host.namespace)
            for link in host.links.values():
                _ip("link", "del", link, check=False)
        self.hosts.clear()
        for bridge in self.bridges.values():
            _ip("link", "del", bridge, check=False)
        self.bridges.clear()


def _enter_namespace(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(descriptor, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {path}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


def run_command(host: Host, command: Sequence[str], timeout_s: float = 30) -> subprocess.CompletedProcess:
    """A short command on ``host`` (e.g. ``valkey-cli``), its output captured."""
    return subprocess.run([*host.prefix, *command], capture_output=True, text=True, timeout=timeout_s)


SENTINEL_PORT = 26379
SENTINEL_HOSTS = ("store", "store-2", "api")
SENTINEL_MASTER = "backdrop"
# How long the sentinels wait before calling the primary down, and how long a failover may take.
SENTINEL_DOWN_AFTER_MS = 1500
SENTINEL_FAILOVER_TIMEOUT_MS = 6000


@dataclass
class HostedService:
    """The service across test hosts, started with the commands of docs/operating.md: Redis and S3 on
    ``store``, the API and beat on ``api``, a worker node on each worker host. ``cpus`` pins a host's
    processes to cores (``taskset`` lists, e.g. ``{"worker-1": "0"}``).

    With ``sentinel``, Redis has no single point of failure: the primary on ``store``, a replica on
    ``store-2``, a sentinel on each of ``store``, ``store-2`` and ``api`` (quorum 2), and everything
    connects through the sentinels. S3 then runs on ``store-2``, so that the primary's host can vanish
    whole."""

    hosts: TestHosts
    root: Path
    base_env: Mapping[str, str]
    workers: tuple[str, ...] = ("worker-1", "worker-2")
    concurrency: int = 1
    pool: str = "prefork"
    cpus: Mapping[str, str] = field(default_factory=dict)
    sentinel: bool = False
    worker_include: tuple[str, ...] = ()  # more modules the worker nodes import (a benchmark's stand-ins)
    redis_port: int = 6379
    s3_port: int = 8333
    api_port: int = 8080
    bucket: str = "backdrop"
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.credentials = S3Credentials.generate()
        # Redis beyond loopback needs a password (protected mode refuses everyone else, rightly).
        self.redis_password = secrets.token_urlsafe(18)
        self.logs = self.root / "log"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def loaded_per_node(self) -> int:
        """Processes that load models on a worker node (a threads pool shares one)."""
        return 1 if self.pool == "threads" else self.concurrency

    def prefix(self, host: str) -> list[str]:
        pinned = ["taskset", "-c", self.cpus[host]] if host in self.cpus else []
        return [*self.hosts[host].prefix, *pinned]

    @property
    def s3_host(self) -> str:
        return "store-2" if self.sentinel else "store"

    @property
    def api_url(self) -> str:
        """The API as clients reach it (from the ``client`` host)."""
        return f"http://{self.hosts['api'].addresses[FRONT]}:{self.api_port}"

    @property
    def settings(self) -> Settings:
        """The service's settings, as the harness reaches the stores."""
        return Settings.from_env(self.env)

    def start(self) -> None:
        store, objects = self.hosts["store"], self.hosts[self.s3_host]
        self.start_store()
        self.env = service_env(
            self.base_env,
            redis_port=self.redis_port,
            s3_port=self.s3_port,
            credentials=self.credentials,
            bucket=self.bucket,
            host=objects.address,
        )
        self.env["BACKDROP_REDIS_URL"] = f"redis://:{self.redis_password}@{store.address}:{self.redis_port}/0"
        self.env["BACKDROP_S3_PUBLIC_URL"] = f"http://{objects.addresses[FRONT]}:{self.s3_port}"
        self.env["BACKDROP_WORKER_METRICS_PORT"] = "9808"
        if self.sentinel:
            self.start_sentinels()
            sentinels = ",".join(f"{self.hosts[name].address}:{SENTINEL_PORT}" for name in SENTINEL_HOSTS)
            self.env["BACKDROP_REDIS_SENTINELS"] = sentinels
            self.env["BACKDROP_REDIS_SENTINEL_MASTER"] = SENTINEL_MASTER
        api = self.hosts["api"]
        self.processes["api"] = self.hosts.adopt(
            "api",
            start_api(
                _with_metrics_dir(self.env, self.root / "metrics" / "api"),
                port=self.api_port,
                log_path=self.logs / "api.log",
                bind="0.0.0.0",
                host=api.addresses[FRONT],
                prefix=self.prefix("api"),
            ),
        )
        schedule = self.root / "celerybeat-schedule"
        beat = start_beat(self.env, schedule=schedule, log_path=self.logs / "beat.log", prefix=self.prefix("api"))
        self.processes["beat"] = self.hosts.adopt("api", beat)
        for name in self.workers:
            self.start_worker(name, wait=False)
        for name in self.workers:
            wait_for_workers(self.processes[name], self.loaded_per_node)

    def _redis_options(self) -> list[str]:
        # Every node may become the primary, or a replica of another: each needs both passwords.
        return ["--requirepass", self.redis_password, "--masterauth", self.redis_password]

    def start_store(self) -> None:
        store = self.hosts["store"]
        server = start_redis(
            self.root / "redis",
            self.redis_port,
            self.logs,
            host=store.address,
            prefix=self.prefix("store"),
            extra=self._redis_options(),
        )
        self.processes["redis"] = self.hosts.adopt("store", server)
        if self.sentinel:
            replica = start_redis(
                self.root / "redis-2",
                self.redis_port,
                self.logs,
                host=self.hosts["store-2"].address,
                prefix=self.prefix("store-2"),
                extra=[*self._redis_options(), "--replicaof", store.address, str(self.redis_port)],
                name="redis-2",
            )
            self.processes["redis-2"] = self.hosts.adopt("store-2", replica)
            # Until its first full copy arrives (Valkey waits 5 s for more replicas before sending one), the
            # replica holds nothing: a failover then would promote an empty server.
            _wait_until(self._replica_in_sync, "the replica's first sync", replica, 60)
        objects = self.hosts[self.s3_host]
        s3 = start_s3(
            self.root / "s3",
            self.s3_port,
            self.credentials,
            self.bucket,
            self.logs,
            host=objects.address,
            bind="0.0.0.0",
            prefix=self.prefix(self.s3_host),
        )
        self.processes["s3"] = self.hosts.adopt(self.s3_host, s3)

    def _replica_in_sync(self) -> bool:
        client = redis.Redis(
            self.hosts["store-2"].address, self.redis_port, password=self.redis_password, socket_timeout=1.0
        )
        try:
            return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start_sentinels(self) -> None:
        """``valkey-server sentinel.conf --sentinel`` on each sentinel host, watching the primary."""
        primary = self.hosts["store"].address
        for name in SENTINEL_HOSTS:
            host = self.hosts[name]
            folder = self.root / f"sentinel-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"  # Sentinel rewrites its own file: one per sentinel
            config.write_text(
                f"port {SENTINEL_PORT}\nbind {host.address}\ndir {folder}\n"
                f"requirepass {self.redis_password}\nsentinel sentinel-pass {self.redis_password}\n"
                f"sentinel monitor {SENTINEL_MASTER} {primary} {self.redis_port} 2\n"
                f"sentinel auth-pass {SENTINEL_MASTER} {self.redis_password}\n"
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SENTINEL_MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
            )
            config.chmod(0o600)
            process = self.hosts.spawn(
                name,
                f"sentinel-{name}",
                [redis_server_binary(), str(config), "--sentinel"],
                log_path=self.logs / f"sentinel-{name}.log",
            )
            self.processes[f"sentinel-{name}"] = process
            _wait_until(lambda a=host.address: _port_open(SENTINEL_PORT, a), f"sentinel on {name}", process, 15)

    def primary(self) -> str | None:
        """The address the sentinels give for the primary now (None: none reachable)."""
        for name in SENTINEL_HOSTS:
            if name not in self.hosts.hosts:
                continue
            client = redis.Redis(
                self.hosts[name].address,
                SENTINEL_PORT,
                password=self.redis_password,
                socket_timeout=1.0,
                decode_responses=True,
            )
            try:
                address = client.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
                return str(address[0]) if address else None
            except redis.RedisError:
                continue
            finally:
                client.close()
        return None

    def kill_store(self) -> None:
        """SIGKILL Redis and S3 on ``store`` (no shutdown: whatever the AOF has is what comes back)."""
        for name in ("redis", "s3"):
            process = self.processes.pop(name)
            process.process.kill()
            process.process.wait(10)

    def start_worker(self, name: str, *, wait: bool = True) -> ManagedProcess:
        process = self.hosts.adopt(
            name,
            start_workers(
                _with_metrics_dir(self.env, self.root / "metrics" / name),
                concurrency=self.concurrency,
                queues=Settings.from_env(self.env).queue,
                log_path=self.logs / f"{name}.log",
                name=name,
                pool=self.pool,
                prefix=self.prefix(name),
                include=self.worker_include,
            ),
        )
        self.processes[name] = process
        if wait:
            wait_for_workers(process, self.loaded_per_node)
        return process

    def jobs(self) -> JobStore:
        return JobStore.from_settings(self.settings)

    def storage(self) -> Storage:
        return open_storage(self.settings)
