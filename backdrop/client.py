"""A Python client for the Backdrop HTTP API.

    from backdrop.client import Client

    client = Client("http://127.0.0.1:8080")
    job = client.submit("photo.jpg", effect="blur", strength=70)
    job.wait(timeout=120).download("photo_blur.jpg")

Retries with backoff on 429 and 503 (honouring ``Retry-After``) and on connection errors; the API's
error codes become typed exceptions.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import requests

from backdrop.params import MediaKind
from backdrop.sniff import HEAD_BYTES, media_kind

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
    def kind(self) -> str:
        """``image`` or ``video``."""
        return str(self.data.get("kind", "image"))

    @property
    def progress(self) -> dict[str, int] | None:
        """A video job's ``{"done", "total"}`` frames, as of the last :meth:`refresh`."""
        return self.data.get("progress")

    @property
    def error(self) -> dict[str, str] | None:
        return self.data.get("error")

    def refresh(self) -> Job:
        self.data = self.client._request("GET", f"/v1/jobs/{self.id}").json()
        return self

    def wait(self, timeout: float = 300, poll_s: float = 0.25, on_progress: Callable[[Job], None] | None = None) -> Job:
        """Poll until the job is finished (``on_progress(job)`` after each poll: a video's progress bar).
        Raises :class:`JobFailed`, :class:`JobCancelled` or TimeoutError."""
        deadline = time.monotonic() + timeout
        # An answer that waited (Prefer: wait) already holds the finished job: no read is needed.
        fetch = self.status not in ("succeeded", "failed", "cancelled") or "finished_at" not in self.data
        while True:
            if fetch:
                self.refresh()
            fetch = True
            if on_progress is not None:
                on_progress(self)
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
        response = self.client._session.get(self.result["url"], timeout=self.client.timeout, stream=True)
        if response.status_code != 200:  # the presigned URL may have expired: ask for a fresh one
            url = self.refresh().result["url"]  # type: ignore[index]
            response = self.client._session.get(url, timeout=self.client.timeout, stream=True)
        response.raise_for_status()
        target = Path(path)
        with target.open("wb") as out:  # in parts: a video need not fit in memory
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
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


def _media(media: str | Path | bytes) -> tuple[str, tuple[str, bytes | BinaryIO]]:
    """The form field (``image`` or ``video``, by content) and the upload: bytes, or an open file for a
    video (sent in parts, never read whole)."""
    if isinstance(media, bytes):
        return media_kind(media[:HEAD_BYTES]).value, ("upload", media)
    path = Path(media)
    with path.open("rb") as handle:
        kind = media_kind(handle.read(HEAD_BYTES))
    if kind is MediaKind.VIDEO:
        return kind.value, (path.name, path.open("rb"))
    return kind.value, (path.name, path.read_bytes())


class MultipartBody:
    """A multipart/form-data body that reads its files as it is sent (requests would read them whole into
    memory first), with a known length so it goes with a Content-Length."""

    def __init__(self, fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes | BinaryIO]]) -> None:
        self._boundary = uuid.uuid4().hex
        self._parts: list[bytes | BinaryIO] = []
        for name, value in fields.items():
            self._parts.append(self._header(name) + b"\r\n\r\n" + value.encode() + b"\r\n")
        for name, (filename, content) in files.items():
            safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
            head = (
                self._header(name) + f'; filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            )
            self._parts += [head, content, b"\r\n"]
        self._parts.append(f"--{self._boundary}--\r\n".encode())
        self._length = sum(len(p) if isinstance(p, bytes) else _remaining(p) for p in self._parts)
        self.rewind()

    def _header(self, name: str) -> bytes:
        return f'--{self._boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self._boundary}"

    def __len__(self) -> int:
        return self._length

    def rewind(self) -> None:
        self._index, self._offset = 0, 0
        for part in self._parts:
            if not isinstance(part, bytes):
                part.seek(0)

    def read(self, size: int = -1) -> bytes:
        chunks: list[bytes] = []
        wanted = size if size >= 0 else self._length
        while wanted > 0 and self._index < len(self._parts):
            part = self._parts[self._index]
            if isinstance(part, bytes):
                chunk = part[self._offset : self._offset + wanted]
                self._offset += len(chunk)
                done = self._offset >= len(part)
            else:
                chunk = part.read(wanted)
                done = len(chunk) < wanted or not chunk
            chunks.append(chunk)
            wanted -= len(chunk)
            if done:
                self._index, self._offset = self._index + 1, 0
        return b"".join(chunks)


def _remaining(handle: BinaryIO) -> int:
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(0)
    return size


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
            if isinstance(kwargs.get("data"), MultipartBody):
                kwargs["data"].rewind()  # a retry sends the whole body again
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
        media: str | Path | bytes,
        *,
        background: str | Path | bytes | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
        **params: Any,
    ) -> Job:
        """Queue a job for a photo or a video (told apart by content). ``params`` are the API's form
        fields: effect, strength, bokeh, targets (str or list), model, color, format, quality, keep,
        subjects, keep_islands, keep_metadata, max_pixels, roi, crop, crop_margin, scale, position,
        callback_url. With ``wait`` (seconds), the service answers with the finished job when it ends
        that soon (``Prefer: wait``), and :meth:`Job.wait` needs no poll."""
        field, upload = _media(media)
        files: dict[str, tuple[str, bytes | BinaryIO]] = {field: upload}
        if background is not None:
            files["background"] = _read(background)
        fields = {key: _field_value(value) for key, value in params.items() if value is not None}
        body = MultipartBody(fields, files)
        headers = {"Content-Type": body.content_type}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if wait:
            headers["Prefer"] = f"wait={max(1, round(wait))}"
        try:
            answer = self._request("POST", "/v1/jobs", data=body, headers=headers).json()
        finally:
            if not isinstance(upload[1], bytes):
                upload[1].close()
        return Job(self, answer["id"], answer)

    def job(self, job_id: str) -> Job:
        return Job(self, job_id).refresh()

    def jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """Many jobs' status, one read per 100 (``GET /v1/jobs?ids=...``): how a client with a folder of
        jobs in flight polls. In the order given; raises :class:`NotFound` naming any that do not exist."""
        found: list[Job] = []
        missing: list[str] = []
        for first in range(0, len(job_ids), 100):
            ids = ",".join(job_ids[first : first + 100])
            answer = self._request("GET", "/v1/jobs", params={"ids": ids}).json()
            found += [Job(self, data["id"], data) for data in answer["jobs"]]
            missing += answer["missing"]
        if missing:
            raise NotFound("not_found", f"no such jobs: {', '.join(missing)}", 404)
        return found

    def models(self) -> Mapping[str, Any]:
        return self._request("GET", "/v1/models").json()


def submit(media: str | Path | bytes, *, url: str = DEFAULT_URL, api_key: str | None = None, **params: Any) -> Job:
    """One-off: ``submit("photo.jpg", effect="gray").wait().download("gray.jpg")``."""
    return Client(url, api_key=api_key).submit(media, **params)


class LiveClient:
    """A live session with a Backdrop service: camera frames (JPEG or WebP bytes) in, processed frames out.

        with LiveClient.discover("http://127.0.0.1:8080") as live:
            live.configure(effect="blur", strength=70)
            for processed in live.stream(jpeg_frames, in_flight=2):
                ...

    Every frame sent is answered, in order; ``stream`` keeps ``in_flight`` frames on the way, so the
    network's round trip overlaps the server's work."""

    def __init__(self, websocket_url: str, *, api_key: str | None = None, timeout: float = 30) -> None:
        from websockets.sync.client import connect

        url = websocket_url
        if api_key:
            url += ("&" if "?" in url else "?") + "api_key=" + requests.utils.quote(api_key)
        self._connection = connect(url, max_size=None, open_timeout=timeout, close_timeout=5)
        self._socket = self._connection.__enter__()  # closed by close() or by leaving a with block
        self.timeout = timeout

    @classmethod
    def discover(cls, url: str = DEFAULT_URL, *, api_key: str | None = None) -> LiveClient:
        """Ask the API where live mode is (``GET /v1/live``), then connect."""
        info = Client(url, api_key=api_key, retries=1)._request("GET", "/v1/live").json()
        return cls(info["websocket_url"], api_key=api_key)

    def __enter__(self) -> LiveClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Send settings (effect, strength, bokeh, color, targets, keep, subjects, quality, format, and background as
        bytes, a ``Path``, or a data URL); returns those in force. Raises :class:`InvalidRequest` for a bad
        one."""
        if "background" in settings and not isinstance(settings["background"], str | type(None)):
            given = settings["background"]
            data = given if isinstance(given, bytes) else Path(given).read_bytes()
            settings["background"] = base64.b64encode(data).decode()
        self._socket.send(json.dumps({k: v for k, v in settings.items() if v is not None}))
        answer = json.loads(self._socket.recv(timeout=self.timeout))
        if "error" in answer:
            raise InvalidRequest(answer["error"]["code"], answer["error"]["message"])
        return answer["settings"]

    def process(self, frame: bytes) -> bytes:
        """One frame, one answer (raises :class:`InvalidRequest` when the frame was refused)."""
        return next(self.stream([frame], in_flight=1))

    def stream(self, frames: Iterable[bytes], *, in_flight: int = 2) -> Iterator[bytes]:
        """The processed frames, in order, with up to ``in_flight`` frames sent ahead of the answers."""
        waiting = 0
        source = iter(frames)
        exhausted = False
        while True:
            while not exhausted and waiting < in_flight:
                frame = next(source, None)
                if frame is None:
                    exhausted = True
                    break
                self._socket.send(frame)
                waiting += 1
            if waiting == 0:
                return
            answer = self._socket.recv(timeout=self.timeout)
            waiting -= 1
            if isinstance(answer, str):
                error = json.loads(answer).get("error", {})
                raise InvalidRequest(error.get("code", "invalid_frame"), error.get("message", answer))
            yield answer
