"""Backdrop's images built, and its compose files run, with podman or docker (whichever works here).

    .venv/bin/python -m harness.containers images [--ca-bundle PATH]    # what `make images` runs

``images``: the upstream images the Dockerfile and compose files name are pulled where a registry
answers; where none does (this kind of machine, CI), local stand-ins are built under the same names
(``harness.standins``). Then the verified models are copied from the model cache into ``deploy/models/``
and the ``api``, ``worker`` and ``live`` targets of ``deploy/Dockerfile`` are built. ``--ca-bundle`` mounts
a CA bundle over the build's system bundle (a build option for networks whose TLS is intercepted; nothing
of it is stored in a layer; podman only).

``ComposeProject`` runs a compose project for tests: up, scale, kill, down, health checks ticked by hand
where the engine has no timer for them (podman without systemd).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
MODELS_FOLDER = ROOT / "deploy" / "models"
# The images Backdrop's Dockerfile builds (compose and Kubernetes name them so).
TARGETS = ("api", "worker", "live")
CA_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"


class ContainersUnavailable(RuntimeError):
    """No container engine can be used here (with the reason)."""


def qualified(reference: str) -> str:
    """``python:3.11-slim`` as engines store it: ``docker.io/library/python:3.11-slim``."""
    name = reference.split("@", 1)[0]
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return reference
    if "/" not in name:
        reference = "library/" + reference
    return "docker.io/" + reference


@dataclass(frozen=True)
class Engine:
    """A container engine's command line (``podman`` or ``docker``)."""

    name: str

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
    ) -> subprocess.CompletedProcess:
        result = subprocess.run([self.name, *args], capture_output=True, timeout=timeout, check=False, input=input)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{self.name} {' '.join(args)} failed ({result.returncode}):\n"
                + result.stderr.decode(errors="replace")[-4000:]
            )
        return result

    def text(self, *args: str, timeout: float = 120) -> str:
        return self.run(*args, timeout=timeout).stdout.decode()

    def image_exists(self, reference: str) -> bool:
        return self.run("image", "inspect", qualified(reference), check=False, timeout=60).returncode == 0

    def pull(self, reference: str) -> bool:
        return self.run("pull", "-q", reference, check=False, timeout=300).returncode == 0

    def image(self, reference: str) -> dict:
        return json.loads(self.text("image", "inspect", reference))[0]

    def container(self, name: str) -> dict:
        """A container's ``inspect`` record."""
        return json.loads(self.text("inspect", name))[0]

    def image_size(self, reference: str) -> int:
        return int(self.image(reference)["Size"])

    def build(
        self,
        *,
        context: Path,
        file: Path,
        tag: str,
        target: str | None = None,
        ca_bundle: Path | None = None,
        timeout: float = 1800,
    ) -> float:
        """Build an image; the seconds it took."""
        args = ["build", "-f", str(file), "-t", tag]
        if target:
            args += ["--target", target]
        if ca_bundle is not None:
            if self.name != "podman":
                raise ContainersUnavailable("--ca-bundle needs podman (docker build cannot mount a file)")
            args += ["--volume", f"{ca_bundle.resolve()}:{CA_IN_IMAGE}:ro"]
        started = time.monotonic()
        self.run(*args, str(context), timeout=timeout)
        return time.monotonic() - started


def detect_engine() -> Engine:
    """podman, else docker, whichever answers ``info`` here."""
    reasons = []
    for name in ("podman", "docker"):
        if not shutil.which(name):
            reasons.append(f"{name}: not installed")
            continue
        result = subprocess.run([name, "info"], capture_output=True, text=True, timeout=60, check=False)
        if result.returncode == 0:
            return Engine(name)
        reasons.append(f"{name}: `{name} info` failed: {(result.stderr or result.stdout).strip()[-300:]}")
    raise ContainersUnavailable("no container engine answers here (" + "; ".join(reasons) + ")")


def upstream_images() -> dict[str, str]:
    """What Backdrop's images and compose files are built on: ``python`` (the Dockerfile's base),
    ``valkey`` and ``seaweedfs`` (compose's Redis and S3), read from the files themselves."""
    base = re.search(r"^FROM (\S+) AS base$", DOCKERFILE.read_text(), re.MULTILINE)
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    if base is None:
        raise RuntimeError("deploy/Dockerfile has no `FROM ... AS base`")
    return {"python": base.group(1), "valkey": services["redis"]["image"], "seaweedfs": services["s3"]["image"]}


def ensure_upstream_images(engine: Engine, log=print) -> dict[str, str]:
    """Each upstream image present, pulled, or (no registry answering) built as a local stand-in.
    Returns how each was had: ``present``, ``pulled`` or ``stand-in``."""
    from harness import standins

    how: dict[str, str] = {}
    for kind, reference in upstream_images().items():
        if engine.image_exists(reference):
            how[reference] = "present"
        elif engine.pull(reference):
            how[reference] = "pulled"
        else:
            log(f"{reference}: no registry answers; building a local stand-in (test scaffolding)")
            standins.build(engine, kind, qualified(reference), log=log)
            how[reference] = "stand-in"
    return how


def copy_verified_models(destination: Path = MODELS_FOLDER) -> list[Path]:
    """Every model file of the catalogue, from the model cache (sha256-verified) into ``destination``:
    the Dockerfile's mirror folder, so a build needs no model URL."""
    from backdrop.models.fetch import cached_path, sha256_of
    from backdrop.models.registry import catalog
    from backdrop.settings import Settings

    settings = Settings.from_env()
    copied, missing = [], []
    for entry in catalog():
        source = cached_path(entry.file, settings)
        if source is None:
            missing.append(entry.file.file_name)
            continue
        target = destination / entry.file.file_name
        if not (target.is_file() and sha256_of(target) == entry.file.sha256):
            shutil.copyfile(source, target)
        copied.append(target)
    if missing:
        raise RuntimeError(
            f"not in the model cache {settings.model_dir} (verified): {', '.join(missing)}; run `make models`"
        )
    return copied


@dataclass
class BuildReport:
    engine: str
    upstream: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    sizes_mb: dict[str, float] = field(default_factory=dict)


def build_images(
    engine: Engine, *, ca_bundle: Path | None = None, targets: Sequence[str] = TARGETS, log=print
) -> BuildReport:
    """``make images``: upstream images (or stand-ins), verified models, then Backdrop's images."""
    report = BuildReport(engine.name, ensure_upstream_images(engine, log=log))
    copy_verified_models()
    for target in targets:
        tag = f"backdrop-{target}"
        log(f"building {tag} (deploy/Dockerfile, target {target}) with {engine.name} ...")
        report.seconds[target] = engine.build(
            context=ROOT, file=DOCKERFILE, tag=tag, target=target, ca_bundle=ca_bundle
        )
        report.sizes_mb[target] = engine.image_size(tag) / 1e6
        log(f"  {tag}: {report.sizes_mb[target]:.0f} MB, built in {report.seconds[target]:.0f} s")
    return report


def compose_command(engine: Engine) -> list[str]:
    """The compose implementation for the engine: podman-compose, or docker's compose plugin."""
    if engine.name == "podman":
        for candidate in (Path(sys.executable).parent / "podman-compose", shutil.which("podman-compose")):
            if candidate and Path(candidate).exists():
                return [str(candidate)]
        raise ContainersUnavailable("podman-compose is not installed (pip install podman-compose)")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    raise ContainersUnavailable("docker has no compose plugin here")


def container_name(container: dict) -> str:
    """A container's name from ``ps --format json`` (podman lists its names, docker gives one)."""
    names = container["Names"]
    return names[0] if isinstance(names, list) else names


@dataclass
class ComposeProject:
    """One compose project (its own name, so its containers, networks and volumes are its own)."""

    engine: Engine
    name: str
    files: Sequence[Path]
    env_file: Path
    env: Mapping[str, str] = field(default_factory=dict)
    _ticking: threading.Event = field(default_factory=threading.Event)
    # Containers stopped on purpose (by the caller): their restart policy leaves them stopped.
    _stopped: set[str] = field(default_factory=set)
    # Held by a pass of the restart policies; `down` takes it to stop them (what it stops is stopped on purpose).
    _restarting: threading.Lock = field(default_factory=threading.Lock)
    _going_down: bool = False

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        command = [*compose_command(self.engine), "--project-name", self.name, "--env-file", str(self.env_file)]
        for file in self.files:
            command += ["-f", str(file)]
        result = subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
            env={**os.environ, **self.env},
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def containers(self, service: str | None = None, *, running_only: bool = True) -> list[dict]:
        """The project's containers (``podman ps`` JSON), of one service if named."""
        args = ["ps", "--format", "json", "--filter", f"label=com.docker.compose.project={self.name}"]
        if not running_only:
            args.append("--all")
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        return sorted(json.loads(self.engine.text(*args) or "[]"), key=container_name)

    def container_names(self, service: str | None = None) -> list[str]:
        return [container_name(c) for c in self.containers(service)]

    def health(self) -> dict[str, str]:
        """Each running container's health (``healthy``, ``starting``, ``unhealthy``; ``none`` without a check)."""
        states = {}
        for name in self.container_names():
            state = self.engine.container(name)["State"]
            states[name] = (state.get("Health") or state.get("Healthcheck") or {}).get("Status") or "none"
        return states

    def stop(self, *names: str, timeout_s: int = 120) -> None:
        """Stop containers on purpose: their restart policy (``unless-stopped``) leaves them stopped."""
        self._stopped.update(names)
        self.engine.run("stop", "--time", str(timeout_s), *names, timeout=timeout_s + 60)

    def _restart_exited(self) -> None:
        """What restart policies do under docker: a container that exited, and was not stopped on purpose, is
        started again (``always``, ``unless-stopped``: whatever its exit code; ``on-failure``: after an error).
        A Celery worker whose broker vanished may exit 0."""
        with self._restarting:
            for container in [] if self._going_down else self.containers(running_only=False):
                name = container_name(container)
                if container.get("State") not in ("exited", "stopped") or name in self._stopped:  # podman says either
                    continue
                policy = self.engine.container(name)["HostConfig"]["RestartPolicy"]["Name"]
                if policy in ("always", "unless-stopped") or (policy == "on-failure" and container.get("ExitCode")):
                    self.engine.run("start", name, check=False, timeout=60)

    def _tick_health_checks(self, interval_s: float) -> None:
        # podman runs health checks from systemd timers and restart policies from its cleanup process;
        # without systemd neither runs (seen with podman 4.3: a crashed worker stayed exited), and
        # `depends_on: service_healthy` would wait for ever. One pass over the project per tick.
        while not self._ticking.wait(interval_s):
            with suppress(Exception):
                for name, status in self.health().items():
                    if status != "none":
                        self.engine.run("healthcheck", "run", name, check=False, timeout=30)
                self._restart_exited()

    @contextmanager
    def health_checks_ticked(self, interval_s: float = 2.0) -> Iterator[None]:
        """Run the health checks and the restart policies by hand while inside (podman without systemd);
        docker runs its own."""
        if self.engine.name != "podman":
            yield
            return
        self._ticking.clear()
        ticker = threading.Thread(target=self._tick_health_checks, args=(interval_s,), daemon=True)
        ticker.start()
        try:
            yield
        finally:
            self._ticking.set()
            ticker.join(timeout=40)

    def up(self, *services: str, scale: Mapping[str, int] | None = None, timeout: float = 600) -> float:
        """``up -d`` (health checks ticked meanwhile); the seconds it took."""
        args = ["up", "-d", "--no-build"]
        for service, count in (scale or {}).items():
            args += ["--scale", f"{service}={count}"]
        started = time.monotonic()
        self.compose(*args, *services, timeout=timeout)
        return time.monotonic() - started

    def wait_healthy(self, timeout_s: float = 180) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.health()
            if states and all(s in ("healthy", "none") for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy in {timeout_s:.0f} s: {states}")
            time.sleep(1)

    def logs(self, container: str, tail: int = 60) -> str:
        result = self.engine.run("logs", "--tail", str(tail), container, check=False, timeout=60)
        return (result.stdout + result.stderr).decode(errors="replace")

    def down(self, *, volumes: bool = False, timeout: float = 300) -> None:
        with self._restarting:  # a pass in progress ends first; none starts what `down` stops
            self._going_down = True
        try:
            self.compose("down", *(["--volumes"] if volumes else []), timeout=timeout, check=False)
        finally:
            self._stopped.clear()  # the containers of a later `up` are new ones
            self._going_down = False
        if volumes:  # whatever compose left behind (a run killed half-way)
            for container in self.containers(running_only=False):  # with those that depend on it
                self.engine.run("rm", "--force", "--depend", container["Id"], check=False)
            for volume in json.loads(self.engine.text("volume", "ls", "--format", "json") or "[]"):
                if volume["Name"].startswith(self.name + "_"):
                    self.engine.run("volume", "rm", "-f", volume["Name"], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.containers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="build backdrop-api, backdrop-worker and backdrop-live")
    images.add_argument("--ca-bundle", type=Path, help="a CA bundle mounted over the build's (podman)")
    images.add_argument("--target", action="append", choices=TARGETS, help="only these (repeatable)")
    args = parser.parse_args(argv)
    try:
        engine = detect_engine()
        report = build_images(engine, ca_bundle=args.ca_bundle, targets=args.target or TARGETS)
    except (ContainersUnavailable, RuntimeError) as exc:
        print(f"make images: {exc}", file=sys.stderr)
        return 1
    for reference, how in report.upstream.items():
        print(f"{reference}: {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
