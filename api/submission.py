"""Accepting a job and waiting for it: the one path every route that creates jobs takes (the v1 API,
and the remove.bg and rembg adapters, which translate their requests into a :class:`Submission`).

Everything that can be checked is checked before anything is stored or queued.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import select
import socket
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from api import Services
from api.errors import ApiError
from backdrop.errors import ParameterError
from backdrop.params import Effect, JobParams, MediaKind
from backdrop.probe import probe_image
from backdrop.service.jobs import JobRecord, JobStatus
from backdrop.service.observability import JOBS_SUBMITTED, REPLICATION_UNCONFIRMED
from backdrop.service.queue import PROCESS_TASK, VIDEO_TASK, enqueue
from backdrop.service.uploads import background_name
from backdrop.service.webhooks import checked_callback_url
from backdrop.settings import Settings
from backdrop.video.probe import VideoError, VideoInfo, probe_video

log = logging.getLogger("backdrop.api")


@dataclass(frozen=True)
class Submission:
    """A job as a route received it: the media (a photo's bytes, or a video's file), its parameters, a
    background for ``replace``, and optionally a callback URL and an idempotency key (already checked
    for its form, not yet scoped to the owner)."""

    kind: MediaKind
    media: bytes | BinaryIO
    params: JobParams
    background: bytes | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None


def _stream_size(stream: BinaryIO) -> int:
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    return size


def _sha256_of(stream: BinaryIO) -> bytes:
    """The digest of a file read in parts (a video is never read whole into memory)."""
    digest = hashlib.sha256()
    stream.seek(0)
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    stream.seek(0)
    return digest.digest()


def _fingerprint(submission: Submission) -> str:
    media = submission.media
    digest = hashlib.sha256(json.dumps(submission.params.as_dict(), sort_keys=True).encode())
    digest.update(hashlib.sha256(media).digest() if isinstance(media, bytes) else _sha256_of(media))
    digest.update(hashlib.sha256(submission.background or b"").digest())
    digest.update((submission.callback_url or "").encode())
    return digest.hexdigest()


def _checked_video(stream: BinaryIO, settings: Settings) -> VideoInfo:
    size = _stream_size(stream)
    if size == 0:
        raise VideoError("the video file is empty (0 bytes)", code="corrupt_video")
    if size > settings.max_video_bytes:
        raise ApiError(
            f"the video is {size} bytes; the limit is {settings.max_video_bytes} bytes", code="request_too_large"
        )
    return probe_video(stream, max_seconds=settings.max_video_seconds, max_frame_pixels=settings.max_video_frame_pixels)


def check(svc: Services, submission: Submission) -> VideoInfo | None:
    """Everything about a submission that can be checked without storing it (raises the route's errors);
    a video's probe comes back."""
    settings = svc.settings
    params = submission.params
    source: VideoInfo | None = None
    if submission.kind is MediaKind.VIDEO:
        assert not isinstance(submission.media, bytes)
        source = _checked_video(submission.media, settings)
    else:
        assert isinstance(submission.media, bytes)
        probe_image(submission.media, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    if params.effect is Effect.REPLACE:
        if submission.background is None:
            raise ParameterError("background", "effect replace needs a background image file")
        probe_image(submission.background, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    elif submission.background is not None:
        raise ParameterError("background", "only used with effect=replace")
    if submission.callback_url is not None:
        if not settings.webhook_secrets:
            raise ParameterError(
                "callback_url",
                "this service sends no webhooks (BACKDROP_WEBHOOK_SECRETS is not set)",
                code="invalid_callback_url",
            )
        checked_callback_url(submission.callback_url, allowed_networks=settings.webhook_allowed_networks)
    queue = settings.queue_for(params.model)
    if settings.max_queue_depth and svc.jobs.queue_depth(queue) >= settings.max_queue_depth:
        raise ApiError(f"the queue holds {settings.max_queue_depth} or more jobs; try again later", code="queue_full")
    return source


def accept(svc: Services, submission: Submission, owner: str | None) -> JobRecord:
    """Check, store, record and queue a job; returns its record (the earlier job's, for a repeated
    request with the same idempotency key)."""
    source = check(svc, submission)
    params = submission.params
    job_id = uuid.uuid4().hex
    idempotency_key = submission.idempotency_key
    if idempotency_key is not None:
        idempotency_key = f"{owner or ''}:{idempotency_key}"  # keys are per API key
        earlier = svc.jobs.claim_idempotency_key(idempotency_key, _fingerprint(submission), job_id)
        if earlier is not None:
            record = svc.jobs.get(earlier)
            if record is not None and record.owner == owner:
                return record
            # The earlier request with this key failed before its job was recorded: this one takes over.
            job_id = earlier
    media, background = submission.media, submission.background
    try:
        input_key = svc.uploads.put(job_id, media) if isinstance(media, bytes) else svc.uploads.put_file(job_id, media)
        record = JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            params=params,
            created_at=time.time(),
            input_key=input_key,
            background_key=svc.uploads.put(background_name(job_id), background) if background is not None else None,
            owner=owner,
            source=source.as_dict() if source is not None else None,
            callback_url=submission.callback_url,
        )
        svc.jobs.create(record)
        try:
            task = VIDEO_TASK if submission.kind is MediaKind.VIDEO else PROCESS_TASK
            enqueue(svc.celery, job_id, svc.settings.queue_for(params.model), task=task)
        except Exception as exc:  # kombu raises several types for a dead broker
            svc.jobs.delete(job_id)
            raise ApiError(f"queue unreachable: {exc}", code="broker_unavailable") from None
        _confirm_replicated(svc, job_id)
    except Exception:
        if idempotency_key is not None:
            with contextlib.suppress(Exception):  # else the key expires with the job TTL
                svc.jobs.release_idempotency_key(idempotency_key)
        raise
    JOBS_SUBMITTED.labels(params.effect.value).inc()
    return record


def _confirm_replicated(svc: Services, job_id: str) -> None:
    """With Sentinel-managed Redis, a job is answered once a replica has it too. The wait running out
    accepts the job anyway, counted (refusing every job while the replica is down would make the replica
    a single point of failure); a primary gone before it could answer is a 503 (``BrokerUnavailable``),
    since the job may not have reached the replica that takes over."""
    settings = svc.settings
    if not settings.redis_sentinels or not settings.redis_replica_wait_ms:
        return
    if not svc.jobs.confirm_replicated(job_id, settings.redis_replica_wait_ms):
        REPLICATION_UNCONFIRMED.inc()
        log.warning("job %s accepted before a replica confirmed it (the replication window is open)", job_id)


def client_connected(connection: socket.socket | None) -> bool:
    """Whether the HTTP client is still there: its socket has not been closed (a read would give end of
    stream). Unknown sockets (a test client) count as connected."""
    if connection is None:
        return True
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return True
        return bool(connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return True
    except (OSError, ValueError):
        return False


# How often a waiting request looks whether its client is still there.
CLIENT_CHECK_EVERY_S = 0.5


class WaitingFull(ApiError):
    """Every slot for waiting requests in this process is taken."""

    code = "queue_full"


def wait_for(
    svc: Services, record: JobRecord, timeout_s: float, connection: socket.socket | None = None
) -> JobRecord | None:
    """The job's record once it has ended, if that is within ``timeout_s``; None if not (or if the client
    went away). Event-driven: the request is woken when the job's end is published. At most
    ``BACKDROP_MAX_WAITING_REQUESTS`` requests of a process wait at once (else :class:`WaitingFull`)."""
    latest = record

    def finished() -> bool:
        nonlocal latest
        latest = svc.jobs.get(record.id) or latest
        return latest.status.finished

    if record.status.finished:
        return record
    if not svc.waiting_slots.acquire(blocking=False):
        raise WaitingFull(f"{svc.settings.max_waiting_requests} requests already wait here; try again shortly")
    try:
        ended = svc.waiter.wait(
            record.id,
            timeout_s,
            finished,
            slice_s=CLIENT_CHECK_EVERY_S if connection is not None else None,
            still_wanted=(lambda: client_connected(connection)) if connection is not None else None,
        )
    finally:
        svc.waiting_slots.release()
    return latest if ended else None
