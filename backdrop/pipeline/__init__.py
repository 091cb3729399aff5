"""The image pipeline: decode → segment → refine → effect → encode.

``Pipeline`` holds the loaded models (one engine per model file, per process, reused across images);
every stage is a plain function over numpy arrays in this package's modules.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from backdrop.engines import Engine, load_engine
from backdrop.engines.batching import BatchingEngine
from backdrop.errors import JobTimeout, ParameterError
from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import ModelSpec, ModelVariant, get_model, register_frozen_deeplab
from backdrop.params import Effect, JobParams, OutputFormat
from backdrop.pipeline.effects import apply_effect
from backdrop.pipeline.geometry import make_preview
from backdrop.pipeline.imageio import encode_image, load_image
from backdrop.pipeline.metadata import attach_exif, upright_exif
from backdrop.pipeline.pixels import pixel_ops
from backdrop.pipeline.refine import clean_probability, refine_alpha
from backdrop.pipeline.segment import segment
from backdrop.settings import Settings

# Long side of the shared reduced copy that model input, guided-filter solve and blur are made from.
PREVIEW_LONG_SIDE = 1024
# A target covering less than this share of the image counts as not found.
FOUND_MIN_COVERAGE = 0.001
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
        }


class _StageClock:
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


class _Counted:
    """An engine whose invocations are reported to ``on_batch`` (batch sizes metric)."""

    def __init__(self, inner: Engine, on_batch: Callable[[int], None] | None) -> None:
        self.name, self._inner, self._on_batch = inner.name, inner, on_batch

    @property
    def input_size(self) -> tuple[int, int]:
        return self._inner.input_size

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._on_batch is not None:
            self._on_batch(len(batch))
        return self._inner.run(batch)


class Pipeline:
    """Loads each model file once (lazily, or up front with :meth:`preload`) and processes images."""

    def __init__(self, settings: Settings | None = None, *, on_batch: Callable[[int], None] | None = None) -> None:
        """``on_batch(n)`` is told the size of every model invocation (for metrics)."""
        self.settings = settings or Settings.from_env()
        self._on_batch = on_batch
        self.pixels = pixel_ops(self.settings.pixel_backend)
        if self.settings.frozen_model:
            register_frozen_deeplab(self.settings.frozen_model, self.settings.frozen_model_sha256)
        self._engines: dict[str, Engine] = {}
        self.engine_loads = 0  # how many interpreters this process created (once per model file)
        self._lock = threading.Lock()
        cv2.setNumThreads(self.settings.threads)

    @property
    def loaded_files(self) -> tuple[str, ...]:
        return tuple(self._engines)

    def engine_for(self, variant: ModelVariant, spec: ModelSpec) -> Engine:
        name = variant.file.file_name
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                path = resolve_model_file(variant.file, self.settings)
                engine = load_engine(spec.engine or self.settings.engine, path, threads=self.settings.threads)
                if self.settings.batch_size > 1:
                    engine = BatchingEngine(
                        engine,
                        max_batch=self.settings.batch_size,
                        max_wait_ms=self.settings.batch_wait_ms,
                        on_batch=self._on_batch,
                    )
                else:
                    engine = _Counted(engine, self._on_batch)
                self._engines[name] = engine
                self.engine_loads += 1
            return engine

    def preload(self, model_names: Iterable[str]) -> None:
        for name in model_names:
            spec = get_model(name)
            for variant in spec.variants:
                self.engine_for(variant, spec)

    def _confirming_mask(self, model_name: str, preview: np.ndarray, targets: tuple[str, ...]) -> np.ndarray:
        spec = get_model(model_name)
        variant = spec.variant_for(preview.shape[1], preview.shape[0])
        confirming = segment(self.engine_for(variant, spec), preview, spec, variant, targets, with_probability=False)
        return np.logical_or.reduce(list(confirming.class_masks.values()))

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
        clock = _StageClock(deadline, limit_s)
        spec = get_model(params.model)
        with clock.stage("decode"):
            decoded = load_image(data, self.settings)
            backdrop_image = None
            if params.effect is Effect.REPLACE:
                if background is None:
                    raise ParameterError("background", "effect replace needs a background image")
                backdrop_image = load_image(background, self.settings).bgr
            output_format = params.output_format(decoded.info.format)
        image = decoded.bgr
        height, width = image.shape[:2]

        with clock.stage("segment"):
            preview = make_preview(image, PREVIEW_LONG_SIDE)
            variant = spec.variant_for(width, height)
            segmentation = segment(self.engine_for(variant, spec), preview, spec, variant, params.targets)
            evidence = None
            if spec.confirm_with and self.settings.confirm_targets:
                evidence = self._confirming_mask(spec.confirm_with, preview, params.targets)

        with clock.stage("refine"):
            probability = segmentation.probability
            probability = clean_probability(probability, evidence=evidence, drop_far_islands=not params.keep_islands)
            kept = probability >= 0.5
            detected = {
                target: round(float(np.count_nonzero(mask & kept)) / mask.size, 4)
                for target, mask in segmentation.class_masks.items()
            }
            found = sum(detected.values()) >= FOUND_MIN_COVERAGE
            if not found:
                probability = np.zeros_like(probability)  # nothing found: the whole image is background
            alpha = refine_alpha(probability, image, preview, ops=self.pixels)

        with clock.stage("effect"):
            rendered = apply_effect(
                image,
                preview,
                alpha.full,
                alpha.preview,
                params,
                input_alpha=decoded.alpha,
                background=backdrop_image,
                ops=self.pixels,
            )

        with clock.stage("encode"):
            encoded = encode_image(rendered, output_format, params.quality)
            if params.keep_metadata and decoded.info.exif:
                encoded = attach_exif(encoded, output_format, upright_exif(decoded.info.exif))

        return ProcessResult(
            data=encoded,
            format=output_format,
            width=width,
            height=height,
            model=f"{spec.name}/{variant.name}",
            detected=detected,
            found=found,
            timings_ms=clock.timings_ms,
        )
