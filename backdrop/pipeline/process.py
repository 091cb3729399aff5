"""Running the stages every image goes through: decode → segment → refine → effect → encode.

``Pipeline`` holds the loaded models (see ``loaded``) and the subject finder (see ``finding``); every
stage is a plain function over numpy arrays in this package's modules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import cv2
import numpy as np

from backdrop.errors import JobTimeout, ParameterError
from backdrop.models.registry import register_frozen_deeplab
from backdrop.params import Effect, JobParams, OutputFormat
from backdrop.pipeline.effects import apply_effect, onto_background
from backdrop.pipeline.finding import FOUND_MIN_COVERAGE, FrameHistory, SubjectFinder, SubjectMap
from backdrop.pipeline.framing import outside_zeroed, place, plan_frame, region_of_interest, subject_box
from backdrop.pipeline.geometry import make_preview
from backdrop.pipeline.imageio import encode_image, load_image
from backdrop.pipeline.loaded import LoadedModels
from backdrop.pipeline.metadata import attach_exif, upright_exif
from backdrop.pipeline.pixels import pixel_ops
from backdrop.pipeline.refine import Alpha, refine_alpha
from backdrop.pipeline.subject import WORK_LONG_SIDE
from backdrop.settings import Settings

T = TypeVar("T")
# Long side of the shared reduced copy that model input, guided-filter solve and blur are made from.
PREVIEW_LONG_SIDE = 1024
STAGES = ("decode", "segment", "refine", "effect", "encode")


@dataclass(frozen=True)
class ProcessResult:
    data: bytes
    format: OutputFormat
    width: int
    height: int
    model: str
    detected: dict[str, float]
    found: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Where the subject is in the result: top, left, width, height of the matte's non-zero pixels.
    foreground: dict[str, int] | None = None

    @property
    def content_type(self) -> str:
        return self.format.content_type

    def report(self) -> dict[str, Any]:
        """What a caller needs to know besides the bytes (JSON-safe)."""
        return {
            "model": self.model,
            "detected": self.detected,
            "found": self.found,
            "format": self.format.value,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
            "timings_ms": self.timings_ms,
            "foreground": self.foreground,
        }


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: ``rendered`` (BGR, BGRA for cutout, one channel for mask), the matte, what
    was found, and whether any target was (if not, the whole frame was treated as background)."""

    rendered: np.ndarray
    alpha: Alpha
    subject: SubjectMap
    found: bool


class StageClock:
    """Times each stage; with a deadline (``time.monotonic()`` seconds), a stage that would start after
    it raises :class:`JobTimeout` instead. That is the time limit where no signal can interrupt a job
    (a threads pool); a stage already running is not interrupted."""

    def __init__(self, deadline: float | None = None, limit_s: float | None = None) -> None:
        self.timings_ms: dict[str, float] = {}
        self.deadline, self.limit_s = deadline, limit_s

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.deadline is not None and time.monotonic() > self.deadline:
            limit = f"its {self.limit_s:g} s limit" if self.limit_s else "its deadline"
            raise JobTimeout(f"the job ran past {limit} before the {name} stage")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_ms[name] = round(self.timings_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3, 2)


class Pipeline:
    """Loads each model file once (lazily, or up front with :meth:`preload`) and processes images."""

    def __init__(self, settings: Settings | None = None, *, on_batch: Callable[[int], None] | None = None) -> None:
        """``on_batch(n)`` is told the size of every model invocation (for metrics)."""
        self.settings = settings or Settings.from_env()
        self.pixels = pixel_ops(self.settings.pixel_backend)
        if self.settings.frozen_model:
            register_frozen_deeplab(self.settings.frozen_model, self.settings.frozen_model_sha256)
        self.models = LoadedModels(self.settings, on_batch)
        self.finder = SubjectFinder(self.models, self.settings)
        cv2.setNumThreads(self.settings.threads)

    @property
    def loaded_files(self) -> tuple[str, ...]:
        return self.models.loaded_files

    @property
    def engine_loads(self) -> int:
        """How many interpreters this process created (once per model file)."""
        return self.models.engine_loads

    def preload(self, model_names: Iterable[str]) -> None:
        self.models.preload(model_names)

    def process_frame(
        self,
        image: np.ndarray,
        params: JobParams,
        *,
        background: np.ndarray | None = None,
        input_alpha: np.ndarray | None = None,
        clock: StageClock | None = None,
        history: FrameHistory | None = None,
    ) -> FrameResult:
        """One upright BGR frame (HxWx3 uint8) in, the rendered frame out: the stages every still image,
        video frame and live frame goes through. ``clock`` times the stages (and enforces a deadline);
        ``history`` is the memory of the sequence the frame belongs to (see ``SubjectFinder.find``)."""
        clock = clock or StageClock()
        with clock.stage("segment"):
            preview = make_preview(image, PREVIEW_LONG_SIDE)
            small = make_preview(preview, WORK_LONG_SIDE)
            subject = self.finder.find(preview, params, history, small)
        with clock.stage("refine"):
            found = sum(subject.detected.values()) >= FOUND_MIN_COVERAGE
            probability = subject.probability if found else np.zeros_like(subject.probability)
            alpha = refine_alpha(probability, image, preview, model_pixel=subject.model_pixel, ops=self.pixels)
            if history is not None:
                alpha = Alpha(full=history.steady(alpha.full, image), preview=alpha.preview)
            if params.roi is not None:  # only what lies in the region of interest may be the subject
                height, width = image.shape[:2]
                x0, y0, x1, y1 = region_of_interest(params.roi, width, height)
                sx, sy = preview.shape[1] / width, preview.shape[0] / height
                box = (math.floor(x0 * sx), math.floor(y0 * sy), math.ceil(x1 * sx), math.ceil(y1 * sy))
                alpha = Alpha(
                    full=outside_zeroed(alpha.full, (x0, y0, x1, y1)), preview=outside_zeroed(alpha.preview, box)
                )
        with clock.stage("effect"):
            rendered = apply_effect(
                image,
                preview,
                alpha.full,
                alpha.preview,
                params,
                input_alpha=input_alpha,
                background=background,
                ops=self.pixels,
                coarse=small,
            )
        return FrameResult(rendered=rendered, alpha=alpha, subject=subject, found=found)

    def process(
        self,
        data: bytes,
        params: JobParams,
        background: bytes | None = None,
        *,
        deadline: float | None = None,
        limit_s: float | None = None,
    ) -> ProcessResult:
        """Run one job. ``deadline`` (``time.monotonic()`` seconds; ``limit_s`` names it in the message)
        is checked before each stage."""
        clock = StageClock(deadline, limit_s)
        with clock.stage("decode"):
            decoded = load_image(data, self.settings)
            image, input_alpha = decoded.bgr, decoded.alpha
            if params.max_pixels is not None:
                image, input_alpha = (
                    within_pixels(image, params.max_pixels),
                    within_pixels(input_alpha, params.max_pixels),
                )
            backdrop_image = None
            if params.effect is Effect.REPLACE:
                if background is None:
                    raise ParameterError("background", "effect replace needs a background image")
                backdrop_image = load_image(background, self.settings).bgr
            output_format = params.output_format(decoded.info.format)
        # A new background under a subject that moves, or that the subject shows through: cut out first.
        cut_first = params.effect in (Effect.COLOR, Effect.REPLACE) and (params.framed or params.translucent)
        rendering = replace(params, effect=Effect.CUTOUT) if cut_first else params
        frame = self.process_frame(image, rendering, background=backdrop_image, input_alpha=input_alpha, clock=clock)
        with clock.stage("effect"):
            rendered, matte = frame.rendered, frame.alpha.full
            if params.framed:
                height, width = matte.shape
                # A crop of a blurred or grey photo stays inside it: there is nothing to fill a margin with.
                within = params.effect in (Effect.BLUR, Effect.GRAY)
                plan = plan_frame(subject_box(matte), width, height, params, within=within)
                rendered, matte = place(rendered, plan), place(matte, plan)
            if cut_first:
                rendered = onto_background(rendered, params, backdrop_image, self.pixels)
        with clock.stage("encode"):
            encoded = encode_image(rendered, output_format, params.quality)
            if params.keep_metadata and decoded.info.exif:
                encoded = attach_exif(encoded, output_format, upright_exif(decoded.info.exif))
        height, width = rendered.shape[:2]
        box = subject_box(matte)
        return ProcessResult(
            data=encoded,
            format=output_format,
            width=width,
            height=height,
            model=frame.subject.model,
            detected=frame.subject.detected,
            found=frame.found,
            timings_ms=clock.timings_ms,
            foreground=None
            if box is None
            else {"top": box[1], "left": box[0], "width": box[2] - box[0], "height": box[3] - box[1]},
        )


def within_pixels(pixels: T | None, max_pixels: int) -> T | None:
    """``pixels`` shrunk (area averaging) to at most ``max_pixels``, its aspect kept; as it is if smaller."""
    if pixels is None:
        return None
    height, width = pixels.shape[:2]
    if width * height <= max_pixels:
        return pixels
    factor = math.sqrt(max_pixels / (width * height))
    size = (max(1, math.floor(width * factor)), max(1, math.floor(height * factor)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
