"""rembg's HTTP server route, ``POST /api/remove``, answered by Backdrop: the form field ``file`` (the
photo) and rembg's ``om`` (only the mask) and ``bgc`` (a background colour, ``r,g,b,a``), answered with a
PNG as ``rembg s`` answers, through the same queue and workers as every job (docs/api.md, "Switching from
rembg"). rembg's model and matting options are accepted: Backdrop picks its own models and always refines
edges; its errors are FastAPI's ``{"detail": ...}``. Nothing below the API knows this protocol exists.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from api import Services
from api.errors import STATUS_BY_CODE
from api.submission import Submission, accept, wait_for
from backdrop.errors import BackdropError
from backdrop.params import Effect, JobParams, MediaKind
from backdrop.service.jobs import JobStatus
from backdrop.text import parse_bool

blueprint = Blueprint("rembg", __name__)

PATH = "/api/remove"
# rembg's models: those made for people map to Backdrop's person target, the others to auto.
PERSON_MODELS = ("u2net_human_seg",)
MODELS = (
    "u2net", "u2netp", "u2net_human_seg", "u2net_cloth_seg", "silueta", "isnet-general-use", "isnet-anime", "sam",
    "birefnet-general", "birefnet-general-lite", "birefnet-portrait", "birefnet-dis", "birefnet-hrsod",
    "birefnet-cod", "birefnet-massive", "bria-rmbg", "ben2-base", "dis_custom", "u2net_custom",
)  # fmt: skip


class RembgError(BackdropError):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message, code="invalid_parameter")
        self.status = status


def _services() -> Services:
    return current_app.extensions["backdrop"]


def _detail(message: str, status: int) -> Response:
    response = jsonify({"detail": message})
    response.status_code = status
    if status in (429, 503):
        response.headers["Retry-After"] = "5"
    return response


@blueprint.errorhandler(BackdropError)
def backdrop_error(exc: BackdropError) -> Response:
    if isinstance(exc, RembgError):
        return _detail(exc.message, exc.status)
    status = STATUS_BY_CODE.get(exc.code, 422)
    return _detail(exc.message, status if status in (401, 413, 429, 500, 503) else 422)


@blueprint.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    return _detail(exc.description or exc.name, exc.code or 500)


def _owner() -> str | None:
    """With API keys, rembg's route wants one too: ``X-Api-Key`` or ``Authorization: Bearer``."""
    keys = _services().settings.api_keys
    if not keys:
        return None
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    given = (request.headers.get("X-Api-Key") or (bearer if scheme.lower() == "bearer" else "")).strip().encode()
    matched = None
    for key in keys:
        if hmac.compare_digest(given, key.encode()):
            matched = key
    if matched is None:
        raise RembgError("Not authenticated", status=401)
    return hashlib.sha256(matched.encode()).hexdigest()[:16]


def _value(name: str) -> str:
    """A rembg option, from the form or the query (rembg reads some from each)."""
    return (request.form.get(name) or request.args.get(name) or "").strip()


def _flag(name: str) -> bool:
    text = _value(name)
    try:
        return parse_bool(text) if text else False
    except ValueError:
        raise RembgError(f"{name}: {text!r} is not a boolean") from None


def _color(text: str) -> str:
    """rembg's ``r,g,b,a`` as ``#RRGGBBAA``."""
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not all(0 <= part <= 255 for part in parts):
        raise RembgError(f"bgc: {text!r} is not r,g,b,a with each from 0 to 255")
    return "#" + "".join(f"{part:02X}" for part in parts)


@blueprint.post(PATH)
def remove() -> Response:
    svc = _services()
    owner = _owner()
    upload = request.files.get("file")
    if upload is None:
        raise RembgError("file: field required")
    model = _value("model") or "u2net"
    if model not in MODELS:
        raise RembgError(f"model: {model!r} is not one of: {', '.join(MODELS)}")
    for name in ("a", "ppm"):
        _flag(name)
    for name, most in (("af", 255), ("ab", 255), ("ae", 10_000)):
        text = _value(name)
        if text and not (text.isdigit() and int(text) <= most):
            raise RembgError(f"{name}: {text!r} is not a whole number from 0 to {most}")
    only_mask = _flag("om")
    color = _color(_value("bgc")) if _value("bgc") else None
    effect = Effect.MASK if only_mask else Effect.COLOR if color else Effect.CUTOUT
    params = JobParams.parse(
        {
            "effect": effect.value,
            "targets": "person" if model in PERSON_MODELS else "auto",
            "color": color,
            "format": "png",
        }
    )
    record = accept(svc, Submission(kind=MediaKind.IMAGE, media=upload.read(), params=params), owner)
    finished = wait_for(svc, record, svc.settings.max_wait_s, connection=request.environ.get("gunicorn.socket"))
    if finished is None:
        svc.jobs.cancel(record.id)
        raise RembgError(f"the result took longer than {svc.settings.max_wait_s} s", status=503)
    if finished.status is not JobStatus.SUCCEEDED or finished.result is None:
        error = finished.error or {"code": finished.status.value, "message": f"the job is {finished.status.value}"}
        raise BackdropError(error["message"], code=error["code"])
    return Response(svc.storage.get(finished.result.key), mimetype="image/png")
