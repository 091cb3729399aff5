"""The live WebSocket server: many sessions, one pipeline (models loaded once), frames answered in order.

Protocol (``docs/live.md``): text messages are JSON settings (any time; from the next frame on), binary
messages are camera frames (JPEG or WebP), each answered by exactly one message, in order: the processed
frame (binary), or ``{"error": {"code", "message"}}`` (text) when it was not a frame we can read. A
session's frames run one after another (its smoothing needs the previous frame); sessions run side by
side on a small thread pool. Limits end a session with a close code, never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from backdrop.errors import BackdropError
from backdrop.pipeline import Pipeline
from backdrop.service.observability import LIVE_FRAMES, LIVE_SESSIONS, render_metrics
from backdrop.settings import Settings
from live.session import FrameSettings, LiveSession, error_message

log = logging.getLogger("backdrop.live")
PATH = "/v1/live"
# Close codes (RFC 6455 where one fits; 44xx are ours).
CLOSE_IDLE = 1001  # going away: no message within the idle timeout
CLOSE_TOO_MANY_IN_FLIGHT = 1008  # policy: the client sent frames far ahead of the answers
CLOSE_TOO_BIG = 1009  # a message over the size limit (the websockets library closes with it)
CLOSE_BUSY = 1013  # try again later: the process serves its maximum of sessions
CLOSE_UNAUTHORIZED = 4401  # API keys are configured and none, or a wrong one, was sent
# How long a client may take to send its API key as a first message, when not in the URL.
AUTH_WAIT_S = 10


class LiveServer:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline or Pipeline(settings)
        self._pool = ThreadPoolExecutor(max_workers=settings.live_workers, thread_name_prefix="backdrop-live")
        self.sessions = 0

    def load(self) -> None:
        started = time.perf_counter()
        self.pipeline.preload(self.settings.worker_models)
        log.info(
            "live: %d model files loaded in %.0f ms", self.pipeline.engine_loads, (time.perf_counter() - started) * 1e3
        )

    async def serve(self, host: str, port: int) -> Server:
        return await serve(
            self.handle,
            host,
            port,
            max_size=self.settings.live_max_message_bytes,
            process_request=self._http,
            ping_interval=20,
            ping_timeout=20,
        )

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Plain HTTP on the same port: health for probes, metrics; the WebSocket only at ``PATH``."""
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            body, content_type = render_metrics(self.settings)
            return Response(200, "OK", Headers([("Content-Type", content_type)]), body)
        if path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no route {path}; the live WebSocket is at {PATH}\n")
        return None

    def _key_ok(self, given: str | None) -> bool:
        if not self.settings.api_keys:
            return True
        matched = False
        for key in self.settings.api_keys:  # every key compared, in constant time
            matched |= hmac.compare_digest((given or "").encode(), key.encode())
        return matched

    async def handle(self, connection: ServerConnection) -> None:
        if self.sessions >= self.settings.live_max_sessions:
            await connection.close(CLOSE_BUSY, f"this process serves {self.settings.live_max_sessions} sessions; retry")
            return
        query = parse_qs(urlsplit(connection.request.path).query)
        key = query.get("api_key", [None])[0]
        first: str | bytes | None = None
        if not self._key_ok(key):
            # The key may come as the first message instead: {"api_key": "..."}.
            try:
                first = await asyncio.wait_for(connection.recv(), AUTH_WAIT_S)
                sent = json.loads(first).get("api_key") if isinstance(first, str) else None
            except (TimeoutError, ValueError, AttributeError, ConnectionClosed):
                sent = None
            if not self._key_ok(sent):
                await connection.close(CLOSE_UNAUTHORIZED, 'send a valid API key: ?api_key=KEY or {"api_key": KEY}')
                return
        self.sessions += 1
        LIVE_SESSIONS.inc()
        try:
            await self._session(connection, first)
        finally:
            self.sessions -= 1
            LIVE_SESSIONS.dec()

    async def _session(self, connection: ServerConnection, first: str | bytes | None) -> None:
        session = LiveSession(self.pipeline, self.settings)
        answers: asyncio.Queue[Awaitable[bytes | str] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send_in_order(connection, answers))
        loop = asyncio.get_running_loop()
        chain: asyncio.Future | None = None
        try:
            if isinstance(first, str):
                await connection.send(self._settings_reply(session, first))
            while True:
                try:
                    message = await asyncio.wait_for(connection.recv(), self.settings.live_idle_timeout_s)
                except TimeoutError:
                    await connection.close(CLOSE_IDLE, f"no message for {self.settings.live_idle_timeout_s:g} s")
                    break
                if isinstance(message, str):
                    # Settings apply from the next frame: the frames before it were queued with the old ones.
                    reply = self._settings_reply(session, message)
                    chain = _after(chain, lambda reply=reply: asyncio.sleep(0, result=reply))
                    answers.put_nowait(chain)
                    continue
                in_flight = answers.qsize()
                if in_flight >= self.settings.live_max_in_flight:
                    await connection.close(
                        CLOSE_TOO_MANY_IN_FLIGHT,
                        f"more than {self.settings.live_max_in_flight} frames in flight: wait for answers",
                    )
                    break
                # One after another per session (the smoothing needs the previous frame); the thread
                # pool runs sessions side by side.
                with_settings = session.snapshot()  # the settings in force when the frame arrived
                chain = _after(
                    chain,
                    lambda data=message, now=with_settings: loop.run_in_executor(
                        self._pool, self._frame, session, data, now
                    ),
                )
                answers.put_nowait(chain)
        except ConnectionClosed:
            pass
        finally:
            answers.put_nowait(None)
            await sender
            # Frames the closed connection will never receive: stop waiting for them.
            while not answers.empty():
                pending = answers.get_nowait()
                if isinstance(pending, asyncio.Future):
                    pending.cancel()

    def _settings_reply(self, session: LiveSession, text: str) -> str:
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError
        except ValueError:
            return json.dumps({"error": {"code": "invalid_parameter", "message": "settings are a JSON object"}})
        try:
            return json.dumps({"settings": session.configure(message)})
        except BackdropError as exc:
            return json.dumps(error_message(exc))

    def _frame(self, session: LiveSession, data: bytes, settings: FrameSettings) -> bytes | str:
        try:
            answer = session.process(data, self.settings.live_max_frame_pixels, settings)
        except BackdropError as exc:
            return json.dumps(error_message(exc))
        LIVE_FRAMES.inc()
        return answer

    async def _send_in_order(self, connection: ServerConnection, answers: asyncio.Queue) -> None:
        while (pending := await answers.get()) is not None:
            try:
                await connection.send(await pending)
            except ConnectionClosed:
                return
            except Exception:  # a bug in one frame must not end the session silently
                log.exception("live frame failed")
                await connection.send(json.dumps({"error": {"code": "internal_error", "message": "the frame failed"}}))


def _after(previous: asyncio.Future | None, start: Callable[[], Awaitable[bytes | str]]) -> asyncio.Future:
    """A future that starts ``start()`` once ``previous`` is done: a session's answers, in order."""

    async def run() -> bytes | str:
        if previous is not None:
            with contextlib.suppress(Exception):  # its own answer reports it
                await previous
        return await start()

    return asyncio.ensure_future(run())
