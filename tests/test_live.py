"""Live mode: the WebSocket contract (settings, frames in order, bad frames, limits with their close codes,
API keys), the session's smoothing, GET /v1/live, the Python client and `backdrop live`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api import Services, create_app
from backdrop.client import InvalidRequest, LiveClient
from backdrop.service.localstack import free_port
from backdrop.settings import Settings
from live.server import CLOSE_BUSY, CLOSE_IDLE, CLOSE_TOO_BIG, CLOSE_TOO_MANY_IN_FLIGHT, CLOSE_UNAUTHORIZED, LiveServer
from live.session import LiveSession
from tests import videos

KEY = "live-test-key-0123456789"


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not an image"
    return image


@pytest.fixture(scope="module")
def person(astronaut) -> np.ndarray:
    """The astronaut at 640x360 (a camera's size): a person on a colourful background."""
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[:, :] = (40, 90, 200)
    frame[:, 140:500] = cv2.resize(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), (360, 360))
    return frame


# --- the session, without a server ----------------------------------------------------------------


def test_settings_apply_and_bad_ones_change_nothing(pipeline, settings, person):
    session = LiveSession(pipeline, settings)
    assert session.configure({"effect": "gray", "strength": 30})["effect"] == "gray"
    for bad in ({"effect": "cutout"}, {"strength": 500}, {"format": "png"}, {"effect": "replace"}, {"what": 1}):
        with pytest.raises(Exception) as refused:
            session.configure(bad)
        assert refused.value.code in ("invalid_parameter", "unsupported_output")
        assert session.current()["effect"] == "gray"
    background = "data:image/jpeg;base64," + base64.b64encode(jpeg(np.full((90, 160, 3), 200, np.uint8))).decode()
    assert session.configure({"effect": "replace", "background": background})["background"] is True
    out = decoded(session.process(jpeg(person), 1920 * 1080))
    assert out.shape == person.shape


def test_a_sessions_frames_share_one_temporal_state(pipeline, settings, person):
    session = LiveSession(pipeline, settings)
    for _ in range(5):
        session.process(jpeg(person), 1920 * 1080)
    assert session.history.frames == 5
    session.configure({"targets": "cat"})  # another subject: the memory starts again
    assert session.history.frames == 0


# --- a server of its own, for the limits ----------------------------------------------------------


@contextmanager
def live_server(pipeline, **limits) -> Iterator[str]:
    """A LiveServer on a free port in a thread of this process (the tests' pipeline, models loaded once)."""
    settings = replace(Settings(), **limits)
    server = LiveServer(settings, pipeline)
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def run() -> None:
        holder["server"] = await server.serve("127.0.0.1", port)
        started.set()
        await holder["server"].wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield f"ws://127.0.0.1:{port}/v1/live"
    finally:
        loop.call_soon_threadsafe(holder["server"].close)
        thread.join(10)


def closed_with(socket) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(100):
            socket.recv(timeout=10)
    return closed.value.rcvd.code


def test_frames_are_answered_in_order_same_size_and_settings_apply_from_the_next(pipeline, person):
    with live_server(pipeline) as url, connect(url, max_size=None) as socket:
        socket.send(json.dumps({"effect": "color", "color": "#00FF00"}))
        assert json.loads(socket.recv(timeout=10))["settings"]["color"] == "#00FF00"
        small = cv2.resize(person, (320, 180))
        for frame in (person, small, person):
            socket.send(jpeg(frame))
        socket.send(json.dumps({"effect": "gray"}))
        socket.send(jpeg(person))
        socket.send(json.dumps({"format": "webp"}))
        socket.send(jpeg(person))
        answers = [socket.recv(timeout=30) for _ in range(7)]
        kinds = ["bytes" if isinstance(a, bytes) else "text" for a in answers]
        assert kinds == ["bytes", "bytes", "bytes", "text", "bytes", "text", "bytes"]
        assert [decoded(a).shape[:2] for a in answers if isinstance(a, bytes)] == [
            (360, 640),
            (180, 320),
            (360, 640),
            (360, 640),
            (360, 640),
        ]
        green = decoded(answers[0])[5, 5]
        assert green[1] > 200 and green[0] < 60 and green[2] < 60  # the colour the first settings asked for
        grey = decoded(answers[4])[5, 5].astype(int)
        assert grey.max() - grey.min() <= 6  # the frame after the change: grey
        assert answers[6][:4] == b"RIFF" and answers[6][8:12] == b"WEBP"


def test_a_frame_that_is_not_one_gets_an_error_and_the_session_goes_on(pipeline, person):
    with live_server(pipeline, live_max_frame_pixels=640 * 360) as url, connect(url, max_size=None) as socket:
        socket.send(b"this is not a picture")
        socket.send(cv2.imencode(".png", person)[1].tobytes())
        socket.send(jpeg(cv2.resize(person, (1280, 720))))
        socket.send(jpeg(person))
        codes = [json.loads(socket.recv(timeout=30))["error"]["code"] for _ in range(3)]
        assert codes == ["unsupported_format", "unsupported_format", "image_too_large"]
        assert decoded(socket.recv(timeout=30)).shape == person.shape
        socket.send("not json")
        assert json.loads(socket.recv(timeout=10))["error"]["code"] == "invalid_parameter"


def test_limits_close_with_clear_codes(pipeline, person):
    with live_server(
        pipeline, live_max_message_bytes=200_000, live_idle_timeout_s=1.0, live_max_sessions=1, live_max_in_flight=3
    ) as url:
        with connect(url, max_size=None) as socket:
            socket.send(b"\0" * 300_000)
            assert closed_with(socket) == CLOSE_TOO_BIG
        with connect(url) as socket:
            assert closed_with(socket) == CLOSE_IDLE  # nothing sent for a second
        with connect(url, max_size=None) as first, connect(url) as second:
            assert closed_with(second) == CLOSE_BUSY  # one session per process here
            first.send(json.dumps({"effect": "gray"}))
            assert "settings" in json.loads(first.recv(timeout=10))
        with connect(url, max_size=None) as socket:
            with contextlib.suppress(ConnectionClosed):  # the server may close while frames still go out
                for _ in range(40):  # far ahead of the answers
                    socket.send(jpeg(person))
            assert closed_with(socket) == CLOSE_TOO_MANY_IN_FLIGHT


def test_api_keys_in_the_url_or_the_first_message(pipeline, person):
    with live_server(pipeline, api_keys=(KEY,)) as url:
        with connect(url) as socket:
            socket.send(json.dumps({"effect": "gray"}))  # no key
            assert closed_with(socket) == CLOSE_UNAUTHORIZED
        with connect(url + "?api_key=wrong-key-wrong-key") as socket:
            socket.send(jpeg(person))
            assert closed_with(socket) == CLOSE_UNAUTHORIZED
        with connect(url + f"?api_key={KEY}", max_size=None) as socket:
            socket.send(jpeg(person))
            assert isinstance(socket.recv(timeout=30), bytes)
        with connect(url, max_size=None) as socket:
            socket.send(json.dumps({"api_key": KEY, "effect": "mask"}))
            assert json.loads(socket.recv(timeout=10))["settings"]["effect"] == "mask"
            socket.send(jpeg(person))
            assert decoded(socket.recv(timeout=30)).ndim == 2  # a mask comes back grey


def test_health_and_metrics_on_the_live_port(pipeline):
    with live_server(pipeline) as url:
        base = url.replace("ws://", "http://").removesuffix("/v1/live")
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        assert "backdrop_live_sessions" in requests.get(base + "/metrics", timeout=5).text
        assert requests.get(base + "/elsewhere", timeout=5).status_code == 404


# --- through the service --------------------------------------------------------------------------


def test_the_api_says_where_live_mode_is():
    configured = Settings(live_url="ws://example.test/v1/live")
    client = create_app(configured, services=Services(configured, None, None, None, None)).test_client()  # type: ignore[arg-type]
    answer = client.get("/v1/live")
    assert answer.status_code == 200 and answer.json["websocket_url"] == "ws://example.test/v1/live"
    plain = create_app(Settings(), services=Services(Settings(), None, None, None, None)).test_client()  # type: ignore[arg-type]
    assert plain.get("/v1/live").status_code == 404


@pytest.mark.integration
def test_python_client_and_backdrop_live_against_the_stack(stack, tmp_path, person):
    info = requests.get(f"{stack.api_url}/v1/live", timeout=10).json()
    assert info["websocket_url"] == stack.live_url
    with LiveClient.discover(stack.api_url) as live:
        assert live.configure(effect="blur", strength=70)["strength"] == 70
        answers = list(live.stream([jpeg(person)] * 6, in_flight=2))
        assert len(answers) == 6 and all(decoded(a).shape == person.shape for a in answers)
        with pytest.raises(InvalidRequest):
            live.process(b"garbage")
    clip = videos.write_video(tmp_path / "clip.mp4", frames=30, width=320, height=240, audio_seconds=1.0)
    out = tmp_path / "live.mp4"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "backdrop"), "live", "--input", str(clip), "--output", str(out),
         "--effect", "gray", "--url", stack.api_url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 30
        assert [s.type for s in container.streams] == ["video", "audio"]  # the clip's sound, kept
