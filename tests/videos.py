"""Videos the tests make themselves with PyAV: well-formed ones with known frames, timing, sound and
rotation, and hostile ones (truncated, garbage inside, no frames, sound only, a huge declared size, an
hour long). Independent of the code under test except for PyAV itself."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_square(index: int, width: int, height: int) -> np.ndarray:
    """A frame with a bright square that moves: frames differ, and their order can be read back."""
    frame = np.full((height, width, 3), 40, np.uint8)
    size = max(4, min(width, height) // 4)
    x = (index * 7) % max(1, width - size)
    frame[height // 3 : height // 3 + size, x : x + size] = (60, 200, 240)
    return frame


def write_video(
    path: Path,
    *,
    frames: int = 30,
    width: int = 160,
    height: int = 120,
    times_s: list[float] | None = None,
    fps: int = 30,
    audio_seconds: float | None = None,
    audio_codec: str = "aac",
    rotation: int = 0,
    codec: str = "libx264",
    container: str | None = None,
    images: list[np.ndarray] | None = None,
) -> Path:
    """A video of ``frames`` frames at ``times_s`` (default: ``fps`` regular), with a sine tone of
    ``audio_seconds`` and a display rotation (degrees counter-clockwise) if asked for."""
    times_s = times_s if times_s is not None else [i / fps for i in range(frames)]
    time_base = Fraction(1, 90_000)
    with av.open(str(path), mode="w", format=container) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = time_base
        if codec == "libx264":
            video.codec_context.options = {"preset": "ultrafast", "bf": "0"}
        if rotation:
            video.set_display_rotation(rotation)
        audio = None
        if audio_seconds:
            audio = out.add_stream(audio_codec, rate=48_000)
            audio.layout = "stereo"
        for index, time_s in enumerate(times_s):
            image = images[index] if images is not None else moving_square(index, width, height)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = round(time_s / time_base), time_base
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            _tone(out, audio, audio_seconds or 0.0)
    return path


def _tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate, block = 48_000, 1024
    total = int(seconds * rate)
    for start in range(0, total, block):
        count = min(block, total - start)
        t = (np.arange(start, start + count) / rate).astype(np.float32)
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([samples, samples]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def truncated(source: Path, path: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def garbage_inside(source: Path, path: Path) -> Path:
    """Random bytes over a stretch in the middle of the file (the frames there are damaged)."""
    data = bytearray(source.read_bytes())
    start, length = len(data) // 2, len(data) // 10
    data[start : start + length] = np.random.default_rng(1).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def sound_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48_000)
        stream.layout = "stereo"
        _tone(out, stream, seconds)
    return path


def no_frames(path: Path) -> Path:
    """A Matroska file whose video track holds no frame: a real one cut before its first cluster."""
    whole = write_video(path.with_suffix(".whole.mkv"), frames=5, container="matroska").read_bytes()
    path.write_bytes(whole[: whole.find(b"\x1f\x43\xb6\x75")])  # the Cluster element's id
    return path


def huge_declared_size(source: Path, path: Path, width: int = 30000, height: int = 30000) -> Path:
    """The MP4's track header (and sample description) claim a frame far larger than the real one."""
    data = bytearray(source.read_bytes())
    avc1 = data.find(b"avc1")
    # The sample entry: 6 reserved, 2 index, 16 pre-defined/reserved, then width and height (16 bits each).
    struct.pack_into(">HH", data, avc1 + 4 + 24, min(width, 65535), min(height, 65535))
    tkhd = data.find(b"tkhd")
    version = data[tkhd + 4]
    offset = tkhd + 4 + (92 if version == 1 else 80)
    struct.pack_into(">II", data, offset - 8, width << 16, height << 16)
    path.write_bytes(bytes(data))
    return path
