"""The image pipeline: decode → segment → refine → effect → encode.

``Pipeline`` holds the loaded models (one engine per model file, per process, reused across images);
every stage is a plain function over numpy arrays in this package's modules.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from backdrop.engines import Engine, MultiOutputEngine, load_engine
from backdrop.engines.batching import BatchingEngine
from backdrop.errors import JobTimeout, ParameterError
from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import (
    AUTO_TARGET,
    DEFAULT_GENERAL_MODEL,
    PEOPLE_MODELS,
    DetectorSpec,
    ModelSpec,
    ModelVariant,
    PoseSpec,
    get_model,
    register_frozen_deeplab,
)
from backdrop.params import Effect, JobParams, Keep, OutputFormat, Subjects
from backdrop.pipeline.choice import choose_regions, settle_subjects
from backdrop.pipeline.effects import apply_effect, onto_background
from backdrop.pipeline.framing import outside_zeroed, place, plan_frame, region_of_interest, subject_box
from backdrop.pipeline.geometry import make_preview
from backdrop.pipeline.imageio import encode_image, load_image
from backdrop.pipeline.metadata import attach_exif, upright_exif
from backdrop.pipeline.people import (
    Detection,
    Person,
    Pose,
    Region,
    anchor_centers,
    bodies_of,
    detector_input,
    find_people,
    full_body_view,
    on_grid,
    pose_input,
    read_detections,
    read_pose,
    regions_with_people,
    separate_people,
    unconfirmed_regions,
)
from backdrop.pipeline.pixels import pixel_ops
from backdrop.pipeline.refine import Alpha, clean_probability, refine_alpha
from backdrop.pipeline.segment import Segmentation, probability_over_views, segment, segment_many
from backdrop.pipeline.subject import (
    WORK_LONG_SIDE,
    Box,
    held_objects,
    look_closer,
    merge_looks,
    needs_scan,
    plan_looks,
    scan_tiles,
    work_size,
)
from backdrop.settings import Settings

T = TypeVar("T")
# Long side of the shared reduced copy that model input, guided-filter solve and blur are made from.
PREVIEW_LONG_SIDE = 1024
# A target covering less than this share of the image counts as not found.
FOUND_MIN_COVERAGE = 0.001
STAGES = ("decode", "segment", "refine", "effect", "encode")
# An object counts as held when it comes this close (model pixels) to the subject.
HELD_REACH_MODEL_PIXELS = 1
# keep=targets takes an object out of the person only where the naming model's logit for it beats the
# target's by this much (about 0.88 against 0.12 between the two): a real cat in the arms scores around 3.6,
# an orange hoodie the model half took for a bottle 0.8.
OBJECT_SURE_MARGIN = 2.0


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
class SubjectMap:
    """What the segmentation stage found: ``probability`` (work resolution, float32 0-1) that a pixel is
    the subject, the share of the photo each target covers, the model and variant of the first pass, how
    many closer looks were taken, and the people found and chosen. ``model_pixel``: the size of one
    first-pass model pixel in preview pixels (how coarse the first pass saw the photo)."""

    probability: np.ndarray
    detected: dict[str, float]
    model: str
    model_pixel: float
    looks: int = 0
    # The people found (preview pixels) and which of them are subjects (person targets only).
    people: tuple[Person, ...] = ()
    subjects: tuple[bool, ...] = ()


class FrameHistory(Protocol):
    """The memory of a sequence of frames (``backdrop.video.temporal.TemporalState``)."""

    def recall(self, step: str) -> Any | None:
        """What ``step`` found on a recent frame, or None when it is due again."""
        ...

    def remember(self, step: str, value: Any) -> None: ...

    def previous(self) -> np.ndarray | None:
        """The last frame's smoothed probability (None before the first frame)."""
        ...

    def smooth(self, probability: np.ndarray, preview: np.ndarray) -> np.ndarray:
        """This frame's probability smoothed with the sequence's; moves on to the next frame."""
        ...

    def steady(self, matte: np.ndarray, image: np.ndarray) -> np.ndarray:
        """This frame's full-resolution matte steadied where the picture stood still."""
        ...


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

    def people_engine(self, spec: DetectorSpec | PoseSpec) -> MultiOutputEngine:
        """The engine of a people model (always LiteRT: these models are small, and their sparse weights
        are not among the ops the TensorFlow engine rebuilds)."""
        name = spec.file.file_name
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                path = resolve_model_file(spec.file, self.settings)
                engine = load_engine("litert", path, threads=self.settings.threads)
                self._engines[name] = engine
                self.engine_loads += 1
        return engine  # type: ignore[return-value]

    def preload(self, model_names: Iterable[str]) -> None:
        for name in model_names:
            spec = get_model(name)
            for variant in spec.variants:
                self.engine_for(variant, spec)
            if self.settings.full_body and "person" in spec.classes:
                for people_spec in PEOPLE_MODELS.values():
                    self.people_engine(people_spec)

    def detect(self, spec: DetectorSpec, image: np.ndarray) -> list[Detection]:
        """What a detector finds in the BGR ``image`` (image pixels). A large image is first shrunk by a
        whole factor to at most four times the detector's input (cheap; closer to the input, a person at
        the edge of being found was seen differently)."""
        reduced = make_preview(image, 4 * spec.input_size)
        tensor, letterbox = detector_input(reduced, spec)
        boxes, scores = self.people_engine(spec).run_outputs(tensor[None])[:2]
        found = read_detections(boxes[0], scores[0], spec, _anchors(spec), letterbox)
        factor = image.shape[1] / reduced.shape[1]
        return found if reduced is image else [detection.scaled(factor) for detection in found]

    def look_at(self, image: np.ndarray, region: Region) -> Pose:
        """The pose landmark model on one region of the BGR ``image``."""
        spec = _pose_spec()
        landmarks, presence, segmentation = self.people_engine(spec).run_outputs(pose_input(image, region, spec)[None])[
            :3
        ]
        return read_pose(landmarks[0], presence[0], segmentation[0], region, spec)

    def find_people(
        self, preview: np.ndarray, history: FrameHistory | None = None, hints: list[Region] | None = None
    ) -> tuple[list[Person], bool]:
        """The people in ``preview`` (faces, bodies, their full-body segmentation: see ``people``), and
        whether the detectors ran for them. ``hints``: regions where someone may be whom the detectors
        miss. With a ``history``, the detectors run every few frames and the landmark model follows the
        people between: only those ``hints`` found, unless ``BACKDROP_CLIP_FULL_BODY`` (a full-body pass
        per person per frame costs a clip or a live session about a third of its speed on a CPU)."""
        detectors = _detectors_key(preview)
        detections = history.recall(detectors) if history is not None else None
        tracked = history.recall(_tracked_key(preview)) if history is not None else None
        if detections is not None and tracked is None:
            detections = None  # the last frame's people are gone from memory: look afresh
        people, found = find_people(
            preview,
            _pose_spec(),
            lambda image: self.detect(_face_spec(), image),
            lambda image: self.detect(_pose_detector_spec(), image),
            self.look_at,
            tracked=tracked,
            detections=detections,
            hints=hints,
            look_at_everyone=history is None or self.settings.clip_full_body,
        )
        if history is not None and detections is None:
            history.remember(detectors, found)
        return people, detections is None

    def _segment(
        self,
        spec: ModelSpec,
        image: np.ndarray,
        targets: tuple[str, ...],
        *,
        with_probability: bool = True,
        views: bool = False,
    ) -> Segmentation:
        """One model pass over ``image`` with the variant that fits its aspect ratio; with ``views``, a
        one-class model (``selfie``) passes over three views of it (see ``probability_over_views``)."""

        if spec.output != "probability" or not views:
            variant = spec.variant_for(image.shape[1], image.shape[0])
            engine = self.engine_for(variant, spec)
            return segment(engine, image, spec, variant, targets, with_probability=with_probability)

        def probabilities_of(images: list[np.ndarray]) -> list[np.ndarray]:
            """Views that fit the same variant run as one batch."""
            by_variant: dict[str, list[int]] = {}
            for index, view in enumerate(images):
                by_variant.setdefault(spec.variant_for(view.shape[1], view.shape[0]).name, []).append(index)
            probabilities: list[np.ndarray] = [np.empty(0)] * len(images)
            for variant in spec.variants:
                indexes = by_variant.get(variant.name, [])
                if indexes:
                    engine = self.engine_for(variant, spec)
                    found = segment_many(engine, [images[i] for i in indexes], spec, variant, targets)
                    for index, segmentation in zip(indexes, found, strict=True):
                        probabilities[index] = segmentation.probability
            return probabilities

        probability = probability_over_views(probabilities_of, image)
        return Segmentation(probability, {spec.labels[0]: probability >= 0.5})

    def _whole_and_tiles(
        self,
        spec: ModelSpec,
        preview: np.ndarray,
        small: np.ndarray,
        targets: tuple[str, ...],
        work_w: int,
        work_h: int,
        views: bool,
    ) -> tuple[Segmentation, Segmentation | None, np.ndarray, dict[str, np.ndarray]]:
        """The first pass over the whole preview (and the confirming model's, where the first knows one
        class), as the work-resolution probability and class masks; where every subject it found is
        small, tiles of the preview are passed over too and fill in what the whole-photo pass missed."""
        confirm_spec = get_model(spec.confirm_with) if spec.confirm_with and self.settings.confirm_targets else None

        def passes(image: np.ndarray) -> tuple[Segmentation, Segmentation | None]:
            first = self._segment(spec, image, targets, views=views)
            confirming = self._segment(confirm_spec, image, targets, with_probability=False) if confirm_spec else None
            return first, confirming

        # The whole-photo passes read the small copy (the models' inputs are smaller still); the tiles
        # below are cut from the preview itself.
        first, confirming = passes(small)
        knowing = confirming or first
        probability = cv2.resize(first.probability, (work_w, work_h), interpolation=cv2.INTER_LINEAR)
        class_masks = {t: _resized_mask(m, work_w, work_h) for t, m in knowing.class_masks.items()}
        found = (probability >= 0.5) | np.logical_or.reduce(list(class_masks.values()))
        if not (self.settings.closer_look and needs_scan(found)):
            return first, confirming, probability, class_masks
        sx, sy = preview.shape[1] / work_w, preview.shape[0] / work_h
        tiles = []
        for tile in scan_tiles(work_w, work_h):
            region = tile.scaled(sx, sy)
            tile_first, tile_confirming = passes(
                np.ascontiguousarray(preview[region.y0 : region.y1, region.x0 : region.x1])
            )
            size = (tile.width, tile.height)
            tiles.append((tile, cv2.resize(tile_first.probability, size, interpolation=cv2.INTER_LINEAR)))
            for target, mask in (tile_confirming or tile_first).class_masks.items():
                class_masks[target][tile.y0 : tile.y1, tile.x0 : tile.x1] |= _resized_mask(mask, *size)
        return first, confirming, merge_looks(probability, tiles), class_masks

    def find_subject(
        self,
        preview: np.ndarray,
        params: JobParams,
        history: FrameHistory | None = None,
        small: np.ndarray | None = None,
    ) -> SubjectMap:
        """The targets' probability at work resolution: a first pass over the whole preview (and over tiles
        of it when every subject is small), confirmed by a second model where the first knows only one
        class, a closer look at each subject region, then cleaned (unconfirmed regions, far islands, haze)
        and what the subject holds kept or left out as ``params.keep`` says.

        With a ``history`` (frames of one clip or live session), the confirming pass, the scan and the plan
        of where to look closer are reused for a few frames, and the result is smoothed over time.

        ``targets=auto``: people if the person models find any, else whatever DeepLab knows that is there
        (the subject choice then keeps the most prominent of it)."""
        if params.targets == (AUTO_TARGET,):
            people = self.find_subject(preview, replace(params, targets=("person",)), history, small)
            if sum(people.detected.values()) >= FOUND_MIN_COVERAGE:
                return people
            others = tuple(c for c in get_model(DEFAULT_GENERAL_MODEL).classes if c != "person")
            things = self.find_subject(
                preview, replace(params, targets=others, model=DEFAULT_GENERAL_MODEL), history, small
            )
            return replace(things, detected={t: share for t, share in things.detected.items() if share > 0})
        spec = get_model(params.model)
        targets = params.targets
        height, width = preview.shape[:2]
        work_w, work_h = work_size(width, height)
        if small is None:  # for the whole-frame passes and the smoothing: shrunk by a whole factor (cheap)
            small = make_preview(preview, WORK_LONG_SIDE)
        # Remembered per frame size: a camera that changes resolution starts afresh.
        memory = f"found {work_w}x{work_h} {params.targets} {params.model} {params.keep}"
        # Several views of a still (see probability_over_views); a clip's frames get one each, for speed,
        # and the smoothing over time steadies them instead.
        views = history is None and self.settings.segment_views
        recalled = history.recall(memory) if history is not None else None
        if recalled is None:
            first, confirming, probability, class_masks = self._whole_and_tiles(
                spec, preview, small, targets, work_w, work_h, views
            )
            looks: list[Box] = []
            if self.settings.closer_look:
                looks = plan_looks((probability >= 0.5) | np.logical_or.reduce(list(class_masks.values())))
            if history is not None:
                history.remember(memory, (confirming, class_masks, looks))
        else:  # a frame between refreshes: only the job's own model runs on the whole frame
            confirming, class_masks, looks = recalled
            first = self._segment(spec, small, targets)
            probability = cv2.resize(first.probability, (work_w, work_h), interpolation=cv2.INTER_LINEAR)
            if confirming is None:  # the job's model names every class: its own masks are current
                class_masks = {t: _resized_mask(m, work_w, work_h) for t, m in first.class_masks.items()}
        any_target = np.logical_or.reduce(list(class_masks.values()))
        confirmed = any_target
        if history is not None and (last := history.previous()) is not None and last.shape == any_target.shape:
            # What the last frame kept was confirmed: between refreshes the confirming masks are older,
            # and someone walking moves off them.
            any_target = any_target | (last >= 0.5)
        probability = look_closer(
            probability, looks, preview, lambda crop: self._segment(spec, crop, targets, views=views).probability
        )
        people: list[Person] = []
        fresh, with_people = True, "person" in targets and self.settings.full_body
        to_work = work_w / width  # work pixels per preview pixel
        if with_people:
            # Small people the confirming model cannot see (a child far off) get a landmark pass instead.
            hints = unconfirmed_regions(probability, looks, any_target, to_work) if confirming is not None else []
            people, fresh = self.find_people(preview, history, hints)
            people = [on_grid(person, to_work, work_w, work_h) for person in people]
            any_target = any_target | bodies_of(people)
        scale = work_w / first.probability.shape[1]  # work pixels per first-pass model pixel
        probability = clean_probability(
            probability,
            evidence=any_target if confirming is not None else None,
            drop_far_islands=not params.keep_islands,
            scale=scale,
        )
        knowing = confirming or first
        if knowing.labels is not None:
            probability = _objects_kept_or_not(
                probability, knowing, knowing_spec(spec), params, scale, first if confirming else None
            )
        choice = None
        if with_people:
            probability = full_body_view(probability, people)
            # DeepLab's own person mask (the confirming pass), without the people's bodies added to it.
            others_seen = confirmed if confirming is not None else None
            probability = separate_people(probability, people, to_work, margin=2 * scale, others_seen=others_seen)
            gray = cv2.cvtColor(preview, cv2.COLOR_BGR2GRAY)
            probability, people, choice = settle_subjects(
                probability, people, gray, to_work, params.subjects, fresh=fresh
            )
            if history is not None:
                chosen = zip(people, choice.subjects, strict=True)
                tracked = [replace(person, segmentation=None, was_subject=subject) for person, subject in chosen]
                history.remember(_tracked_key(preview), tracked)
            if people:  # what the person models found counts as a person, as DeepLab's mask does
                seen = regions_with_people(probability >= 0.5, people, to_work)
                class_masks = {**class_masks, "person": class_masks.get("person", False) | seen}
        if params.subjects is Subjects.MAIN and "person" not in targets:
            chosen = choose_regions(probability >= 0.5, params.subjects)
            probability = np.where(chosen | (probability < 0.5), probability, 0.0).astype(np.float32)
        if history is not None:
            probability = history.smooth(probability, small)
        kept = probability >= 0.5
        detected = {t: round(float(np.count_nonzero(m & kept)) / m.size, 4) for t, m in class_masks.items()}
        variant = spec.variant_for(width, height)
        return SubjectMap(
            probability=probability,
            detected=detected,
            model=f"{spec.name}/{variant.name}",
            model_pixel=width / first.probability.shape[1],
            looks=len(looks),
            people=tuple(people),
            subjects=choice.subjects if choice is not None else (),
        )

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
        ``history`` is the memory of the sequence the frame belongs to (see ``find_subject``)."""
        clock = clock or StageClock()
        with clock.stage("segment"):
            preview = make_preview(image, PREVIEW_LONG_SIDE)
            small = make_preview(preview, WORK_LONG_SIDE)
            subject = self.find_subject(preview, params, history, small)
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


@cache
def _anchors(spec: DetectorSpec) -> np.ndarray:
    return anchor_centers(spec.anchors)


def _face_spec() -> DetectorSpec:
    return PEOPLE_MODELS["face-detector"]  # type: ignore[return-value]


def _pose_detector_spec() -> DetectorSpec:
    return PEOPLE_MODELS["pose-detector"]  # type: ignore[return-value]


def _pose_spec() -> PoseSpec:
    return PEOPLE_MODELS["pose-landmarks"]  # type: ignore[return-value]


def _detectors_key(preview: np.ndarray) -> str:
    """What a sequence remembers of its detectors' last run (per frame size: a camera may change it)."""
    return f"people {preview.shape[1]}x{preview.shape[0]}"


def _tracked_key(preview: np.ndarray) -> str:
    """What a sequence remembers of the last frame's people."""
    return f"{_detectors_key(preview)} tracked"


def _resized_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def knowing_spec(spec: ModelSpec) -> ModelSpec:
    """The model whose labels name every class: the confirming one, where the job's model knows only one."""
    return get_model(spec.confirm_with) if spec.confirm_with else spec


def _objects_kept_or_not(
    probability: np.ndarray,
    knowing: Segmentation,
    spec: ModelSpec,
    params: JobParams,
    scale: float,
    person_only_pass: Segmentation | None,
) -> np.ndarray:
    """What the subject holds, rides or sits on, decided by ``params.keep`` rather than by accident.

    Objects are the pixels ``spec`` (a model that names many classes) gives to a class that is neither a
    target nor the background. ``keep=held``: the held ones join the subject. ``keep=targets``: where a
    person-only first pass took an object for part of the person (the chair sat on, the cat in the arms),
    the object's inner pixels are background where ``spec`` is sure of it (a clear logit margin over the
    target: a hoodie it half took for a bottle stays the person)."""
    labels = knowing.labels
    assert labels is not None
    height, width = probability.shape
    others = [
        i for i, label in enumerate(spec.labels) if label != spec.background_label and label not in params.targets
    ]
    objects = _resized_mask(np.isin(labels, others), width, height)
    if not objects.any():
        return probability
    foreground = None
    if person_only_pass is not None:
        foreground = _resized_mask(person_only_pass.probability >= 0.5, width, height)
    if params.keep is Keep.HELD:
        reach = max(1, round(HELD_REACH_MODEL_PIXELS * scale))
        held = held_objects(objects, probability >= 0.5, reach=reach, foreground=foreground)
        return np.maximum(probability, held.astype(np.float32))
    if foreground is None:
        return probability  # a model that names every class already left other objects out
    sure = objects
    if knowing.margin is not None:
        sure = objects & (_resized(knowing.margin, width, height) >= OBJECT_SURE_MARGIN)
    # The inner pixels only: the two models' edges disagree by a model pixel or so.
    edge = max(1, round(scale))
    inner = cv2.erode(sure.astype(np.uint8), np.ones((2 * edge + 1, 2 * edge + 1), np.uint8)) > 0
    return np.where(inner, 0.0, probability).astype(np.float32)


def _resized(values: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(values.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
