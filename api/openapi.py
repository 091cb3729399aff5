"""The v1 contract as an OpenAPI 3.0 document, served at ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from backdrop.models.registry import MODELS
from backdrop.params import BLUR_LEVELS, Bokeh, Effect, Keep, OutputFormat, Subjects, VideoFormat

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_LINKS = {
    "type": "object",
    "required": ["self", "result"],
    "properties": {"self": {"type": "string"}, "result": {"type": "string"}},
}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}
_JOB = {
    "type": "object",
    "required": ["id", "status", "created_at", "started_at", "finished_at", "params", "detected", "timings_ms",
                 "result", "error"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["image", "video"]},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "progress": {
            "type": "object",
            "description": "videos only: frames rendered and frames in the clip",
            "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
        },
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
        "params": {"type": "object"},
        "model": {"type": "string", "nullable": True},
        "detected": {"type": "object", "nullable": True, "additionalProperties": {"type": "number"}},
        "found": {"type": "boolean", "nullable": True},
        "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        "result": {
            "type": "object",
            "nullable": True,
            "required": ["url", "content_type", "width", "height", "bytes", "expires_at"],
            "properties": {
                "url": {"type": "string"},
                "download_url": {"type": "string", "description": "the same, saved as a file by browsers"},
                "content_type": {"type": "string"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "bytes": {"type": "integer"},
                "expires_at": {"type": "string", "format": "date-time"},
                "foreground": {"type": "object", "description": "photos: the subject's box in the result",
                               "properties": {"top": {"type": "integer"}, "left": {"type": "integer"},
                                              "width": {"type": "integer"}, "height": {"type": "integer"}}},
                "duration_s": {"type": "number", "description": "videos only"},
                "frames": {"type": "integer", "description": "videos only"},
                "fps": {"type": "number", "description": "videos only"},
                "audio": {"type": "boolean", "description": "videos only: the result has sound"},
            },
        },
        "error": {
            "type": "object",
            "nullable": True,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
        "links": _LINKS,
        "callback_url": {"type": "string", "description": "where the job's JSON is POSTed when it ends"},
        "webhook": {"type": "object", "description": "the delivery: state, attempts, last_status, delivered_at"},
    },
}  # fmt: skip
_REMOVEBG_ERROR = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["title"],
                "properties": {"title": {"type": "string"}, "code": {"type": "string"}, "detail": {"type": "string"}},
            },
        }
    },
}
_REMOVEBG_FIELDS = {
    "image_file": {"type": "string", "format": "binary"},
    "image_file_b64": {"type": "string"},
    "image_url": {"type": "string", "description": "refused: Backdrop never fetches URLs"},
    "size": {"type": "string"},
    "type": {"type": "string"},
    "type_level": {"type": "string"},
    "format": {"type": "string"},
    "roi": {"type": "string"},
    "crop": {"type": "string"},
    "crop_margin": {"type": "string"},
    "scale": {"type": "string"},
    "position": {"type": "string"},
    "channels": {"type": "string"},
    "bg_color": {"type": "string"},
    "bg_image_file": {"type": "string", "format": "binary"},
    "semitransparency": {"type": "string"},
}
_REMOVEBG_IMAGE = {"schema": {"type": "string", "format": "binary"}}
_DETAIL = {"description": "FastAPI-style error", "content": {"application/json": {"schema": {
    "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}}}}  # fmt: skip


def _removebg_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _REMOVEBG_ERROR}}}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _job_id_parameter() -> dict[str, Any]:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    classes = sorted({c for spec in MODELS.values() for c in spec.classes})
    job_response = {
        "description": "the job",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Backdrop",
            "version": "1",
            "description": "Portrait mode as a service: submit a photo, poll the job, fetch the result.",
        },
        "paths": {
            "/v1/jobs": {
                "get": {
                    "summary": "Several jobs' status in one read",
                    "operationId": "getJobs",
                    "parameters": [{"name": "ids", "in": "query", "required": True,
                                    "schema": {"type": "string"}, "description": "comma list of up to 100 job ids"}],
                    "responses": {
                        "200": {"description": "the jobs found, and the ids not found",
                                "content": {"application/json": {"schema": {
                                    "type": "object", "required": ["jobs", "missing"],
                                    "properties": {"jobs": {"type": "array",
                                                            "items": {"$ref": "#/components/schemas/Job"}},
                                                   "missing": {"type": "array", "items": {"type": "string"}}},
                                }}}},
                        "400": _error("no ids, or more than 100"),
                        "401": _error("missing or wrong API key"),
                        "503": _error("unavailable"),
                    },
                },
                "post": {
                    "summary": "Submit a photo",
                    "operationId": "submitJob",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "schema": {"type": "string", "maxLength": 255}},
                        {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                         "description": "wait=N (RFC 7240): answer 201 with the finished job if it ends within "
                                        "N seconds (clamped to BACKDROP_MAX_WAIT_S)"},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "description": "exactly one of image and video",
                                    "properties": {
                                        "image": {"type": "string", "format": "binary",
                                                  "description": "a photo: JPEG, PNG or WebP"},
                                        "video": {"type": "string", "format": "binary",
                                                  "description": "a clip: MP4, MOV, M4V, WebM, MKV, AVI, GIF"},
                                        "background": {"type": "string", "format": "binary",
                                                       "description": "for effect=replace"},
                                        "effect": {"type": "string", "enum": [e.value for e in Effect]},
                                        "strength": {"type": "string",
                                                     "description": f"1-100 or {'|'.join(BLUR_LEVELS)}"},
                                        "bokeh": {"type": "string", "enum": [b.value for b in Bokeh]},
                                        "targets": {"type": "string",
                                                    "description": "comma list of: " + ", ".join(classes)},
                                        "model": {"type": "string", "enum": list(MODELS)},
                                        "color": {"type": "string",
                                                  "description": "#RRGGBB, #RGB, #RRGGBBAA or a colour name"},
                                        "format": {"type": "string",
                                                   "enum": [*(f.value for f in OutputFormat),
                                                            *(f.value for f in VideoFormat)],
                                                   "description": "jpeg, png, webp for photos; mp4, webm for videos"},
                                        "quality": {"type": "string", "description": "1-100"},
                                        "keep": {"type": "string", "enum": [k.value for k in Keep],
                                                 "description": "held: also what the targets hold, ride or sit on"},
                                        "subjects": {"type": "string", "enum": [s.value for s in Subjects],
                                                     "description": "main (default): the most prominent person "
                                                     "and those with them; all: everyone"},
                                        "keep_islands": {"type": "string", "enum": ["true", "false"]},
                                        "keep_metadata": {"type": "string", "enum": ["true", "false"]},
                                        "max_pixels": {"type": "string", "description": "photos: shrink to this"},
                                        "roi": {"type": "string", "description": "x1 y1 x2 y2 in px or %"},
                                        "crop": {"type": "string", "enum": ["true", "false"]},
                                        "crop_margin": {"type": "string", "description": "1, 2 or 4 px or % values"},
                                        "scale": {"type": "string", "description": "original, or 10%-100%"},
                                        "position": {"type": "string", "description": "original, center, X% Y%"},
                                        "callback_url": {"type": "string", "description": "signed webhook target"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {**job_response, "description": "Prefer: wait=N and the job ended in time",
                                "headers": {"Location": {"schema": {"type": "string"}},
                                            "Preference-Applied": {"schema": {"type": "string"}}}},
                        "202": {
                            "description": "accepted",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {
                                "type": "object",
                                "required": ["id", "status", "links"],
                                "properties": {"id": {"type": "string"}, "status": {"type": "string"}, "links": _LINKS},
                            }}},
                        },
                        "400": _error("malformed request or parameter"),
                        "401": _error("API keys are configured and none (or a wrong one) was sent"),
                        "413": _error("too large, or a video too long"),
                        "415": _error("not a supported image or video (by content)"),
                        "422": _error("semantically invalid (target, model, colour, idempotency key reuse)"),
                        "429": _error("the queue is full; retry after the Retry-After header's seconds"),
                        "503": _error("broker or storage unavailable"),
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's status and result",
                    "operationId": "getJob",
                    "parameters": [_job_id_parameter()],
                    "responses": {"200": job_response, "401": _error("missing or wrong API key"),
                                  "404": _error("unknown job"), "503": _error("unavailable")},
                },
                "delete": {
                    "summary": "Cancel a queued job, or a running video",
                    "operationId": "cancelJob",
                    "parameters": [_job_id_parameter()],
                    "responses": {
                        "200": job_response,
                        "202": {**job_response, "description": "a running video: its workers stop within seconds"},
                        "404": _error("unknown job"),
                        "409": _error("already running or finished"),
                        "503": _error("unavailable"),
                    },
                },
            },
            "/v1/jobs/{job_id}/result": {
                "get": {
                    "summary": "Redirect to the result",
                    "operationId": "getResult",
                    "parameters": [_job_id_parameter()],
                    "responses": {
                        "303": {"description": "see the presigned result URL",
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "404": _error("unknown job, or finished without a result"),
                        "409": _error("not finished yet"),
                        "503": _error("unavailable"),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Models and the classes they segment",
                    "operationId": "listModels",
                    "responses": {"200": {"description": "models",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
            "/v1/live": {
                "get": {
                    "summary": "Where the live WebSocket is",
                    "operationId": "liveMode",
                    "responses": {
                        "200": {"description": "websocket_url, effects, formats, limits",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "401": _error("missing or wrong API key"),
                        "404": _error("live mode is not configured"),
                    },
                }
            },
            "/v1.0/removebg": {
                "post": {
                    "summary": "remove.bg's API: remove the background, answered as remove.bg answers",
                    "operationId": "removeBg",
                    "parameters": [{"name": "X-Api-Key", "in": "header", "required": False,
                                    "schema": {"type": "string"}}],
                    "requestBody": {"required": True, "content": {
                        "multipart/form-data": {"schema": {"type": "object", "properties": _REMOVEBG_FIELDS}},
                        "application/json": {"schema": {"type": "object", "properties": {
                            k: v for k, v in _REMOVEBG_FIELDS.items() if v.get("format") != "binary"}}},
                    }},
                    "responses": {
                        "200": {"description": "the image (or JSON with result_b64, with Accept: application/json)",
                                "content": {"image/png": _REMOVEBG_IMAGE, "image/jpeg": _REMOVEBG_IMAGE,
                                            "image/webp": _REMOVEBG_IMAGE, "application/zip": _REMOVEBG_IMAGE,
                                            "application/json": {"schema": {"type": "object"}}}},
                        "400": _removebg_error("bad request: source, parameter, image, or nothing found"),
                        "403": _removebg_error("API keys are configured and none (or a wrong one) was sent"),
                        "429": _removebg_error("the queue is full"),
                        "500": _removebg_error("the job failed in a worker"),
                        "503": _removebg_error("unavailable, or the result took too long"),
                    },
                }
            },
            "/api/remove": {
                "post": {
                    "summary": "rembg's server route: a PNG without its background",
                    "operationId": "rembgRemove",
                    "parameters": [{"name": "bgc", "in": "query", "required": False, "schema": {"type": "string"},
                                    "description": "background colour r,g,b,a"}],
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                        "type": "object", "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                                       "om": {"type": "string"}, "a": {"type": "string"}, "af": {"type": "string"},
                                       "ab": {"type": "string"}, "ae": {"type": "string"}, "ppm": {"type": "string"},
                                       "bgc": {"type": "string"}}}}}},
                    "responses": {
                        "200": {"description": "the PNG", "content": {"image/png": _REMOVEBG_IMAGE}},
                        "401": _DETAIL, "413": _DETAIL, "422": _DETAIL, "429": _DETAIL, "500": _DETAIL, "503": _DETAIL,
                    },
                }
            },
            "/healthz": {"get": {"summary": "Process alive", "operationId": "healthz",
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Broker and storage reachable", "operationId": "readyz",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3 document"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "text exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/": {"get": {"summary": "The web page", "operationId": "webPage",
                          "responses": {"200": {"description": "HTML",
                                                "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {
            "schemas": {"Error": _ERROR, "Job": _JOB},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "only when the service has API keys configured"}},
        },
    }  # fmt: skip
