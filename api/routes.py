"""HTTP contract v1 (see ``api/openapi.py`` and the README)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request
from werkzeug.datastructures import FileStorage

from api import Services
from api.errors import ApiError
from api.openapi import openapi_document
from api.submission import Submission, WaitingFull, accept, wait_for
from backdrop.errors import ParameterError
from backdrop.models.registry import DEFAULT_GENERAL_MODEL, DEFAULT_PERSON_MODEL, MODELS
from backdrop.params import LIVE_EFFECTS, Effect, JobParams, MediaKind, OutputFormat, VideoFormat
from backdrop.service.job_view import job_links, job_view
from backdrop.service.jobs import JobRecord, JobStatus
from backdrop.service.observability import QueueDepthCollector, render_metrics
from backdrop.settings import Settings
from backdrop.video.probe import ACCEPTED as ACCEPTED_VIDEOS

blueprint = Blueprint("v1", __name__)
log = logging.getLogger("backdrop.api")

_JOB_ID = re.compile(r"[0-9a-f]{32}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
RETRY_AFTER_S = "1"


def services() -> Services:
    return current_app.extensions["backdrop"]


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
    svc = services()
    return job_view(record, svc.settings, svc.storage, svc.jobs)


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


# Prefer: wait=N (RFC 7240): the request waits up to N seconds for its job to end.
_PREFER_WAIT = re.compile(r"(?:^|[,;])\s*wait\s*=\s*\"?(\d+)\"?\s*(?=$|[,;])", re.IGNORECASE)


def preferred_wait(settings: Settings) -> int | None:
    """The wait asked for in ``Prefer`` (RFC 7240), clamped to ``BACKDROP_MAX_WAIT_S``; None if none."""
    asked = [int(m.group(1)) for header in request.headers.getlist("Prefer") for m in _PREFER_WAIT.finditer(header)]
    return min(asked[0], settings.max_wait_s) if asked else None


@blueprint.post("/v1/jobs")
def submit_job() -> Response:
    svc = services()
    settings = svc.settings
    if not (request.mimetype or "").startswith("multipart/form-data"):
        raise ParameterError("body", "send multipart/form-data with an image file field")
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise ParameterError("Idempotency-Key", "must be 1-255 visible ASCII characters")
    wait_s = preferred_wait(settings)

    kind, upload = _media_upload()
    background_upload = _upload("background")
    fields = {key: request.form.get(key) for key in request.form}
    callback_url = (fields.pop("callback_url", None) or "").strip() or None
    submission = Submission(
        kind=kind,
        media=upload.stream if kind is MediaKind.VIDEO else upload.read(),
        params=JobParams.parse(fields, kind),
        background=background_upload.read() if background_upload is not None else None,
        callback_url=callback_url,
        idempotency_key=idempotency_key,
    )
    record = accept(svc, submission, g.owner)
    g.job_id = record.id
    if wait_s:
        try:
            finished = wait_for(svc, record, wait_s)
        except WaitingFull:
            finished = None  # a preference, not a requirement: answered as without it
        if finished is not None:
            response = _job_response(finished, status=201)
            response.headers["Location"] = f"/v1/jobs/{finished.id}"
            response.headers["Preference-Applied"] = f"wait={wait_s}"
            return response
    return _accepted(record)


def _accepted(record: JobRecord) -> Response:
    response = jsonify({"id": record.id, "status": record.status.value, "links": job_links(record.id)})
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
