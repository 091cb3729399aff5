"""The one settings object, read from the environment at start-up.

Nothing else in Backdrop reads ``os.environ``. Every field is documented in the README's settings table.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backdrop.errors import BackdropError
from backdrop.text import parse_bool


class SettingsError(BackdropError):
    """An environment variable holds a value Backdrop cannot use (``invalid_setting``)."""

    code = "invalid_setting"


def _default_model_dir(env: Mapping[str, str]) -> Path:
    cache_home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "backdrop" / "models"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def _addresses(text: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (Sentinel's port, 26379, when none is given)."""
    found = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "26379")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} is not host:port")
        found.append((host, int(port)))
    return tuple(found)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(text: str) -> tuple[Network, ...]:
    """``CIDR,CIDR`` (a bare address is one host). A network of every address (``0.0.0.0/0``, ``::/0``)
    is refused: it would switch the callback check off, metadata services included."""
    found = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        network = ipaddress.ip_network(part, strict=False)
        if network.prefixlen == 0:
            raise ValueError(f"{part} contains every address; list the networks your receivers are on")
        found.append(network)
    return tuple(found)


def _routes(text: str) -> tuple[tuple[str, str], ...]:
    routes = []
    for part in _name_list(text):
        model, sep, queue = part.partition("=")
        if not sep or not model.strip() or not queue.strip():
            raise ValueError("expected MODEL=QUEUE pairs separated by commas")
        routes.append((model.strip(), queue.strip()))
    return tuple(routes)


WEBHOOK_SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret: ``whsec_`` and base64 (at least 16 bytes)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {WEBHOOK_SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret's key must be at least 16 bytes")
    return key


def _path_list(text: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in text.split(os.pathsep) if part.strip())


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with :meth:`from_env`; tests build their own with keyword arguments."""

    model_dir: Path = field(default_factory=lambda: _default_model_dir(os.environ))
    model_mirrors: tuple[Path, ...] = ()
    model_download_timeout_s: float = 30.0
    model_pip_args: tuple[str, ...] = ()
    engine: str = "auto"
    pixel_backend: str = "opencv"
    frozen_model: str | None = None
    frozen_model_sha256: str | None = None
    batch_size: int = 1
    batch_wait_ms: float = 10.0
    confirm_targets: bool = True
    closer_look: bool = True
    segment_views: bool = True
    full_body: bool = True
    clip_full_body: bool = False
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_image_bytes: int = 30 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_video_bytes: int = 2 * 1024**3
    max_video_seconds: float = 600.0
    max_video_frame_pixels: int = 3840 * 2160
    video_chunk_seconds: float = 10.0
    retain_freed_memory_mb: int = 256

    # The service (API, queue, workers, storage). Not used by the pipeline library or the CLI.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Sentinel-managed Redis: the sentinels' addresses (then BACKDROP_REDIS_URL gives only the password
    # and database; its host is not used), the name they monitor the primary under, and how long an
    # accepted job waits for a replica to confirm it has the job (0: not at all).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "backdrop"
    redis_replica_wait_ms: int = 250
    queue: str = "backdrop"
    queue_routes: tuple[tuple[str, str], ...] = ()
    job_ttl_s: int = 24 * 3600
    inline_upload_max_bytes: int = 8 * 1024 * 1024
    inline_uploads_max_mb: int = 256
    storage: str = "s3"
    s3_endpoint_url: str | None = None
    s3_public_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_bucket: str = "backdrop"
    s3_create_bucket: bool = False
    result_url_expiry_s: int = 3600
    storage_retries: int = 5
    storage_retry_backoff_s: float = 1.0
    task_soft_time_limit_s: int = 60
    task_time_limit_s: int = 90
    video_task_soft_time_limit_s: int = 900
    video_task_time_limit_s: int = 960
    visibility_timeout_s: int = 3600
    max_attempts: int = 3
    # A running job's (or video part's) lease: renewed by its worker every third of it; another worker
    # takes the job over once it runs out (a worker cut off or gone).
    lease_s: float = 30.0
    worker_models: tuple[str, ...] = ("selfie", "deeplab")
    sweep_interval_s: int = 60
    max_queue_depth: int = 0
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Answers that wait (Prefer: wait=N) and the compatible routes (remove.bg's, rembg's), which wait for
    # the job: the longest wait, the API's threads per process, and how many of them may wait at once.
    max_wait_s: int = 60
    api_threads: int = 48
    max_waiting_requests: int = 32
    # Webhooks: the signing secrets (whsec_..., the first signs; during a rotation both do), whether
    # the networks beyond the public internet that callback URLs may resolve to (loopback, private,
    # link-local: only where listed), and how long deliveries are tried.
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_allowed_networks: tuple[Network, ...] = ()
    webhook_timeout_s: float = 10.0
    webhook_retry_for_s: int = 24 * 3600
    fault_injection: bool = False
    port: int = 8080
    workers: int = 2
    flower: bool = False
    log_level: str = "INFO"
    worker_metrics_port: int = 9808
    # prometheus-client reads this variable itself; it is here so the service knows its metrics are
    # multi-process (gunicorn workers, Celery prefork children).
    metrics_dir: Path | None = None

    # Live mode: the WebSocket server (`python -m live`), and where the API says it is.
    live_url: str | None = None
    live_port: int = 8765
    live_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    live_max_sessions: int = 8
    live_max_in_flight: int = 8
    live_max_message_bytes: int = 4 * 1024 * 1024
    live_max_frame_pixels: int = 1920 * 1080
    live_idle_timeout_s: float = 60.0

    # `backdrop submit` and the Python client.
    client_url: str = "http://127.0.0.1:8080"
    client_api_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        for variable, instead in REMOVED_VARIABLES.items():
            if env.get(variable, "").strip():
                # Silently ignored, it would change what a deployment allows without a word.
                raise SettingsError(f"{variable} was removed: {instead}")
        values: dict[str, Any] = {"model_dir": _default_model_dir(env)}
        for name, (variable, parse) in ENV_VARIABLES.items():
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = parse(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"{variable}={raw!r}: {exc}") from None
        return cls(**values)

    def __post_init__(self) -> None:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise SettingsError("BACKDROP_TASK_SOFT_TIME_LIMIT_S must be below BACKDROP_TASK_TIME_LIMIT_S")
        if self.video_task_soft_time_limit_s >= self.video_task_time_limit_s:
            raise SettingsError("BACKDROP_VIDEO_TASK_SOFT_TIME_LIMIT_S must be below BACKDROP_VIDEO_TASK_TIME_LIMIT_S")
        if self.visibility_timeout_s <= max(self.task_time_limit_s, self.video_task_time_limit_s):
            # Otherwise Redis hands a running job to a second worker while the first still works on it.
            raise SettingsError(
                "BACKDROP_VISIBILITY_TIMEOUT_S must exceed BACKDROP_TASK_TIME_LIMIT_S and "
                "BACKDROP_VIDEO_TASK_TIME_LIMIT_S"
            )
        if self.lease_s < 1:
            # Renewed every third of it: shorter leases are lost to a slow round trip.
            raise SettingsError("BACKDROP_LEASE_S must be at least 1")
        if any(len(key) < 16 for key in self.api_keys):
            raise SettingsError("BACKDROP_API_KEYS: every key must be at least 16 characters")
        for secret in self.webhook_secrets:
            try:
                decode_secret(secret)
            except ValueError as exc:
                raise SettingsError(f"BACKDROP_WEBHOOK_SECRETS: {exc}") from None
        if self.max_waiting_requests >= self.api_threads:
            # Otherwise waiting requests can take every thread and nothing else is answered.
            raise SettingsError("BACKDROP_MAX_WAITING_REQUESTS must be below BACKDROP_API_THREADS")
        if self.storage_retries < 0:
            raise SettingsError("BACKDROP_STORAGE_RETRIES must not be negative")
        retry_budget = self.storage_retry_backoff_s * (2**self.storage_retries - 1)
        if retry_budget >= self.task_soft_time_limit_s:
            # Otherwise a storage outage shows up as a timeout instead of storage_unavailable.
            raise SettingsError(
                f"the storage retry budget ({retry_budget:g} s from BACKDROP_STORAGE_RETRIES and "
                "BACKDROP_STORAGE_RETRY_BACKOFF_S) must be below BACKDROP_TASK_SOFT_TIME_LIMIT_S"
            )

    @property
    def queues(self) -> list[str]:
        """Every queue jobs can go to: the default one and those of the routes."""
        return sorted({self.queue, *(queue for _, queue in self.queue_routes)})

    def queue_for(self, model: str) -> str:
        """The queue a job for ``model`` goes to (CPU and GPU workers can consume different queues)."""
        return dict(self.queue_routes).get(model, self.queue)


# field name -> (environment variable, parser). The README's settings table lists the same variables.
ENV_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "model_dir": ("BACKDROP_MODEL_DIR", lambda text: Path(text).expanduser()),
    "model_mirrors": ("BACKDROP_MODEL_MIRRORS", _path_list),
    "model_download_timeout_s": ("BACKDROP_MODEL_DOWNLOAD_TIMEOUT_S", _positive_float),
    "model_pip_args": ("BACKDROP_MODEL_PIP_ARGS", lambda text: tuple(shlex.split(text))),
    "engine": ("BACKDROP_ENGINE", str.lower),
    "pixel_backend": ("BACKDROP_PIXEL_BACKEND", str.lower),
    "frozen_model": ("BACKDROP_FROZEN_MODEL", str),
    "frozen_model_sha256": ("BACKDROP_FROZEN_MODEL_SHA256", str),
    "batch_size": ("BACKDROP_BATCH_SIZE", _positive_int),
    "batch_wait_ms": ("BACKDROP_BATCH_WAIT_MS", _positive_float),
    "confirm_targets": ("BACKDROP_CONFIRM_TARGETS", parse_bool),
    "closer_look": ("BACKDROP_CLOSER_LOOK", parse_bool),
    "segment_views": ("BACKDROP_SEGMENT_VIEWS", parse_bool),
    "full_body": ("BACKDROP_FULL_BODY", parse_bool),
    "clip_full_body": ("BACKDROP_CLIP_FULL_BODY", parse_bool),
    "threads": ("BACKDROP_THREADS", _positive_int),
    "max_image_bytes": ("BACKDROP_MAX_IMAGE_BYTES", _positive_int),
    "max_image_pixels": ("BACKDROP_MAX_IMAGE_PIXELS", _positive_int),
    "retain_freed_memory_mb": ("BACKDROP_RETAIN_FREED_MEMORY_MB", _non_negative_int),
    "max_video_bytes": ("BACKDROP_MAX_VIDEO_BYTES", _positive_int),
    "max_video_seconds": ("BACKDROP_MAX_VIDEO_SECONDS", _positive_float),
    "max_video_frame_pixels": ("BACKDROP_MAX_VIDEO_FRAME_PIXELS", _positive_int),
    "video_chunk_seconds": ("BACKDROP_VIDEO_CHUNK_SECONDS", _positive_float),
    "redis_url": ("BACKDROP_REDIS_URL", str),
    "redis_sentinels": ("BACKDROP_REDIS_SENTINELS", _addresses),
    "redis_sentinel_master": ("BACKDROP_REDIS_SENTINEL_MASTER", str),
    "redis_replica_wait_ms": ("BACKDROP_REDIS_REPLICA_WAIT_MS", _non_negative_int),
    "queue": ("BACKDROP_QUEUE", str),
    "queue_routes": ("BACKDROP_QUEUE_ROUTES", _routes),
    "job_ttl_s": ("BACKDROP_JOB_TTL_S", _positive_int),
    "inline_upload_max_bytes": ("BACKDROP_INLINE_UPLOAD_MAX_BYTES", _non_negative_int),
    "inline_uploads_max_mb": ("BACKDROP_INLINE_UPLOADS_MAX_MB", _non_negative_int),
    "storage": ("BACKDROP_STORAGE", str.lower),
    "s3_endpoint_url": ("BACKDROP_S3_ENDPOINT_URL", str),
    "s3_public_url": ("BACKDROP_S3_PUBLIC_URL", str),
    "s3_region": ("BACKDROP_S3_REGION", str),
    "s3_access_key": ("BACKDROP_S3_ACCESS_KEY", str),
    "s3_secret_key": ("BACKDROP_S3_SECRET_KEY", str),
    "s3_bucket": ("BACKDROP_S3_BUCKET", str),
    "s3_create_bucket": ("BACKDROP_S3_CREATE_BUCKET", parse_bool),
    "result_url_expiry_s": ("BACKDROP_RESULT_URL_EXPIRY_S", _positive_int),
    "storage_retries": ("BACKDROP_STORAGE_RETRIES", int),
    "storage_retry_backoff_s": ("BACKDROP_STORAGE_RETRY_BACKOFF_S", _positive_float),
    "task_soft_time_limit_s": ("BACKDROP_TASK_SOFT_TIME_LIMIT_S", _positive_int),
    "task_time_limit_s": ("BACKDROP_TASK_TIME_LIMIT_S", _positive_int),
    "video_task_soft_time_limit_s": ("BACKDROP_VIDEO_TASK_SOFT_TIME_LIMIT_S", _positive_int),
    "video_task_time_limit_s": ("BACKDROP_VIDEO_TASK_TIME_LIMIT_S", _positive_int),
    "visibility_timeout_s": ("BACKDROP_VISIBILITY_TIMEOUT_S", _positive_int),
    "max_attempts": ("BACKDROP_MAX_ATTEMPTS", _positive_int),
    "lease_s": ("BACKDROP_LEASE_S", _positive_float),
    "worker_models": ("BACKDROP_WORKER_MODELS", _name_list),
    "sweep_interval_s": ("BACKDROP_SWEEP_INTERVAL_S", _positive_int),
    "max_queue_depth": ("BACKDROP_MAX_QUEUE_DEPTH", int),
    "api_keys": ("BACKDROP_API_KEYS", lambda text: tuple(k.strip() for k in text.split(",") if k.strip())),
    "max_wait_s": ("BACKDROP_MAX_WAIT_S", _positive_int),
    "api_threads": ("BACKDROP_API_THREADS", _positive_int),
    "max_waiting_requests": ("BACKDROP_MAX_WAITING_REQUESTS", _non_negative_int),
    "webhook_secrets": (
        "BACKDROP_WEBHOOK_SECRETS",
        lambda text: tuple(k.strip() for k in text.split(",") if k.strip()),
    ),
    "webhook_allowed_networks": ("BACKDROP_WEBHOOK_ALLOWED_NETWORKS", _networks),
    "webhook_timeout_s": ("BACKDROP_WEBHOOK_TIMEOUT_S", _positive_float),
    "webhook_retry_for_s": ("BACKDROP_WEBHOOK_RETRY_FOR_S", _positive_int),
    "fault_injection": ("BACKDROP_FAULT_INJECTION", parse_bool),
    "live_url": ("BACKDROP_LIVE_URL", str),
    "live_port": ("BACKDROP_LIVE_PORT", _positive_int),
    "live_workers": ("BACKDROP_LIVE_WORKERS", _positive_int),
    "live_max_sessions": ("BACKDROP_LIVE_MAX_SESSIONS", _positive_int),
    "live_max_in_flight": ("BACKDROP_LIVE_MAX_IN_FLIGHT", _positive_int),
    "live_max_message_bytes": ("BACKDROP_LIVE_MAX_MESSAGE_BYTES", _positive_int),
    "live_max_frame_pixels": ("BACKDROP_LIVE_MAX_FRAME_PIXELS", _positive_int),
    "live_idle_timeout_s": ("BACKDROP_LIVE_IDLE_TIMEOUT_S", _positive_float),
    "client_url": ("BACKDROP_URL", str),
    "client_api_key": ("BACKDROP_API_KEY", str),
    "port": ("PORT", _positive_int),
    "flower": ("FLOWER", parse_bool),
    "log_level": ("BACKDROP_LOG_LEVEL", str.upper),
    "worker_metrics_port": ("BACKDROP_WORKER_METRICS_PORT", int),
    "metrics_dir": ("PROMETHEUS_MULTIPROC_DIR", Path),
    "workers": ("WORKERS", _positive_int),
}

# Variables Backdrop no longer reads, refused at start with what replaces them.
REMOVED_VARIABLES = {
    "BACKDROP_WEBHOOK_ALLOW_PRIVATE": (
        "list the networks callback URLs may reach in BACKDROP_WEBHOOK_ALLOWED_NETWORKS (CIDRs, e.g. "
        "10.0.0.0/8,127.0.0.0/8); loopback, private and link-local addresses are refused unless listed"
    ),
}
