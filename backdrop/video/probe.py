"""What a video file is, checked by its content before anything is stored or queued.

PyAV (FFmpeg's demuxers) identifies the container whatever the file is called; the header gives the frame
size (checked before any frame is decoded), the duration (from the container, or from the packets'
timestamps when the header has none), the rotation of phone videos and the sound. The first frame is
decoded, so a file that cannot give a single picture is refused here rather than failing later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av

from backdrop.errors import BackdropError
from backdrop.sniff import HEAD_BYTES, looks_like_video

# FFmpeg demuxer name -> what we call it. Anything else (an audio file, a still image, a document) is refused.
CONTAINERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4",
    "matroska,webm": "matroska",
    "avi": "avi",
    "gif": "gif",
}
SUPPORTED = "MP4/MOV/M4V, WebM/MKV, AVI or animated GIF"
ACCEPTED = ["mp4", "mov", "m4v", "webm", "mkv", "avi", "gif"]  # what /v1/models lists


class VideoError(BackdropError):
    """The video cannot be processed. Codes: ``unsupported_format``, ``corrupt_video``, ``video_too_long``,
    ``image_too_large`` (a frame over the pixel limit)."""

    code = "corrupt_video"


@dataclass(frozen=True)
class VideoInfo:
    """What the file says. ``width``/``height`` are upright (rotation applied); ``frames`` is the count the
    container declares, or the duration times the frame rate where it declares none."""

    container: str
    codec: str
    width: int
    height: int
    rotation: int
    duration_s: float
    frames: int
    fps: float
    audio_codec: str | None

    @property
    def audio(self) -> bool:
        return self.audio_codec is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "duration_s": round(self.duration_s, 3),
            "frames": self.frames,
            "fps": round(self.fps, 3),
            "audio_codec": self.audio_codec,
        }


def probe_video(source: str | Path | BinaryIO, *, max_seconds: float, max_frame_pixels: int) -> VideoInfo:
    """Identify and check a video (a path or a seekable binary file); raises :class:`VideoError`."""
    source = str(source) if isinstance(source, Path) else source
    head = _head(source)
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError:
        if looks_like_video(head):
            raise VideoError("the video is truncated or damaged: it cannot be opened", code="corrupt_video") from None
        raise VideoError(f"not a video FFmpeg can read; send {SUPPORTED}", code="unsupported_format") from None
    except (OSError, ValueError) as exc:
        raise VideoError(f"the file could not be read: {exc}", code="unsupported_format") from None
    try:
        return _check(container, max_seconds=max_seconds, max_frame_pixels=max_frame_pixels)
    finally:
        container.close()
        if hasattr(source, "seek"):
            source.seek(0)  # type: ignore[union-attr]


def _head(source: str | BinaryIO) -> bytes:
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return handle.read(HEAD_BYTES)
    source.seek(0)
    head = source.read(HEAD_BYTES)
    source.seek(0)
    return head


def _check(container: av.container.InputContainer, *, max_seconds: float, max_frame_pixels: int) -> VideoInfo:
    kind = CONTAINERS.get(container.format.name)
    if kind is None:
        raise VideoError(
            f"{container.format.long_name or container.format.name} is not a supported video; send {SUPPORTED}",
            code="unsupported_format",
        )
    if not container.streams.video:
        raise VideoError("the file has no video track (sound only?)", code="unsupported_format")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoError(f"the header gives an empty frame size {width}x{height}", code="corrupt_video")
    if width * height > max_frame_pixels:
        raise VideoError(
            f"frames are {width}x{height} = {width * height} pixels; the limit is {max_frame_pixels}",
            code="image_too_large",
        )
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
    duration_s = _declared_duration(container, stream)
    if duration_s is not None and duration_s > max_seconds:
        raise VideoError(f"the video lasts {duration_s:.0f} s; the limit is {max_seconds:g} s", code="video_too_long")
    first = _first_frame(container, stream)
    if duration_s is None:  # no duration in the header: read the packets' timestamps (no decoding)
        duration_s = _duration_from_packets(container, stream, max_seconds)
    rotation = int(first.rotation or 0) % 360
    if rotation in (90, 270):
        width, height = height, width
    estimated = max(1, math.floor(duration_s * fps + 0.5)) if fps else 1
    frames = stream.frames or estimated
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    return VideoInfo(
        container=kind,
        codec=stream.codec_context.name,
        width=width,
        height=height,
        rotation=rotation,
        duration_s=duration_s,
        frames=frames,
        fps=fps,
        audio_codec=audio,
    )


def _declared_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(f"the video's frames could not be decoded: {exc}", code="corrupt_video") from None
    raise VideoError("the video has no frame that decodes", code="corrupt_video")


def _duration_from_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, max_seconds: float
) -> float:
    first = last = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            time = float(packet.pts * stream.time_base)
            first = time if first is None else min(first, time)
            last = time if last is None else max(last, time)
            if last - first > max_seconds:
                raise VideoError(f"the video lasts over {max_seconds:g} s, the limit", code="video_too_long")
    except av.error.FFmpegError:
        pass  # a damaged tail: what was read so far counts
    if first is None or last is None:
        return 0.0
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    return last - first + (1 / fps if fps else 0.0)
