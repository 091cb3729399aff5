"""A video job, in three kinds of task: plan it, render each chunk (in parallel, on whichever workers
are free), join the chunks. Plain code with its collaborators passed in, like ``worker.runner``.

- ``plan``: start the job, check the source again (the API's check can be bypassed), cut it into
  chunks of ``BACKDROP_VIDEO_CHUNK_SECONDS`` and queue one task per chunk.
- ``render_chunk``: render one time range into a chunk file and store it; report progress (and the
  job's heartbeat) at least once a second, and stop at once when the job is no longer running
  (cancelled, or failed by another chunk). Each attempt at a chunk holds a lease and stores its own
  object; only the current attempt's is recorded (a late one deletes its own). The chunk that finds every
  chunk done queues the join.
- ``join``: the chunks' packets in one file (not re-encoded) with the source's sound; store the result,
  record the job as succeeded, delete the chunks and the upload.

Each worker process keeps the last sources it downloaded (``SourceCache``), so the chunks of one clip
that land on the same worker fetch it once.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from backdrop.errors import BackdropError
from backdrop.params import Effect
from backdrop.pipeline.imageio import load_image
from backdrop.service.jobs import JOIN_PART, BrokerUnavailable, JobRecord, JobStatus, Lease, ResultObject, result_key
from backdrop.service.observability import JOBS_PROCESSED, VIDEO_CHUNK_SECONDS, VIDEO_FRAMES, VIDEO_SECONDS
from backdrop.service.storage import ObjectNotFound
from backdrop.video.chunks import plan_chunks
from backdrop.video.media import join
from backdrop.video.probe import VideoError, probe_video
from backdrop.video.render import render_range
from worker.leases import LeaseLost
from worker.runner import JobRunner

log = logging.getLogger("backdrop.worker")
# How often a chunk reports its progress (and looks whether the job was cancelled).
PROGRESS_INTERVAL_S = 0.5


class JobStopped(Exception):
    """The job is no longer running (cancelled, or failed by another task): stop and clean up."""


def chunk_key(lease: Lease) -> str:
    """Where an attempt at a chunk stores it (one object per attempt: a late one never overwrites)."""
    return f"{chunk_prefix(lease.job_id)}{int(lease.part):05d}-{lease.fence}.mkv"


def chunk_prefix(job_id: str) -> str:
    return f"chunks/{job_id}/"


class SourceCache:
    """The last few video sources this process downloaded, by job id, in a private temporary folder."""

    def __init__(self, download: Callable[[str, Path], None], *, keep: int = 2) -> None:
        self._download = download
        self._keep = keep
        self._folder = Path(tempfile.mkdtemp(prefix="backdrop-sources-"))
        self._paths: OrderedDict[str, Path] = OrderedDict()

    def path(self, job_id: str, locator: str) -> Path:
        if job_id in self._paths:
            self._paths.move_to_end(job_id)
            return self._paths[job_id]
        target = self._folder / job_id
        partial = target.with_suffix(".part")
        self._download(locator, partial)
        partial.rename(target)
        self._paths[job_id] = target
        while len(self._paths) > self._keep:
            _, old = self._paths.popitem(last=False)
            old.unlink(missing_ok=True)
        return target

    def forget(self, job_id: str) -> None:
        path = self._paths.pop(job_id, None)
        if path is not None:
            path.unlink(missing_ok=True)


class VideoRunner(JobRunner):
    """Image jobs (``run``, from ``JobRunner``) and the video tasks."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sources = SourceCache(
            lambda locator, path: self._with_retries(lambda: self.uploads.get_file(locator, path))
        )

    # --- plan ------------------------------------------------------------------------------------

    def plan(self, job_id: str, chunk_task: str) -> str:
        started = self._started(job_id)
        if started is None:
            return "skipped"
        record, lease = started
        try:
            with self.leases.hold(lease) as held:
                source = self.sources.path(job_id, record.input_key)
                info = probe_video(
                    str(source),
                    max_seconds=self.settings.max_video_seconds,
                    max_frame_pixels=self.settings.max_video_frame_pixels,
                )
                ranges = plan_chunks(info.duration_s, self.settings.video_chunk_seconds)
                held.check()
                if not self._with_retries(lambda: self.jobs.set_video_plan(record, info.as_dict(), len(ranges), lease)):
                    return "fenced"
        except LeaseLost:
            return "fenced"
        except Exception as exc:
            return self._failure(record, exc, "the uploaded video is no longer in storage", lease)
        log.info("video planned: %.1f s, %d frames, %d chunks", info.duration_s, info.frames, len(ranges))
        queue = self.settings.queue_for(record.params.model)
        for index in range(len(ranges)):
            self._queue_task(chunk_task, [job_id, index], queue)
        return "planned"

    def _started(self, job_id: str) -> tuple[JobRecord, Lease] | None:
        """Move the job to running as an image job starts; None when it must not run."""
        decision = self._with_retries(lambda: self.jobs.start(job_id, self.worker_id, self.settings.max_attempts))
        record = decision.record or self._with_retries(lambda: self.jobs.get(job_id))
        if record is None:
            return None
        if decision.action == "exhausted":
            self._fail(record, "worker_lost", f"the video's planning was delivered {decision.attempt - 1} times")
            return None
        if decision.action != "run" or decision.lease is None:
            log.info("video job %s skipped: %s", job_id, decision.action)
            return None
        return record, decision.lease

    # --- one chunk ---------------------------------------------------------------------------------

    def _begun(self, job_id: str, part: str) -> tuple[JobRecord, Lease] | None:
        """The job's record and this attempt's lease on ``part`` if the job still runs and the part has
        attempts left; else None (failing the job when they are used up)."""
        record = self._with_retries(lambda: self.jobs.get(job_id))
        if record is None or record.status is not JobStatus.RUNNING or not record.chunks:
            return None
        lease = self._with_retries(lambda: self.jobs.begin_part(job_id, part))
        if lease.fence > self.settings.max_attempts:
            attempts = lease.fence - 1
            self._fail(record, "worker_lost", f"video part {part} was tried {attempts} times and never finished", lease)
            return None
        return record, lease

    def render_chunk(self, job_id: str, index: int, join_task: str) -> str:
        begun = self._begun(job_id, str(index))
        if begun is None:
            return "skipped"
        record, lease = begun
        started = time.perf_counter()
        scratch = Path(tempfile.mkdtemp(prefix="backdrop-chunk-"))
        try:
            with self.leases.hold(lease) as held:
                source = self.sources.path(job_id, record.input_key)
                duration_s = float((record.source or {})["duration_s"])
                start_s, end_s = plan_chunks(duration_s, self.settings.video_chunk_seconds)[index]
                log.info("chunk %d of %d: rendering from %.2f s to %.2f s", index + 1, record.chunks, start_s, end_s)
                last_report = 0.0

                def on_frame(done: int) -> None:
                    nonlocal last_report
                    held.check()
                    if time.monotonic() - last_report >= PROGRESS_INTERVAL_S:
                        last_report = time.monotonic()
                        try:
                            status = self.jobs.report_progress(job_id, index, done)
                        except BrokerUnavailable:  # progress can wait; the lease and the fence decide
                            return
                        if status is not JobStatus.RUNNING:
                            raise JobStopped

                output = scratch / "chunk.mkv"
                report = render_range(
                    self.pipeline,
                    source,
                    output,
                    record.params,
                    record.params.video_format(),
                    start_s=start_s,
                    end_s=end_s,
                    background=self._background(record),
                    on_frame=on_frame,
                )
                held.check()
                key = chunk_key(lease)
                if report.frames:
                    self._store_file(key, output, "video/x-matroska")
                self._with_retries(lambda: self.jobs.report_progress(job_id, index, report.frames))
                done = self._with_retries(lambda: self.jobs.chunk_done(lease, report.frames, key))
                if done < 0:  # a later attempt has the chunk, or the job ended meanwhile
                    log.warning("chunk %d: a later attempt has it, or the job ended; %s deleted", index, key)
                    self._delete_quietly(key)
                    return "fenced"
        except LeaseLost:
            return "fenced"
        except JobStopped:
            log.info("video job %s no longer running: chunk %d stopped", job_id, index)
            self._discard(record)
            return "stopped"
        except Exception as exc:
            return self._failure(record, exc, "the uploaded video is no longer in storage", lease)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        VIDEO_FRAMES.inc(report.frames)
        VIDEO_CHUNK_SECONDS.observe(time.perf_counter() - started)
        log.info(
            "chunk %d of %d: %d frames in %.1f s",
            index + 1,
            record.chunks,
            report.frames,
            time.perf_counter() - started,
        )
        if done >= (record.chunks or 0):
            self._queue_task(join_task, [job_id], self.settings.queue_for(record.params.model))
        return "rendered"

    def _store_file(self, key: str, path: Path, content_type: str) -> None:
        def store() -> None:
            with path.open("rb") as handle:
                self.storage.put_file(key, handle, content_type)

        self._with_retries(store)

    def _background(self, record: JobRecord) -> np.ndarray | None:
        if record.params.effect is not Effect.REPLACE or not record.background_key:
            return None
        data = self._with_retries(lambda: self.uploads.get(record.background_key or ""))
        return load_image(data, self.settings).bgr

    # --- the join ----------------------------------------------------------------------------------

    def join(self, job_id: str) -> str:
        begun = self._begun(job_id, JOIN_PART)
        if begun is None:
            return "skipped"
        record, lease = begun
        scratch = Path(tempfile.mkdtemp(prefix="backdrop-join-"))
        try:
            with self.leases.hold(lease) as held:
                return self._join(record, held.lease, held.check, scratch)
        except LeaseLost:
            return "fenced"
        except Exception as exc:
            return self._failure(record, exc, "a stored chunk of the video is missing", lease)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _join(self, record: JobRecord, lease: Lease, check: Callable[[], None], scratch: Path) -> str:
        job_id = record.id
        written = self._with_retries(lambda: self.jobs.chunks_done(job_id))
        chunks = []
        for index, (frames, stored_at) in sorted(written.items()):
            if frames > 0:
                path = scratch / f"{index:05d}.mkv"
                self._with_retries(lambda stored_at=stored_at, path=path: self.storage.get_file(stored_at, path))
                chunks.append(path)
        if not chunks:
            raise VideoError("no frame of the video could be decoded", code="corrupt_video")
        fmt = record.params.video_format()
        output = scratch / f"result.{fmt.extension}"
        source = self.sources.path(job_id, record.input_key)
        report = join(chunks, source, output, fmt, keep_metadata=record.params.keep_metadata)
        check()
        key = result_key(lease, fmt.extension)
        self._store_file(key, output, fmt.content_type)
        size = output.stat().st_size
        width, height = _frame_size(chunks[0])
        # The last frame's time plus one frame: the clip's length; frames over their intervals: the rate.
        fps = (report.frames - 1) / report.duration_s if report.frames > 1 and report.duration_s > 0 else 0.0
        fps = fps or float((record.source or {}).get("fps") or 0)
        recorded = self._with_retries(
            lambda: self.jobs.succeed(
                record,
                result=ResultObject(
                    key=key,
                    content_type=fmt.content_type,
                    width=width,
                    height=height,
                    bytes=size,
                    duration_s=round(report.duration_s + (1 / fps if fps else 0.0), 3),
                    frames=report.frames,
                    fps=round(fps, 3),
                    audio=report.audio,
                ),
                worker=self.worker_id,
                lease=lease,
            )
        )
        if not self._linked_or_deleted(recorded, key, lease):
            return "fenced"
        JOBS_PROCESSED.labels(record.params.effect.value, "succeeded").inc()
        VIDEO_SECONDS.inc(report.duration_s)
        log.info("video succeeded: %d frames, %.1f s, sound %s", report.frames, report.duration_s, report.audio)
        self._discard(record)
        return "succeeded"

    def _failure(self, record: JobRecord, exc: Exception, missing: str, lease: Lease) -> str:
        """A task's failure as the job's: the same codes as an image job's (``worker.runner``)."""
        if isinstance(exc, SoftTimeLimitExceeded):
            limit = self.settings.video_task_soft_time_limit_s
            return self._fail(record, "timeout", f"a part of the video ran longer than {limit} s", lease)
        if isinstance(exc, ObjectNotFound):
            return self._fail(record, "input_missing", missing, lease)
        if isinstance(exc, BackdropError):
            return self._fail(record, exc.code, exc.message, lease)
        log.exception("video job %s failed unexpectedly", record.id)
        message = f"processing failed unexpectedly ({type(exc).__name__})"
        return self._fail(record, "internal_error", message, lease)

    def _fail(self, record: JobRecord, code: str, message: str, lease: Lease | None = None) -> str:
        outcome = super()._fail(record, code, message, lease)
        if outcome == "failed":  # a late attempt's failure is refused and must not clear the job's files
            self._discard(record)
        return outcome

    def _delete_quietly(self, *keys: str) -> None:
        try:
            self.storage.delete(*keys)
        except BackdropError:
            log.warning("objects %s not deleted now; the sweep deletes them", ", ".join(keys))

    def _discard(self, record: JobRecord) -> None:
        """The source copy, the chunks (every attempt's) and the upload go once the job ended (the sweep
        catches what this misses)."""
        self.sources.forget(record.id)
        try:
            stored = self.storage.list_keys(chunk_prefix(record.id))
            if stored:
                self.storage.delete(*stored)
        except BackdropError:
            log.warning("video job %s: chunks could not be deleted now; the sweep deletes them", record.id)
        self._delete_inputs(record)


def _frame_size(chunk: Path) -> tuple[int, int]:
    with av.open(str(chunk)) as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height
