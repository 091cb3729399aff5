"""Video speed through the whole service: a 960x540 30 fps clip and a 720p one as video jobs, against the
floor measured in the same run (PyAV decode + libx264 veryfast CRF 20 encode of the same clip), with 2
worker processes (``make run``'s default) and with 1, on the same machine.

    .venv/bin/python bench/video.py [--eval ../shared/eval] [--chunk-seconds 10]

The clips come from ../shared/eval/videos: the 720p one as it is (with its sound track), the 960x540 one
made from two of the real clips (scaled, retimed to 30 fps; nothing synthetic in the pictures).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import requests

from backdrop.params import VideoFormat
from backdrop.service.localstack import LocalStack, free_port
from backdrop.video.media import FrameWriter, VideoSource

ROOT = Path(__file__).resolve().parent.parent


def make_960x540(videos: Path, out: Path) -> Path:
    """Two real clips scaled to 960x540 and retimed to 30 fps, one after the other, as one H.264 MP4."""
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 960, 540, "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "veryfast"}
        index = 0
        for name in ("juggle-720p.mp4", "standing-720p-silent-audio.mp4"):
            with VideoSource(videos / name) as source:
                for frame in source.frames():
                    image = cv2.resize(frame.image, (960, 540), interpolation=cv2.INTER_AREA)
                    encoded = av.VideoFrame.from_ndarray(image, format="bgr24")
                    encoded.pts, encoded.time_base = index, Fraction(1, 30)
                    for packet in stream.encode(encoded):
                        container.mux(packet)
                    index += 1
        for packet in stream.encode():
            container.mux(packet)
    return out


def floor_s(clip: Path) -> float:
    """Decode every frame and encode it again with libx264 veryfast CRF 20: what any pipeline pays."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, VideoSource(clip) as source:
        writer = None
        for frame in source.frames():
            if writer is None:
                height, width = frame.image.shape[:2]
                writer = FrameWriter(
                    Path(scratch) / "floor.mkv", VideoFormat.MP4, width, height, source.fps, quality=91
                )
            writer.write(frame.image, frame.time_s)
        if writer is not None:
            writer.close()
    return time.perf_counter() - started


def clip_facts(clip: Path) -> tuple[float, int]:
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.demux(stream) if _.size)
        duration = float(stream.duration * stream.time_base) if stream.duration else container.duration / 1e6
        return duration, frames


def job_seconds(stack: LocalStack, clip: Path) -> float:
    started = time.perf_counter()
    with clip.open("rb") as handle:
        response = requests.post(f"{stack.api_url}/v1/jobs", files={"video": (clip.name, handle)}, timeout=300)
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        state = requests.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10).json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    if state["status"] != "succeeded":
        raise RuntimeError(f"video job {state['status']}: {state['error']}")
    return elapsed


def peak_rss_mb(stack: LocalStack) -> float:
    """The largest peak resident memory among the worker node's processes."""
    node = stack.process("worker-backdrop").process.pid
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if int(entry.name) == node or parent == node:
                status = (entry / "status").read_text()
                peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
        except (OSError, ValueError, IndexError):
            continue
    return max(peaks, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--chunk-seconds", default="10")
    args = parser.parse_args()
    videos = args.eval / "videos"
    scratch = Path(tempfile.mkdtemp(prefix="backdrop-bench-video-"))
    clips = {
        "960x540 30 fps": make_960x540(videos, scratch / "clip-960x540.mp4"),
        "720p": videos / "standing-720p-silent-audio.mp4",
    }
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; chunks of {args.chunk_seconds} s")
    print("job: upload, chunks rendered in parallel, join, result stored; floor: decode + libx264 veryfast CRF 20\n")
    floors = {label: floor_s(clip) for label, clip in clips.items()}
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for workers in (2, 1):
        env = dict(os.environ)
        env.update({"BACKDROP_THREADS": str(max(1, cores // 2)), "BACKDROP_VIDEO_CHUNK_SECONDS": args.chunk_seconds})
        stack = LocalStack(root=scratch / f"stack-{workers}", api_port=free_port(), workers=workers)
        stack.start(env)
        try:
            for label, clip in clips.items():
                job_seconds(stack, clip)  # warm: models loaded, caches filled
                results[label, workers] = (job_seconds(stack, clip), peak_rss_mb(stack))
        finally:
            stack.stop()
    columns = ("clip", "frames", "length", "workers", "job s", "x real time", "floor s", "x floor", "peak MB")
    widths = (15, 7, 7, 7, 7, 11, 8, 8, 8)
    print(" ".join(f"{name:>{width}}" for name, width in zip(columns, widths, strict=True)))
    for label, clip in clips.items():
        duration, frames = clip_facts(clip)
        for workers in (2, 1):
            seconds, peak = results[label, workers]
            print(
                f"{label:>15} {frames:7d} {duration:6.1f}s {workers:7d} {seconds:7.1f} {duration / seconds:11.2f} "
                f"{floors[label]:8.1f} {seconds / floors[label]:8.2f} {peak:8.0f}"
            )
        ratio = results[label, 1][0] / results[label, 2][0]
        print(
            f"{label:>15} 2 workers finish {ratio:.2f}x sooner than 1 (the ceiling on {cores} shared cores: "
            "2.0x, less what the API, S3 and the join take)"
        )


if __name__ == "__main__":
    main()
