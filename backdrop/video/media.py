"""Frames in and out with FFmpeg's libraries, through PyAV: no temporary images, no ffmpeg binary.

- :class:`VideoSource` decodes a file's frames as upright BGR arrays, each with its presentation time
  (seconds from the start of the file), from any point (it seeks to the keyframe before and decodes on).
  Timing comes from each frame's own timestamp, so variable frame rates survive; a packet that fails to
  decode is skipped (the frames around it keep their times).
- :class:`FrameWriter` encodes frames at the times given: H.264 (libx264, no B-frames, so chunks join
  cleanly) or VP9 (libvpx, with an alpha plane for cut-outs), into Matroska chunk files.
- :func:`join` puts the chunk files' packets in one MP4 or WebM file without re-encoding them, with the
  source's sound copied where the container takes its codec, re-encoded (AAC, Opus) otherwise.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from backdrop.params import VideoFormat
from backdrop.video.probe import VideoError

# Chunk files and encoders count time in microseconds: exact enough for any frame rate, and every
# container in use (Matroska, MP4, WebM) takes it.
TIME_BASE = Fraction(1, 1_000_000)
# Frames closer than this to a range's edge count as inside it (timestamps are rounded by containers).
TIME_EPSILON_S = 0.0005


# Sound codecs each container carries as they are; anything else is re-encoded to the first codec named.
AUDIO_COPY = {VideoFormat.MP4: ("aac", "mp3"), VideoFormat.WEBM: ("opus", "vorbis")}
AUDIO_ENCODER = {VideoFormat.MP4: ("aac", 128_000), VideoFormat.WEBM: ("libopus", 96_000)}


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # upright BGR, uint8
    time_s: float  # presentation time, seconds from the start of the file


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame as the display matrix says (``rotation``: degrees counter-clockwise)."""
    rotation %= 360
    if rotation == 90:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if rotation == 180:
        return cv2.rotate(image, cv2.ROTATE_180)
    if rotation == 270:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return image


def file_start_s(container: av.container.InputContainer) -> float:
    """The earliest start time of the video and sound streams: time zero for both in the output."""
    starts = [
        float(stream.start_time * stream.time_base)
        for stream in (*container.streams.video[:1], *container.streams.audio[:1])
        if stream.start_time is not None and stream.time_base
    ]
    return min(starts) if starts else 0.0


class VideoSource:
    """A video file opened for decoding (use as a context manager)."""

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        try:
            self._container = av.open(str(path), mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise VideoError(f"the video could not be opened: {exc}", code="corrupt_video") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("the file has no video track", code="unsupported_format")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if threads:
            self._stream.codec_context.thread_count = threads
        self.start_s = file_start_s(self._container)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.skipped_packets = 0

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def frames(self, start_s: float = 0.0, end_s: float = math.inf) -> Iterator[Frame]:
        """The frames whose time lies in [start_s, end_s), in presentation order."""
        stream = self._stream
        if start_s > 0:
            target = int((start_s + self.start_s) / stream.time_base)
            self._container.seek(target, stream=stream, backward=True)
        previous: float | None = None
        for packet in self._container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                self.skipped_packets += 1  # a damaged packet: skipped, its neighbours keep their times
                continue
            for frame in decoded:
                if frame.pts is not None:
                    time_s = float(frame.pts * frame.time_base) - self.start_s
                elif previous is not None:
                    time_s = previous + 1 / self.fps
                else:
                    time_s = 0.0
                if previous is not None and time_s <= previous:
                    continue  # a repeated or out-of-order timestamp: one picture per time
                previous = time_s
                if time_s < start_s - TIME_EPSILON_S:
                    continue
                if time_s >= end_s - TIME_EPSILON_S:
                    return
                image = frame.to_ndarray(format="bgr24")
                yield Frame(_upright(image, frame.rotation or 0), time_s)


def video_quality(quality: int, fmt: VideoFormat) -> str:
    """The job's quality (1-100) as the encoder's constant-quality factor (lower is better)."""
    if fmt is VideoFormat.MP4:
        return str(round(40 - quality * 0.22))  # 90 -> CRF 20, libx264's visually lossless range
    return str(round(52 - quality * 0.3))  # 90 -> CRF 25 for VP9


def encoded_size(fmt: VideoFormat, width: int, height: int) -> tuple[int, int]:
    """The size frames of ``width`` x ``height`` are encoded at. H.264 in browsers means 4:2:0, which needs
    an even width and height (H.264 crops only in steps of two pixels there): an odd one loses its last
    column or row, as video tools do, rather than being encoded 4:4:4, which browsers do not play. A
    frame one pixel wide or high keeps its size (and 4:4:4). VP9 takes odd sizes as they are."""
    if fmt is not VideoFormat.MP4:
        return width, height
    return (width - width % 2 if width > 1 else width), (height - height % 2 if height > 1 else height)


class FrameWriter:
    """Encodes frames (BGR; BGRA with ``alpha``; one channel with ``gray``) at their own times into a
    Matroska file (use as a context manager). ``width`` and ``height`` are the frames' size; the
    encoded size (``self.width`` x ``self.height``) may be a pixel smaller, see ``encoded_size``."""

    def __init__(
        self,
        path: str | Path,
        fmt: VideoFormat,
        width: int,
        height: int,
        fps: float,
        *,
        quality: int = 90,
        alpha: bool = False,
        threads: int = 1,
    ) -> None:
        self._container = av.open(str(path), mode="w", format="matroska")
        rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)
        width, height = encoded_size(fmt, width, height)
        self.width, self.height = width, height
        if fmt is VideoFormat.MP4:
            stream = self._container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            stream.codec_context.options = {
                "crf": video_quality(quality, fmt),
                "preset": "veryfast",
                "bf": "0",  # no B-frames: decode order is presentation order, so chunks join cleanly
                "g": str(max(1, round(2 * float(rate)))),
            }
        else:
            stream = self._container.add_stream("libvpx-vp9", rate=rate)
            stream.pix_fmt = "yuva420p" if alpha else "yuv420p"
            stream.codec_context.options = {
                "crf": video_quality(quality, fmt),
                "b": "0",
                "deadline": "realtime",
                "cpu-used": "8",
                "row-mt": "1",
                "g": str(max(1, round(2 * float(rate)))),
            }
        stream.width, stream.height = width, height
        stream.codec_context.time_base = TIME_BASE
        stream.codec_context.thread_count = threads
        self._stream = stream
        self._format = "bgra" if alpha else "bgr24"
        self.frames = 0

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        self.close(flush=kind is None)

    def write(self, image: np.ndarray, time_s: float) -> None:
        image = image[: self.height, : self.width]
        if image.ndim == 2:  # a matte: grey picture
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA if self._format == "bgra" else cv2.COLOR_GRAY2BGR)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self._format)
        frame.pts = round(time_s / TIME_BASE)
        frame.time_base = TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self, *, flush: bool = True) -> None:
        try:
            if flush:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()


@dataclass(frozen=True)
class JoinReport:
    frames: int
    audio: bool
    audio_copied: bool
    duration_s: float


def _packet_time(packet: av.Packet) -> float:
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float(stamp * packet.time_base) if stamp is not None else 0.0


def _video_packets(chunks: list[Path]) -> Iterator[tuple[float, int, av.Packet]]:
    for chunk in chunks:
        with av.open(str(chunk), mode="r") as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end marker
                yield _packet_time(packet), 0, packet


def join(
    chunks: list[Path],
    source: str | Path | None,
    output: str | Path,
    fmt: VideoFormat,
    *,
    keep_metadata: bool = False,
) -> JoinReport:
    """One MP4/WebM file from the chunks' video packets (not re-encoded) and the source's sound (a camera
    recording has no source: ``None``)."""
    if not chunks:
        raise ValueError("nothing to join")
    options = {"movflags": "+faststart"} if fmt is VideoFormat.MP4 else {}
    with contextlib.ExitStack() as opened:
        template = opened.enter_context(av.open(str(chunks[0]), mode="r"))
        original = None
        if source is not None:
            original = opened.enter_context(av.open(str(source), mode="r", metadata_errors="ignore"))
        out = opened.enter_context(av.open(str(output), mode="w", format=fmt.value, options=options))
        video_out = out.add_stream_from_template(template.streams.video[0])
        if keep_metadata and original is not None:
            out.metadata.update({k: v for k, v in original.metadata.items() if k != "encoder"})
        start_s = file_start_s(original) if original is not None else 0.0
        audio_in = original.streams.audio[0] if original is not None and original.streams.audio else None
        audio_packets: Iterator[tuple[float, int, av.Packet]] = iter(())
        copied = False
        if audio_in is not None:
            copied = audio_in.codec_context.name in AUDIO_COPY[fmt]
            if copied:
                audio_out = out.add_stream_from_template(audio_in)
                audio_packets = _copied_audio(original, audio_in, start_s)
            else:
                codec, bit_rate = AUDIO_ENCODER[fmt]
                audio_out = out.add_stream(
                    codec, rate=48_000 if codec == "libopus" else audio_in.codec_context.sample_rate
                )
                audio_out.bit_rate = bit_rate
                audio_out.layout = "stereo" if audio_in.codec_context.layout.nb_channels >= 2 else "mono"
                audio_packets = _reencoded_audio(original, audio_in, audio_out, start_s)
        frames = 0
        last_s = 0.0
        for time_s, kind, packet in heapq.merge(_video_packets(chunks), audio_packets, key=lambda item: item[:2]):
            if kind == 0:
                packet.stream = video_out
                frames += 1
                last_s = max(last_s, time_s)
            else:
                packet.stream = audio_out
            out.mux(packet)
        return JoinReport(frames=frames, audio=audio_in is not None, audio_copied=copied, duration_s=last_s)


def _copied_audio(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, start_s: float
) -> Iterator[tuple[float, int, av.Packet]]:
    shift = round(start_s / stream.time_base)
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        yield _packet_time(packet), 1, packet


def _reencoded_audio(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    encoder: av.audio.stream.AudioStream,
    start_s: float,
) -> Iterator[tuple[float, int, av.Packet]]:
    resampler = av.AudioResampler(
        format=encoder.codec_context.format, layout=encoder.layout, rate=encoder.codec_context.sample_rate
    )
    rate = encoder.codec_context.sample_rate
    next_pts: int | None = None

    def encoded(frame: av.AudioFrame | None) -> Iterator[tuple[float, int, av.Packet]]:
        for packet in encoder.encode(frame):
            yield _packet_time(packet), 1, packet

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        for frame in frames:
            for resampled in resampler.resample(frame):
                if next_pts is None:
                    first_s = (float(frame.pts * frame.time_base) if frame.pts is not None else 0.0) - start_s
                    next_pts = max(0, round(first_s * rate))
                resampled.pts, resampled.time_base = next_pts, Fraction(1, rate)
                next_pts += resampled.samples
                yield from encoded(resampled)
    for resampled in resampler.resample(None):
        resampled.pts, resampled.time_base = next_pts or 0, Fraction(1, rate)
        next_pts = (next_pts or 0) + resampled.samples
        yield from encoded(resampled)
    yield from encoded(None)
