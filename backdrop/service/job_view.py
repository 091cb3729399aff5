"""The public JSON of a job: what ``GET /v1/jobs/{id}`` answers and what a webhook delivers (one body,
built in one place; the API and the workers both import it, neither imports the ML stack for it)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from backdrop.service.jobs import JobRecord, JobStatus, JobStore
from backdrop.service.storage import Storage
from backdrop.settings import Settings


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


def job_view(record: JobRecord, settings: Settings, storage: Storage, jobs: JobStore) -> dict[str, Any]:
    """The public view of a job record (result URLs presigned now, valid ``BACKDROP_RESULT_URL_EXPIRY_S``)."""
    result = None
    extra: dict[str, Any] = {}
    if record.is_video:
        total = int((record.source or {}).get("frames") or 0)
        done = jobs.progress(record.id) if record.status is not JobStatus.QUEUED else 0
        if record.status is JobStatus.SUCCEEDED and record.result is not None and record.result.frames:
            done = total = record.result.frames
        extra["progress"] = {"done": min(done, total) if total else done, "total": total}
    if record.status is JobStatus.SUCCEEDED and record.result is not None:
        expiry = settings.result_url_expiry_s
        name = f"backdrop-{record.id[:8]}.{record.result.key.rsplit('.', 1)[-1]}"
        result = {
            "url": storage.presign_get(record.result.key, expiry),
            "download_url": storage.presign_get(record.result.key, expiry, download_name=name),
            "content_type": record.result.content_type,
            "width": record.result.width,
            "height": record.result.height,
            "bytes": record.result.bytes,
            "expires_at": iso_time(time.time() + expiry),
        }
        if record.result.foreground is not None:
            result["foreground"] = record.result.foreground
        if record.is_video:
            result.update(
                duration_s=record.result.duration_s,
                frames=record.result.frames,
                fps=record.result.fps,
                audio=record.result.audio,
            )
    view = {
        "id": record.id,
        "kind": record.params.kind.value,
        "status": record.status.value,
        **extra,
        "created_at": iso_time(record.created_at),
        "started_at": iso_time(record.started_at),
        "finished_at": iso_time(record.finished_at),
        "params": record.params.as_dict(),
        "model": record.model,
        "detected": record.detected,
        "found": record.found,
        "timings_ms": record.timings_ms,
        "result": result,
        "error": record.error,
        "links": job_links(record.id),
    }
    if record.callback_url is not None:
        view["callback_url"] = record.callback_url
        view["webhook"] = record.webhook or {"state": "pending", "attempts": 0}
    return view
