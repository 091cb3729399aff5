"""Live mode's speed: frames of a real clip at 640x360 through the live WebSocket server, as a camera
sends them (JPEG, quality 80), with one frame in flight (the round trip) and with two (the rate).

    .venv/bin/python bench/live.py [--eval ../shared/eval] [--frames 300] [--effect blur]

The server is started as `make run` starts it (`python -m live`, every core for its frames), on this
machine, with the client in the same machine's other process: both share the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
from websockets.sync.client import ClientConnection, connect

from backdrop.service.localstack import free_port, start_live
from backdrop.video.media import VideoSource

ROOT = Path(__file__).resolve().parent.parent
CLIP = "standing-720p-silent-audio.mp4"


def camera_frames(clip: Path, count: int) -> list[bytes]:
    frames = []
    with VideoSource(clip) as video:
        for frame in video.frames():
            small = cv2.resize(frame.image, (640, 360), interpolation=cv2.INTER_AREA)
            frames.append(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
            if len(frames) == count:
                break
    return frames


@contextlib.contextmanager
def warm_session(url: str, frames: list[bytes], settings: dict) -> Iterator[ClientConnection]:
    """A live session with ``settings`` in force, past its first frames (they run the expensive steps)."""
    with connect(url, max_size=None) as socket:
        socket.send(json.dumps(settings))
        socket.recv()
        for frame in frames[:20]:
            socket.send(frame)
            socket.recv()
        yield socket


def one_in_flight(url: str, frames: list[bytes], settings: dict) -> list[float]:
    with warm_session(url, frames, settings) as socket:
        times = []
        for frame in frames:
            started = time.perf_counter()
            socket.send(frame)
            socket.recv()
            times.append((time.perf_counter() - started) * 1e3)
        return times


def in_flight_rate(url: str, frames: list[bytes], settings: dict, depth: int) -> float:
    with warm_session(url, frames, settings) as socket:
        started = time.perf_counter()
        sent = received = 0
        for _ in range(depth):
            socket.send(frames[sent % len(frames)])
            sent += 1
        while received < len(frames):
            socket.recv()
            received += 1
            if sent < len(frames):
                socket.send(frames[sent])
                sent += 1
        return received / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--effect", default="blur")
    args = parser.parse_args()
    frames = camera_frames(args.eval / "videos" / CLIP, args.frames)
    port = free_port()
    env = {**os.environ, "BACKDROP_THREADS": str(os.cpu_count() or 1)}
    with tempfile.TemporaryDirectory() as scratch:
        server = start_live(env, port=port, log_path=Path(scratch) / "live.log")
        try:
            url = f"ws://127.0.0.1:{port}/v1/live"
            settings = {"effect": args.effect, "strength": 70}
            times = one_in_flight(url, frames, settings)
            rates = {depth: in_flight_rate(url, frames, settings, depth) for depth in (1, 2, 3)}
        finally:
            server.stop()
    times.sort()
    print(f"machine: {os.cpu_count()} cores; {len(frames)} frames of {CLIP} at 640x360, JPEG q80; effect={args.effect}")
    print(
        f"one frame in flight: round trip p50 {statistics.median(times):.1f} ms, "
        f"p95 {times[int(0.95 * (len(times) - 1))]:.1f} ms, max {times[-1]:.1f} ms"
    )
    for depth, rate in rates.items():
        print(f"{depth} frame(s) in flight: {rate:.1f} frames/s")


if __name__ == "__main__":
    main()
