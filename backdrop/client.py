"""A Python client for the Backdrop HTTP API.

    from backdrop.client import Client

    client = Client("http://127.0.0.1:8080")
    job = client.submit("photo.jpg", effect="blur", strength=70)
    job.wait(timeout=120).download("photo_blur.jpg")

Retries with backoff on 429 and 503 (honouring ``Retry-After``) and on connection errors; the API's
error codes become typed exceptions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:8080"
FINISHED = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """An error answer from the service: ``status`` (HTTP), ``code`` and ``message`` from its JSON body."""

    status = 0

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message
        if status is not None:
            self.status = status


class InvalidRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class UnsupportedImage(ApiError):
    status = 415


class Unprocessable(ApiError):
    status = 422


class QueueFull(ApiError):
    status = 429


class ServiceUnavailable(ApiError):
    """503 after the retries, or the service could not be reached at all."""

    status = 503


class JobFailed(ApiError):
    """The job ended ``failed``; ``code`` is its failure code (``corrupt_image``, ``timeout``, ...)."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        super().__init__(error.get("code", "failed"), error.get("message", "the job failed"))
        self.job = job


class JobCancelled(ApiError):
    def __init__(self, job: Job) -> None:
        super().__init__("cancelled", f"job {job.id} was cancelled")
        self.job = job


_ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest, Unauthorized, NotFound, Conflict, TooLarge, UnsupportedImage, Unprocessable, QueueFull,
        ServiceUnavailable,
    )
}  # fmt: skip


@dataclass
class Job:
    client: Client
    id: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.data.get("status", "queued"))

    @property
    def result(self) -> dict[str, Any] | None:
        return self.data.get("result")

    @property
    def detected(self) -> dict[str, float] | None:
        return self.data.get("detected")

    @property
    def error(self) -> dict[str, str] | None:
        return self.data.get("error")

    def refresh(self) -> Job:
        self.data = self.client._request("GET", f"/v1/jobs/{self.id}").json()
        return self

    def wait(self, timeout: float = 300, poll_s: float = 0.25) -> Job:
        """Poll until the job is finished. Raises :class:`JobFailed`, :class:`JobCancelled` or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            if self.status == "succeeded":
                return self
            if self.status == "failed":
                raise JobFailed(self)
            if self.status == "cancelled":
                raise JobCancelled(self)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout:g} s")
            time.sleep(poll_s)

    def download(self, path: str | Path) -> Path:
        """Save the result (the job must have succeeded; call :meth:`wait` first)."""
        if self.result is None:
            self.wait()
        assert self.result is not None
        response = self.client._session.get(self.result["url"], timeout=self.client.timeout)
        if response.status_code != 200:  # the presigned URL may have expired: ask for a fresh one
            response = self.client._session.get(self.refresh().result["url"], timeout=self.client.timeout)  # type: ignore[index]
        response.raise_for_status()
        target = Path(path)
        target.write_bytes(response.content)
        return target

    def cancel(self) -> Job:
        self.data = self.client._request("DELETE", f"/v1/jobs/{self.id}").json()
        return self


def _field_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _read(image: str | Path | bytes) -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return "image", image
    path = Path(image)
    return path.name, path.read_bytes()


class Client:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60,
        retries: int = 6,
        backoff_s: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._session = session or requests.Session()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _request(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {**self._headers, **(headers or {})}
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._session.request(
                    method,
                    self.url + path,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                    **kwargs,
                )
            except requests.ConnectionError as exc:
                if last:
                    raise ServiceUnavailable("unreachable", f"cannot reach {self.url}: {exc}") from None
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code in (429, 503) and not last:
                retry_after = response.headers.get("Retry-After", "")
                time.sleep(float(retry_after) if retry_after.isdigit() else delay)
                delay *= 2
                continue
            if response.status_code >= 400:
                raise self._error(response)
            return response
        raise AssertionError("unreachable")

    @staticmethod
    def _error(response: requests.Response) -> ApiError:
        try:
            body = response.json()["error"]
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:200] or response.reason
        cls = _ERRORS_BY_STATUS.get(response.status_code, ApiError)
        return cls(code, message, response.status_code)

    def submit(
        self,
        image: str | Path | bytes,
        *,
        background: str | Path | bytes | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Job:
        """Queue a job. ``params`` are the API's form fields: effect, strength, bokeh, targets (str or list),
        model, color, format, quality, keep_islands, keep_metadata."""
        files = {"image": _read(image)}
        if background is not None:
            files["background"] = _read(background)
        fields = {key: _field_value(value) for key, value in params.items() if value is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = self._request("POST", "/v1/jobs", files=files, data=fields, headers=headers).json()
        return Job(self, body["id"], body)

    def job(self, job_id: str) -> Job:
        return Job(self, job_id).refresh()

    def models(self) -> Mapping[str, Any]:
        return self._request("GET", "/v1/models").json()


def submit(image: str | Path | bytes, *, url: str = DEFAULT_URL, api_key: str | None = None, **params: Any) -> Job:
    """One-off: ``submit("photo.jpg", effect="gray").wait().download("gray.jpg")``."""
    return Client(url, api_key=api_key).submit(image, **params)
