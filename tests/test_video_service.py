"""Video jobs through the real service: the API contract, chunks on both worker processes, progress,
the result, cancelling a running video, a killed worker, hostile uploads and a large upload's memory."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import av
import pytest
import requests

from backdrop.service.jobs import JobStore
from backdrop.settings import Settings
from tests import videos

pytestmark = pytest.mark.integration
CLIPS = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "videos"


def submit(stack, path: Path, field: str = "video", **fields) -> requests.Response:
    with path.open("rb") as handle:
        return requests.post(f"{stack.api_url}/v1/jobs", files={field: (path.name, handle)}, data=fields, timeout=120)


def job(stack, job_id: str) -> dict:
    return requests.get(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10).json()


def finished(stack, job_id: str, timeout_s: float = 180, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = job(stack, job_id)
        if on_poll is not None:
            on_poll(state)
        if state["status"] in ("succeeded", "failed", "cancelled"):
            return state
        assert time.monotonic() < deadline, f"job {job_id} still {state['status']}"
        time.sleep(0.2)


def download(state: dict, path: Path) -> Path:
    response = requests.get(state["result"]["url"], timeout=60)
    assert response.status_code == 200
    path.write_bytes(response.content)
    return path


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]


def worker_lines(stack, job_id: str) -> list[dict]:
    lines = []
    for text in stack.process("worker-backdrop").log_text().splitlines():
        if job_id in text and text.startswith("{"):
            lines.append(json.loads(text))
    return lines


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video-jobs")


@pytest.fixture(scope="module")
def clip(folder) -> Path:
    """Three seconds with sound: three one-second chunks on the test stack."""
    return videos.write_video(folder / "clip.mp4", frames=90, width=320, height=240, audio_seconds=3.0)


def test_a_clip_is_rendered_in_chunks_on_both_workers_with_progress_and_sound(stack, folder, clip):
    response = submit(stack, clip, effect="blur", strength="60")
    assert response.status_code == 202 and response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    job_id = response.json()["id"]
    seen = []
    state = finished(stack, job_id, on_poll=lambda s: seen.append(s.get("progress")))
    assert state["status"] == "succeeded", state["error"]
    assert state["kind"] == "video" and state["progress"] == {"done": 90, "total": 90}
    assert any(p and 0 < p["done"] < 90 for p in seen) or len(seen) < 3  # progress moved while it ran
    result = state["result"]
    assert result["content_type"] == "video/mp4" and (result["width"], result["height"]) == (320, 240)
    assert result["frames"] == 90 and result["audio"] is True
    assert abs(result["duration_s"] - 3.0) < 0.05 and abs(result["fps"] - 30) < 0.01
    out = download(state, folder / "result.mp4")
    assert frame_times(out) == pytest.approx(frame_times(clip), abs=0.001)
    with av.open(str(out)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
    rendered_by = {line["pid"] for line in worker_lines(stack, job_id) if "rendering from" in line["msg"]}
    assert len(rendered_by) == 2, "the chunks should spread over both worker processes"


def test_cutout_is_webm_with_alpha_and_mp4_is_refused(stack, folder, clip):
    refused = submit(stack, clip, effect="cutout", format="mp4")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unsupported_output"
    state = finished(stack, submit(stack, clip, effect="cutout").json()["id"])
    assert state["status"] == "succeeded" and state["result"]["content_type"] == "video/webm"
    with av.open(str(download(state, folder / "cut.webm"))) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
        assert [s.codec_context.name for s in container.streams.audio] == ["opus"]


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda f, c: f / "notes.mp4", 415, "unsupported_format"),
        (lambda f, c: videos.truncated(c, f / "cut-short.mp4"), 415, "corrupt_video"),
        (lambda f, c: videos.sound_only(f / "song.m4a"), 415, "unsupported_format"),
        (lambda f, c: videos.no_frames(f / "nothing.mkv"), 415, "corrupt_video"),
        (
            lambda f, c: videos.write_video(f / "hour.mp4", times_s=list(range(3600)), fps=1, width=64, height=48),
            413,
            "video_too_long",
        ),
        (lambda f, c: videos.write_video(f / "huge.mp4", frames=1, width=4000, height=2250), 413, "image_too_large"),
    ],
)
def test_what_cannot_be_done_is_refused_before_anything_is_queued(stack, folder, clip, make, status, code):
    (folder / "notes.mp4").write_text("not a video at all")
    depth_before = JobStore.connect(Settings.from_env(stack.env).redis_url, ttl_s=60).queue_depth("backdrop")
    response = submit(stack, make(folder, clip))
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert JobStore.connect(Settings.from_env(stack.env).redis_url, ttl_s=60).queue_depth("backdrop") <= depth_before


def test_image_and_video_together_is_a_bad_request(stack, clip, astronaut_jpeg):
    with clip.open("rb") as handle:
        response = requests.post(
            f"{stack.api_url}/v1/jobs",
            files={"video": ("c.mp4", handle), "image": ("a.jpg", astronaut_jpeg)},
            timeout=30,
        )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_parameter"


def test_a_damaged_stretch_ends_with_the_frames_that_decode(stack, folder, clip):
    damaged = videos.garbage_inside(clip, folder / "damaged.mp4")
    state = finished(stack, submit(stack, damaged).json()["id"], timeout_s=120)
    assert state["status"] == "succeeded", state["error"]
    assert 0 < state["result"]["frames"] <= 90


@pytest.fixture(scope="module")
def long_clip(folder) -> Path:
    """Twenty seconds at 640x360: long enough to catch it running."""
    if (CLIPS / "juggle-720p.mp4").is_file():
        return CLIPS / "juggle-720p.mp4"
    return videos.write_video(folder / "long.mp4", frames=600, width=640, height=360)


def test_cancelling_a_running_video_stops_its_workers_within_5_s(stack, long_clip, astronaut_jpeg):
    job_id = submit(stack, long_clip).json()["id"]
    deadline = time.monotonic() + 60
    while (state := job(stack, job_id))["status"] != "running" or state["progress"]["done"] == 0:
        assert time.monotonic() < deadline and state["status"] in ("queued", "running"), state
        time.sleep(0.1)
    response = requests.delete(f"{stack.api_url}/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    cancelled_at = time.monotonic()
    # Within 5 s every chunk worker has stopped: progress freezes and the workers take other jobs.
    time.sleep(5)
    frozen = job(stack, job_id)["progress"]["done"]
    photo = requests.post(f"{stack.api_url}/v1/jobs", files={"image": ("a.jpg", astronaut_jpeg)}, timeout=30)
    photo_state = finished(stack, photo.json()["id"], timeout_s=30)
    assert photo_state["status"] == "succeeded"
    assert job(stack, job_id)["progress"]["done"] == frozen and job(stack, job_id)["status"] == "cancelled"
    stopped = [line for line in worker_lines(stack, job_id) if "chunk" in line["msg"] and "stopped" in line["msg"]]
    assert stopped and time.monotonic() - cancelled_at < 60
    # A running image job still cannot be cancelled, a finished one neither.
    assert requests.delete(f"{stack.api_url}/v1/jobs/{photo.json()['id']}", timeout=10).status_code == 409


def test_a_worker_killed_mid_chunk_costs_that_chunk_only(stack, long_clip):
    job_id = submit(stack, long_clip, effect="gray").json()["id"]
    deadline = time.monotonic() + 60
    while not (starts := [line for line in worker_lines(stack, job_id) if "rendering from" in line["msg"]]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # inside the chunk
    os.kill(starts[0]["pid"], signal.SIGKILL)
    state = finished(stack, job_id, timeout_s=240)
    assert state["status"] == "succeeded", state["error"]
    with av.open(str(long_clip)) as container:
        expected = sum(1 for _ in container.decode(video=0))
    assert state["result"]["frames"] == expected


def test_a_large_upload_does_not_grow_the_api(stack, folder, clip):
    """A 200 MB video (a real clip padded with an MP4 'free' box) streams through the API to storage."""
    big = folder / "big.mp4"
    padding = 200 * 1024 * 1024
    with big.open("wb") as out:
        out.write(clip.read_bytes())
        out.write((padding + 8).to_bytes(4, "big") + b"free")
        block = b"\0" * (1 << 20)
        for _ in range(padding // len(block)):
            out.write(block)
    api = stack.process("api").process.pid
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == api]
    before = {pid: _peak_rss_kb(pid) for pid in workers}
    response = submit(stack, big)
    assert response.status_code == 202, response.text
    growth_mb = max(_peak_rss_kb(pid) - before[pid] for pid in workers) / 1024
    assert growth_mb < 60, f"an API process grew by {growth_mb:.0f} MB for a 200 MB upload"
    assert finished(stack, response.json()["id"])["status"] == "succeeded"


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
