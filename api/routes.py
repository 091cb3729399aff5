"""HTTP contract v1 (see ``api/openapi.py`` and the README)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any, BinaryIO

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request
from werkzeug.datastructures import FileStorage

from api import Services
from api.errors import ApiError
from api.openapi import openapi_document
from backdrop.errors import ParameterError
from backdrop.models.registry import DEFAULT_GENERAL_MODEL, DEFAULT_PERSON_MODEL, MODELS
from backdrop.params import LIVE_EFFECTS, Effect, JobParams, MediaKind, OutputFormat, VideoFormat
from backdrop.probe import probe_image
from backdrop.service.jobs import JobRecord, JobStatus
from backdrop.service.observability import JOBS_SUBMITTED, QueueDepthCollector, render_metrics
from backdrop.service.queue import PROCESS_TASK, VIDEO_TASK, enqueue
from backdrop.settings import Settings
from backdrop.video.probe import ACCEPTED as ACCEPTED_VIDEOS
from backdrop.video.probe import VideoError, VideoInfo, probe_video

blueprint = Blueprint("v1", __name__)
log = logging.getLogger("backdrop.api")

_JOB_ID = re.compile(r"[0-9a-f]{32}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
RETRY_AFTER_S = "1"


def services() -> Services:
    return current_app.extensions["backdrop"]


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


@blueprint.before_request
def start_request() -> None:
    g.started = time.perf_counter()
    job_id = (request.view_args or {}).get("job_id")
    g.job_id = job_id if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) else None


@blueprint.after_request
def log_request(response: Response) -> Response:
    if request.path not in ("/healthz", "/metrics"):
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "job_id": getattr(g, "job_id", None),
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - getattr(g, "started", time.perf_counter())) * 1e3, 2),
            },
        )
    return response


@blueprint.before_request
def authenticate() -> None:
    """With API keys configured, every /v1 call needs ``Authorization: Bearer KEY``; the key's id owns
    the jobs it creates."""
    g.owner = None
    keys = services().settings.api_keys
    if not keys or not request.path.startswith("/v1/"):
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given_bytes = given.strip().encode()
    matched = None
    for key in keys:  # compare with every key, in constant time each, whatever matches
        if hmac.compare_digest(given_bytes, key.encode()) and scheme.lower() == "bearer":
            matched = key
    if matched is None:
        raise ApiError("send a valid API key as: Authorization: Bearer KEY", code="unauthorized")
    g.owner = hashlib.sha256(matched.encode()).hexdigest()[:16]


def _load_job(job_id: str) -> JobRecord:
    record = services().jobs.get(job_id) if _JOB_ID.fullmatch(job_id) else None
    # Another key's job is reported exactly like a job that does not exist.
    if record is None or record.owner != g.owner:
        raise ApiError(f"no job {job_id}", code="not_found")
    return record


def present(record: JobRecord) -> dict[str, Any]:
    """The public view of a job record."""
    settings = services().settings
    result = None
    extra: dict[str, Any] = {}
    if record.is_video:
        total = int((record.source or {}).get("frames") or 0)
        done = services().jobs.progress(record.id) if record.status is not JobStatus.QUEUED else 0
        if record.status is JobStatus.SUCCEEDED and record.result is not None and record.result.frames:
            done = total = record.result.frames
        extra["progress"] = {"done": min(done, total) if total else done, "total": total}
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        expiry = settings.result_url_expiry_s
        storage = services().storage
        name = f"backdrop-{record.id[:8]}.{record.result.key.rsplit('.', 1)[-1]}"
        result = {
            "url": storage.presign_get(record.result.key, expiry),
            "download_url": storage.presign_get(record.result.key, expiry, download_name=name),
            "content_type": record.result.content_type,
            "width": record.result.width,
            "height": record.result.height,
            "bytes": record.result.bytes,
            "expires_at": _iso(time.time() + expiry),
        }
        if record.is_video:
            result.update(
                duration_s=record.result.duration_s,
                frames=record.result.frames,
                fps=record.result.fps,
                audio=record.result.audio,
            )
    return {
        "id": record.id,
        "kind": record.params.kind.value,
        "status": record.status.value,
        **extra,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
        "params": record.params.as_dict(),
        "model": record.model,
        "detected": record.detected,
        "found": record.found,
        "timings_ms": record.timings_ms,
        "result": result,
        "error": record.error,
        "links": _links(record.id),
    }


def _job_response(record: JobRecord, status: int = 200) -> Response:
    response = jsonify(present(record))
    response.status_code = status
    if not record.status.finished:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


def _upload(field: str) -> FileStorage | None:
    upload = request.files.get(field)
    if upload is None and field in request.form:
        raise ParameterError(field, "must be sent as a file (multipart/form-data)")
    return upload


def _media_upload() -> tuple[MediaKind, FileStorage]:
    """The job's one file: ``image`` (a photo) or ``video``."""
    image, video = _upload("image"), _upload("video")
    if image is not None and video is not None:
        raise ParameterError("video", "send either an image or a video, not both")
    if image is not None:
        return MediaKind.IMAGE, image
    if video is not None:
        return MediaKind.VIDEO, video
    raise ParameterError("image", "required: send a photo as the file field image, or a clip as video")


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


def _fingerprint(params: JobParams, media: bytes | BinaryIO, background: bytes | None) -> str:
    digest = hashlib.sha256(json.dumps(params.as_dict(), sort_keys=True).encode())
    digest.update(hashlib.sha256(media).digest() if isinstance(media, bytes) else _sha256_of(media))
    digest.update(hashlib.sha256(background or b"").digest())
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


@blueprint.post("/v1/jobs")
def submit_job() -> Response:
    svc = services()
    settings = svc.settings
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise ParameterError("body", "send multipart/form-data with an image file field")
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ParameterError("Idempotency-Key", "must be 1-255 visible ASCII characters")

    # Everything that can be checked is checked before anything is stored or queued.
    kind, upload = _media_upload()
    background_upload = _upload("background")
    background = background_upload.read() if background_upload is not None else None
    params = JobParams.parse({key: request.form.get(key) for key in request.form}, kind)
    source: VideoInfo | None = None
    if kind is MediaKind.VIDEO:
        media: bytes | BinaryIO = upload.stream
        source = _checked_video(upload.stream, settings)
    else:
        media = upload.read()
        probe_image(media, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    if params.effect is Effect.REPLACE:
        if background is None:
            raise ParameterError("background", "effect replace needs a background image file")
        probe_image(background, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    elif background is not None:
        raise ParameterError("background", "only used with effect=replace")

    queue = settings.queue_for(params.model)
    if settings.max_queue_depth and svc.jobs.queue_depth(queue) >= settings.max_queue_depth:
        raise ApiError(f"the queue holds {settings.max_queue_depth} or more jobs; try again later", code="queue_full")

    job_id = uuid.uuid4().hex
    g.job_id = job_id
    if idempotency_key is not None:
        idempotency_key = f"{g.owner or ''}:{idempotency_key}"  # keys are per API key
        earlier = svc.jobs.claim_idempotency_key(idempotency_key, _fingerprint(params, media, background), job_id)
        if earlier is not None:
            record = svc.jobs.get(earlier)
            if record is not None and record.owner == g.owner:
                return _accepted(record)
            # The earlier request with this key failed before its job was recorded: this one takes over.
            job_id = g.job_id = earlier

    try:
        input_key = svc.uploads.put(job_id, media) if isinstance(media, bytes) else svc.uploads.put_file(job_id, media)
        record = JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            params=params,
            created_at=time.time(),
            input_key=input_key,
            background_key=svc.uploads.put(f"{job_id}-background", background) if background is not None else None,
            owner=g.owner,
            source=source.as_dict() if source is not None else None,
        )
        svc.jobs.create(record)
        try:
            enqueue(svc.celery, job_id, queue, task=VIDEO_TASK if kind is MediaKind.VIDEO else PROCESS_TASK)
        except Exception as exc:  # kombu raises several types for a dead broker
            svc.jobs.delete(job_id)
            raise ApiError(f"queue unreachable: {exc}", code="broker_unavailable") from None
    except Exception:
        if idempotency_key is not None:
            with contextlib.suppress(Exception):  # else the key expires with the job TTL
                svc.jobs.release_idempotency_key(idempotency_key)
        raise
    JOBS_SUBMITTED.labels(params.effect.value).inc()
    return _accepted(record)


def _accepted(record: JobRecord) -> Response:
    response = jsonify({"id": record.id, "status": record.status.value, "links": _links(record.id)})
    response.status_code = 202
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return response


@blueprint.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return _job_response(_load_job(job_id))


# The most jobs one status read may name.
MAX_JOBS_PER_READ = 100


@blueprint.get("/v1/jobs")
def get_jobs() -> Response:
    """Several jobs' status in one read (a client with many jobs in flight polls once, not once per job):
    ``?ids=a,b,c``. Jobs that do not exist (or are another key's) are listed under ``missing``."""
    ids = [job_id.strip() for job_id in request.args.get("ids", "").split(",") if job_id.strip()]
    if not ids:
        raise ParameterError("ids", "name the jobs: ?ids=ID,ID,...")
    if len(ids) > MAX_JOBS_PER_READ:
        raise ParameterError("ids", f"at most {MAX_JOBS_PER_READ} jobs per read")
    valid = [job_id for job_id in ids if _JOB_ID.fullmatch(job_id)]
    records = dict(zip(valid, services().jobs.get_many(valid), strict=True))
    found = [r for r in (records.get(job_id) for job_id in ids) if r is not None and r.owner == g.owner]
    found_ids = {record.id for record in found}
    missing = [job_id for job_id in ids if job_id not in found_ids]
    response = jsonify({"jobs": [present(record) for record in found], "missing": missing})
    if any(not record.status.finished for record in found):
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response


@blueprint.get("/v1/jobs/<job_id>/result")
def get_result(job_id: str) -> Response:
    record = _load_job(job_id)
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        url = services().storage.presign_get(record.result.key, services().settings.result_url_expiry_s)
        return redirect(url, code=303)
    if record.status.finished:
        raise ApiError(f"job {job_id} is {record.status.value}: it has no result", code="not_found")
    response = jsonify(
        {"error": {"code": "job_not_finished", "message": f"job {job_id} is {record.status.value}; try again soon"}}
    )
    response.status_code = 409
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


@blueprint.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str) -> Response:
    record = _load_job(job_id)
    outcome = services().jobs.cancel(record.id)
    if outcome == "missing":
        raise ApiError(f"no job {job_id}", code="not_found")
    if outcome == "cancelled_running":  # a video: its workers stop within a second or so
        return _job_response(_load_job(job_id), status=202)
    if outcome != "cancelled":
        raise ApiError(
            f"job {job_id} is {outcome.strip(chr(34))}: only queued jobs and running videos can be cancelled",
            code="job_not_cancellable",
        )
    return _job_response(_load_job(job_id))


@blueprint.get("/v1/models")
def list_models() -> Response:
    settings = services().settings
    models = [
        {
            "name": spec.name,
            "description": spec.description,
            "classes": list(spec.classes),
            "variants": [{"name": v.name, "input": [v.input_width, v.input_height]} for v in spec.variants],
        }
        for spec in MODELS.values()
    ]
    return jsonify(
        {
            "models": models,
            "defaults": {"person": DEFAULT_PERSON_MODEL, "other": DEFAULT_GENERAL_MODEL},
            "effects": [e.value for e in Effect],
            "formats": {
                "image": {"in": ["jpeg", "png", "webp"], "out": [f.value for f in OutputFormat]},
                "video": {"in": ACCEPTED_VIDEOS, "out": [f.value for f in VideoFormat]},
            },
            "limits": {
                "image_bytes": settings.max_image_bytes,
                "image_pixels": settings.max_image_pixels,
                "video_bytes": settings.max_video_bytes,
                "video_seconds": settings.max_video_seconds,
                "video_frame_pixels": settings.max_video_frame_pixels,
            },
        }
    )


@blueprint.get("/v1/live")
def live_mode() -> Response:
    """Where live mode's WebSocket is (the web page and clients look here), when it is configured."""
    settings = services().settings
    if not settings.live_url:
        raise ApiError("live mode is not configured on this service (BACKDROP_LIVE_URL)", code="not_found")
    return jsonify(
        {
            "websocket_url": settings.live_url,
            "effects": [effect.value for effect in LIVE_EFFECTS],
            "formats": ["jpeg", "webp"],
            "limits": {
                "frame_pixels": settings.live_max_frame_pixels,
                "message_bytes": settings.live_max_message_bytes,
                "frames_in_flight": settings.live_max_in_flight,
                "idle_timeout_s": settings.live_idle_timeout_s,
            },
            "api_key": 'when the service has API keys: ?api_key=KEY in the URL, or {"api_key": KEY} first',
        }
    )


@blueprint.get("/")
def web_page() -> Response:
    """The web page: plain HTML, CSS and JS that use only the public /v1 API."""
    return current_app.send_static_file("index.html")


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Response:
    svc = services()
    checks: dict[str, str] = {}
    for name, check in (("broker", svc.jobs.ping), ("storage", svc.storage.ping)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {getattr(exc, 'message', exc)}"
    ready = all(value == "ok" for value in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


@blueprint.get("/metrics")
def metrics() -> Response:
    svc = services()
    body, content_type = render_metrics(svc.settings, QueueDepthCollector(svc.jobs.queue_depth, svc.settings.queues))
    return Response(body, content_type=content_type)


@blueprint.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
