"""remove.bg's ``POST /v1.0/removebg``, answered by Backdrop: a thin adapter that turns remove.bg's
request into one Backdrop job (the same queue and workers as every job), waits for it, and answers as
remove.bg answers, so code written for remove.bg works by changing its base URL (docs/api.md, "Switching
from remove.bg").

What Backdrop cannot do is refused as remove.bg refuses a bad request (400, its error format): a source
URL (``image_url``, ``bg_image_url``: Backdrop never fetches URLs), shadows, ``type=graphic``, and any
value it does not know. Nothing below the API knows this protocol exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from api import Services
from api.errors import STATUS_BY_CODE
from api.submission import Submission, accept, wait_for
from backdrop.errors import BackdropError, ParameterError
from backdrop.params import Effect, JobParams, MediaKind, OutputFormat
from backdrop.service.jobs import JobRecord, JobStatus
from backdrop.text import parse_bool

blueprint = Blueprint("removebg", __name__)

PATH = "/v1.0/removebg"
# remove.bg's sizes, as the most pixels of the result (None: the photo's own size).
SIZES: dict[str, int | None] = {
    "preview": 250_000, "small": 250_000, "regular": 250_000, "medium": 1_500_000, "hd": 4_000_000,
    "full": None, "4k": None, "50mp": None, "auto": None,
}  # fmt: skip
# remove.bg's foreground types, as Backdrop's targets (DeepLab's Pascal VOC classes; auto: people, else
# whatever of those is most prominent). "product" is what DeepLab knows among household objects.
TYPES: dict[str, str] = {
    "auto": "auto",
    "person": "person",
    "car": "car",
    "animal": "bird,cat,cow,dog,horse,sheep",
    "transportation": "aeroplane,bicycle,boat,bus,car,motorbike,train",
    "product": "bottle,chair,diningtable,pottedplant,sofa,tv",
}
# And back: the X-Type of what was found most.
FOUND_TYPES = {
    "person": "person", "car": "car", "bird": "animal", "cat": "animal", "cow": "animal", "dog": "animal",
    "horse": "animal", "sheep": "animal", "aeroplane": "transportation", "bicycle": "transportation",
    "boat": "transportation", "bus": "transportation", "motorbike": "transportation", "train": "transportation",
    "bottle": "product", "chair": "product", "diningtable": "product", "pottedplant": "product", "sofa": "product",
    "tv": "product",
}  # fmt: skip
FORMATS = {"auto": None, "png": OutputFormat.PNG, "jpg": OutputFormat.JPEG, "jpeg": OutputFormat.JPEG,
           "webp": OutputFormat.WEBP, "zip": OutputFormat.ZIP}  # fmt: skip
TYPE_LEVELS = ("none", "1", "2", "latest")
# Parameters accepted with only the values that mean "nothing to do" (Backdrop has no shadows).
NO_SHADOW = {"add_shadow": ("false", "0"), "shadow_type": ("none",), "shadow_opacity": ("0",)}
KNOWN = {
    "image_file", "image_file_b64", "image_url", "size", "type", "type_level", "format", "roi", "crop",
    "crop_margin", "scale", "position", "channels", "bg_color", "bg_image_file", "bg_image_url",
    "semitransparency", *NO_SHADOW,
}  # fmt: skip
# remove.bg's status for each of Backdrop's error codes (anything else: 400 as a bad request).
STATUS = {
    "unauthorized": 403,
    "queue_full": 429,
    "broker_unavailable": 503,
    "storage_unavailable": 503,
    "model_unavailable": 503,
    "timeout": 503,
    "internal_error": 500,
    "worker_lost": 500,
}


class RemoveBgError(BackdropError):
    """An error in remove.bg's own terms (its title; ``code`` as its documentation names it)."""

    def __init__(self, title: str, code: str, detail: str | None = None, status: int = 400) -> None:
        super().__init__(detail or title, code=code)
        self.title, self.detail, self.status = title, detail, status


def _services() -> Services:
    return current_app.extensions["backdrop"]


def _errors(title: str, code: str, detail: str | None, status: int, retry_after: int | None = None) -> Response:
    error = {"title": title, "code": code}
    if detail:
        error["detail"] = detail
    response = jsonify({"errors": [error]})
    response.status_code = status
    if status == 429:
        retry_after = retry_after or 5
        response.headers["X-RateLimit-Limit"] = str(_services().settings.max_queue_depth or 0)
        response.headers["X-RateLimit-Remaining"] = "0"
        response.headers["X-RateLimit-Reset"] = str(int(time.time()) + retry_after)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@blueprint.errorhandler(BackdropError)
def backdrop_error(exc: BackdropError) -> Response:
    if isinstance(exc, RemoveBgError):
        return _errors(exc.title, exc.code, exc.detail, exc.status)
    status = STATUS.get(exc.code) or (STATUS_BY_CODE.get(exc.code, 400) if exc.code != "unsupported_output" else 400)
    status = status if status in (403, 429, 500, 503) else 400
    title = "Invalid parameter value" if isinstance(exc, ParameterError) else exc.code.replace("_", " ").capitalize()
    return _errors(title, exc.code, exc.message, status, retry_after=5 if status in (429, 503) else None)


@blueprint.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        return _errors("File too large", "file_too_large", "the request body is larger than the service accepts", 400)
    return _errors(exc.name, "bad_request" if status < 500 else "internal_error", exc.description, status)


def _owner() -> str | None:
    """The API key's owner id, when the service has keys (remove.bg's X-Api-Key header)."""
    keys = _services().settings.api_keys
    if not keys:
        return None
    given = request.headers.get("X-Api-Key", "").strip().encode()
    matched = None
    for key in keys:  # compare with every key, in constant time each
        if hmac.compare_digest(given, key.encode()):
            matched = key
    if matched is None:
        title = "Missing API Key" if not given else "Invalid API Key"
        raise RemoveBgError(title, "auth_failed", "send a valid key in the X-Api-Key header", status=403)
    return hashlib.sha256(matched.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Request:
    """remove.bg's request, read from a multipart form, a urlencoded form or JSON: the values as text, and
    the uploaded files."""

    values: dict[str, str]
    files: dict[str, bytes]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _read_request() -> Request:
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise RemoveBgError("Invalid JSON body", "invalid_json", "send a JSON object")
        return Request({str(k): _text(v) for k, v in body.items() if v is not None}, {})
    values = {key: request.form.get(key, "") for key in request.form}
    files = {key: request.files[key].read() for key in request.files}
    return Request(values, files)


def _image(found: Request) -> bytes:
    sources = [
        name for name in ("image_file", "image_file_b64", "image_url") if name in found.values or name in found.files
    ]
    if not sources:
        raise RemoveBgError("No image given", "missing_source", "send image_file (a file) or image_file_b64")
    if len(sources) > 1:
        raise RemoveBgError("Multiple image sources given", "multiple_sources", f"send one of: {', '.join(sources)}")
    if sources[0] == "image_url":
        raise RemoveBgError(
            "Invalid parameter value",
            "unsupported_source",
            "image_url: Backdrop never fetches URLs; send image_file or image_file_b64",
        )
    if sources[0] == "image_file":
        if "image_file" not in found.files:
            raise RemoveBgError(
                "Invalid parameter value", "invalid_parameter", "image_file: send it as a file (multipart)"
            )
        return found.files["image_file"]
    return _base64(found.values["image_file_b64"], "image_file_b64")


def _base64(text: str, name: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RemoveBgError("Invalid parameter value", "invalid_base64", f"{name}: not valid base64") from None
    if not data:
        raise RemoveBgError("Invalid parameter value", "invalid_base64", f"{name}: empty")
    return data


def _choice(values: dict[str, str], name: str, allowed: dict[str, Any] | tuple[str, ...], default: str) -> str:
    text = values.get(name, "").strip().lower() or default
    if text not in allowed:
        names = ", ".join(allowed)
        raise RemoveBgError(
            "Invalid parameter value", "invalid_parameter", f"{name}: {values[name]!r} is not one of: {names}"
        )
    return text


def _flag(values: dict[str, str], name: str, default: bool) -> bool:
    if not values.get(name, "").strip():
        return default
    try:
        return parse_bool(values[name])
    except ValueError:
        raise RemoveBgError(
            "Invalid parameter value", "invalid_parameter", f"{name}: {values[name]!r} is not true or false"
        ) from None


@dataclass(frozen=True)
class Translation:
    """A remove.bg request as a Backdrop submission, with what the answer needs: the format asked for
    (None: auto) and whether to name the type found."""

    submission: Submission
    format: OutputFormat | None
    name_type: bool


def translate(found: Request) -> Translation:
    """remove.bg's parameters onto Backdrop's job (see the module's docstring)."""
    values = found.values
    unknown = sorted((set(values) | set(found.files)) - KNOWN)
    if unknown:
        raise RemoveBgError("Invalid parameter", "unknown_parameter", f"{unknown[0]}: not a parameter of this API")
    for name, allowed in NO_SHADOW.items():
        if values.get(name, "").strip() and values[name].strip().lower() not in allowed:
            raise RemoveBgError("Invalid parameter value", "unsupported_parameter", f"{name}: Backdrop adds no shadows")
    if values.get("bg_image_url", "").strip():
        raise RemoveBgError(
            "Invalid parameter value",
            "unsupported_source",
            "bg_image_url: Backdrop never fetches URLs; send bg_image_file",
        )
    image = _image(found)
    kind = _choice(values, "type", (*TYPES, "graphic"), "auto")
    if kind == "graphic":
        raise RemoveBgError(
            "Invalid parameter value",
            "unsupported_parameter",
            "type: graphics are not among the subjects Backdrop finds",
        )
    size = _choice(values, "size", SIZES, "preview")
    fmt = FORMATS[_choice(values, "format", FORMATS, "auto")]
    channels = _choice(values, "channels", ("rgba", "alpha"), "rgba")
    level = _choice(values, "type_level", TYPE_LEVELS, "1")
    _flag(values, "semitransparency", True)  # Backdrop's mattes are soft at edges either way (docs/api.md)
    background = found.files.get("bg_image_file") or (
        _base64(values["bg_image_file"], "bg_image_file") if values.get("bg_image_file", "").strip() else None
    )
    color = values.get("bg_color", "").strip() or None
    if channels == "alpha" and (color or background):
        raise RemoveBgError(
            "Invalid parameter value",
            "invalid_parameter",
            "channels=alpha gives the matte alone: no bg_color or bg_image_file",
        )
    if color and background:
        raise RemoveBgError("Invalid parameter value", "invalid_parameter", "give bg_color or bg_image_file, not both")
    effect = (
        Effect.MASK
        if channels == "alpha"
        else Effect.REPLACE
        if background
        else Effect.COLOR
        if color
        else Effect.CUTOUT
    )
    fields: dict[str, str | None] = {
        "effect": effect.value,
        "targets": TYPES[kind],
        "color": color,
        "format": fmt.value if fmt else None,
        "max_pixels": str(SIZES[size]) if SIZES[size] else None,
        "crop": "true" if _flag(values, "crop", False) else None,
        "crop_margin": values.get("crop_margin") or None,
        "scale": values.get("scale") or None,
        "position": values.get("position") or None,
        "roi": values.get("roi") or None,
    }
    params = JobParams.parse(fields)
    if fmt is None:  # auto: PNG when the result has transparency, else JPEG (as remove.bg)
        params = JobParams.parse({**fields, "format": "png" if params.translucent or effect is Effect.MASK else "jpeg"})
    submission = Submission(kind=MediaKind.IMAGE, media=image, params=params, background=background)
    return Translation(submission, fmt, name_type=level != "none")


@blueprint.post(PATH)
def remove_background() -> Response:
    svc = _services()
    owner = _owner()
    translation = translate(_read_request())
    record = accept(svc, translation.submission, owner)
    finished = wait_for(svc, record, svc.settings.max_wait_s, connection=request.environ.get("gunicorn.socket"))
    if finished is None:
        svc.jobs.cancel(record.id)  # if it is still queued; a running photo ends in a moment anyway
        raise RemoveBgError(
            "Timed out", "timeout", f"the result took longer than {svc.settings.max_wait_s} s", status=503
        )
    return _answer(svc, finished, translation)


def _answer(svc: Services, record: JobRecord, translation: Translation) -> Response:
    if record.status is not JobStatus.SUCCEEDED or record.result is None:
        error = record.error or {"code": record.status.value, "message": f"the job is {record.status.value}"}
        raise BackdropError(error["message"], code=error["code"])
    if not record.found:
        raise RemoveBgError(
            "Could not identify foreground in image",
            "unknown_foreground",
            "no subject of the requested type was found",
        )
    data = svc.storage.get(record.result.key)
    foreground = record.result.foreground or {"top": 0, "left": 0, "width": 0, "height": 0}
    headers = {
        "X-Width": str(record.result.width),
        "X-Height": str(record.result.height),
        "X-Credits-Charged": "0",
        **{f"X-Foreground-{side.capitalize()}": str(foreground[side]) for side in ("top", "left", "width", "height")},
    }
    detected = record.detected or {}
    if translation.name_type:
        main = max(detected, key=lambda target: detected[target], default=None)
        headers["X-Type"] = FOUND_TYPES.get(main or "", "other")
    accept = request.accept_mimetypes
    if accept.quality("application/json") > accept.quality(record.result.content_type):  # else the bytes
        body = {
            "data": {
                "result_b64": base64.b64encode(data).decode(),
                **{f"foreground_{side}": foreground[side] for side in ("top", "left", "width", "height")},
            }
        }
        response = Response(json.dumps(body), mimetype="application/json")
    else:
        response = Response(data, mimetype=record.result.content_type)
    response.headers.update(headers)
    return response
