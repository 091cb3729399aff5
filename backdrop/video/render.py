"""A clip, or one time range of it, through the frame pipeline: decode, process with the sequence's
temporal state, encode. Frames stream through; a clip is never held in memory."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backdrop.params import Effect, JobParams, VideoFormat
from backdrop.pipeline import Pipeline
from backdrop.video.chunks import WARMUP_S
from backdrop.video.media import TIME_EPSILON_S, FrameWriter, JoinReport, VideoSource, join
from backdrop.video.probe import VideoError
from backdrop.video.temporal import TemporalState


@dataclass(frozen=True)
class RangeReport:
    """What a range gave: frames written, and packets skipped because they would not decode."""

    frames: int
    skipped_packets: int


def render_range(
    pipeline: Pipeline,
    source: str | Path,
    output: str | Path,
    params: JobParams,
    fmt: VideoFormat,
    *,
    start_s: float = 0.0,
    end_s: float = math.inf,
    background: np.ndarray | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> RangeReport:
    """Render the frames of ``source`` in [start_s, end_s) into ``output`` (a Matroska chunk file; not
    written when the range holds no frame). ``on_frame(n)`` is called after each frame written."""
    history = TemporalState()
    writer: FrameWriter | None = None
    frames = 0
    with VideoSource(source, threads=pipeline.settings.threads) as video:
        try:
            for frame in video.frames(max(0.0, start_s - WARMUP_S) if start_s > 0 else 0.0, end_s):
                result = pipeline.process_frame(frame.image, params, background=background, history=history)
                if frame.time_s < start_s - TIME_EPSILON_S:
                    continue  # warm-up: the smoothing carries over the join; the frame is the previous range's
                if writer is None:
                    height, width = result.rendered.shape[:2]
                    writer = FrameWriter(
                        output,
                        fmt,
                        width,
                        height,
                        video.fps,
                        quality=params.quality,
                        alpha=params.effect is Effect.CUTOUT,
                        threads=pipeline.settings.threads,
                    )
                writer.write(result.rendered, frame.time_s)
                frames += 1
                if on_frame is not None:
                    on_frame(frames)
        except BaseException:
            if writer is not None:
                writer.close(flush=False)
            raise
        if writer is not None:
            writer.close()
        return RangeReport(frames=frames, skipped_packets=video.skipped_packets)


def render_video(
    pipeline: Pipeline,
    source: str | Path,
    output: str | Path,
    params: JobParams,
    fmt: VideoFormat,
    *,
    background: np.ndarray | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> JoinReport:
    """A whole clip on this machine (the command line): one range, then the sound put back."""
    with tempfile.TemporaryDirectory(prefix="backdrop-video-") as scratch:
        chunk = Path(scratch) / "frames.mkv"
        report = render_range(pipeline, source, chunk, params, fmt, background=background, on_frame=on_frame)
        if report.frames == 0:
            raise VideoError("no frame of the video could be decoded", code="corrupt_video")
        return join([chunk], source, output, fmt, keep_metadata=params.keep_metadata)
