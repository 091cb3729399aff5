"""The one place where errors become HTTP responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from backdrop.errors import BackdropError
from backdrop.service.observability import REQUESTS_REJECTED

log = logging.getLogger("backdrop.api")

# Every error code the API answers with, and its HTTP status (docs/api.md lists the same; a test checks).
STATUS_BY_CODE = {
    "invalid_parameter": 400,
    "invalid_callback_url": 400,
    "empty_image": 400,
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "job_not_finished": 409,
    "job_not_cancellable": 409,
    "image_too_large": 413,
    "request_too_large": 413,
    "video_too_long": 413,
    "unsupported_format": 415,
    "animated_image": 415,
    "corrupt_image": 415,
    "corrupt_video": 415,
    "unsupported_media_type": 415,
    "invalid_color": 422,
    "unknown_target": 422,
    "unsupported_target": 422,
    "unknown_model": 422,
    "idempotency_key_reused": 422,
    "unsupported_output": 422,
    "queue_full": 429,
    "internal_error": 500,
    "http_error": 500,  # Werkzeug's other errors; they keep their own status
    "broker_unavailable": 503,
    "storage_unavailable": 503,
    "model_unavailable": 503,
}

# Werkzeug's own errors (routing, body size, methods) with our codes; any other status is ``http_error``.
CODE_BY_HTTP_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class ApiError(BackdropError):
    """An HTTP-level error raised by a route (not found, conflict)."""


def error_response(code: str, message: str, status: int | None = None):
    if code not in STATUS_BY_CODE:
        # A code raised somewhere without being listed above (and in docs/api.md) is a bug, not a 400.
        log.error("error code %r is not in STATUS_BY_CODE", code)
    REQUESTS_REJECTED.labels(code).inc()
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status or STATUS_BY_CODE.get(code, 400)
    if response.status_code in (429, 503):
        response.headers["Retry-After"] = "5"
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="backdrop"'
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BackdropError)
    def backdrop_error(exc: BackdropError):
        return error_response(exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        code = CODE_BY_HTTP_STATUS.get(status, "http_error")
        message = exc.description or exc.name
        if status == 413:
            message = "the request body is larger than the service accepts"
        return error_response(code, message, status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response("internal_error", "the service failed unexpectedly; the error was logged")
