"""Finding the subject, as named steps: what the whole frame shows (the model's views, tiles where every
subject is small, a confirming model, closer looks) → the people in it (and an upright look at each one
lying down) → each person's region → who of them is a subject → the subject's mask. Each step is a
module of pure functions (``segment``, ``subject``, ``people``, ``regions``, ``choice``, ``refine``,
``objects``); this module runs the models for them and passes each step's result on. The rules and the
numbers that chose them: docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import cv2
import numpy as np

from backdrop.models.registry import AUTO_TARGET, DEFAULT_GENERAL_MODEL, ModelSpec, get_model
from backdrop.params import JobParams, Subjects
from backdrop.pipeline.choice import Choice, choose_regions, settle_subjects
from backdrop.pipeline.geometry import make_preview
from backdrop.pipeline.loaded import LoadedModels, face_spec, pose_detector_spec, pose_spec
from backdrop.pipeline.objects import knowing_spec, objects_kept_or_not, resized_mask
from backdrop.pipeline.people import Person, Region, find_people, on_grid, unconfirmed_regions, upright_crop
from backdrop.pipeline.refine import clean_probability
from backdrop.pipeline.regions import (
    bodies_of,
    full_body_view,
    merge_upright_looks,
    regions_with_people,
    separate_people,
    turned_from_upright,
)
from backdrop.pipeline.segment import Segmentation
from backdrop.pipeline.subject import (
    WORK_LONG_SIDE,
    Box,
    look_closer,
    merge_looks,
    needs_scan,
    plan_looks,
    scan_tiles,
    work_size,
)
from backdrop.settings import Settings

# A target covering less than this share of the image counts as not found.
FOUND_MIN_COVERAGE = 0.001
# An upright look's crop is the region's own size in preview pixels, at most this (twice the selfie
# model's input: finer gains nothing).
UPRIGHT_LOOK_MAX_SIDE = 512


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
class WorkGrid:
    """The frame at the sizes the steps work at: ``preview`` (what people are found on and crops are cut
    from), ``small`` (the whole-frame passes' input, shrunk by a whole factor) and the work grid every
    probability and mask is laid on."""

    preview: np.ndarray
    small: np.ndarray
    width: int  # work pixels
    height: int

    @classmethod
    def of(cls, preview: np.ndarray, small: np.ndarray | None = None) -> WorkGrid:
        work_w, work_h = work_size(preview.shape[1], preview.shape[0])
        return cls(preview, make_preview(preview, WORK_LONG_SIDE) if small is None else small, work_w, work_h)

    @property
    def to_work(self) -> float:
        """Work pixels per preview pixel."""
        return self.width / self.preview.shape[1]

    def resized(self, values: np.ndarray) -> np.ndarray:
        return cv2.resize(values, (self.width, self.height), interpolation=cv2.INTER_LINEAR)

    def masks(self, class_masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {t: resized_mask(m, self.width, self.height) for t, m in class_masks.items()}


@dataclass(frozen=True)
class WholeFrame:
    """What the passes over the whole frame saw: the job's model's own pass, the confirming model's (where
    the first knows one class), the work-resolution probability (tiles merged in) and class masks, and
    the plan of where to look closer."""

    first: Segmentation
    confirming: Segmentation | None
    probability: np.ndarray
    class_masks: dict[str, np.ndarray]
    looks: list[Box]

    @property
    def knowing(self) -> Segmentation:
        """The pass whose labels name the classes."""
        return self.confirming or self.first

    @property
    def targets_seen(self) -> np.ndarray:
        """Where the class masks see any target (the confirming model's, where there is one)."""
        return _any_target(self.class_masks)


class SubjectFinder:
    """Runs the steps of finding the subject with the models of one process."""

    def __init__(self, models: LoadedModels, settings: Settings) -> None:
        self.models, self.settings = models, settings

    def find(
        self,
        preview: np.ndarray,
        params: JobParams,
        history: FrameHistory | None = None,
        small: np.ndarray | None = None,
    ) -> SubjectMap:
        """The targets' probability at work resolution: a first pass over the whole preview (and over tiles
        of it when every subject is small), confirmed by a second model where the first knows only one
        class, a closer look at each subject region, then cleaned (unconfirmed regions, far islands, haze),
        what the subject holds kept or left out as ``params.keep`` says, shaped by each person found, and
        the people who are not subjects let go.

        With a ``history`` (frames of one clip or live session), the confirming pass, the scan and the plan
        of where to look closer are reused for a few frames, and the result is smoothed over time.

        ``targets=auto``: people if the person models find any, else whatever DeepLab knows that is there
        (the subject choice then keeps the most prominent of it)."""
        if params.targets == (AUTO_TARGET,):
            return self._people_or_things(preview, params, history, small)
        spec = get_model(params.model)
        grid = WorkGrid.of(preview, small)
        # Several views of a still (see probability_over_views); a clip's frames get one each, for speed,
        # and the smoothing over time steadies them instead.
        views = history is None and self.settings.segment_views
        whole = self._whole_frame(spec, params, grid, history, views)
        evidence = whole.targets_seen
        if history is not None and (last := history.previous()) is not None and last.shape == evidence.shape:
            # What the last frame kept was confirmed: between refreshes the confirming masks are older,
            # and someone walking moves off them.
            evidence = evidence | (last >= 0.5)
        probability = look_closer(
            whole.probability,
            whole.looks,
            preview,
            lambda crop: self.models.segment(spec, crop, params.targets, views=views).probability,
        )
        with_people = "person" in params.targets and self.settings.full_body
        people: list[Person] = []
        fresh = True
        if with_people:
            people, fresh = self._people_on_grid(grid, probability, whole, evidence, history)
            probability = self._upright_looks(probability, people, grid, spec, params.targets, views)
            evidence = evidence | bodies_of(people)
        scale = grid.width / whole.first.probability.shape[1]  # work pixels per first-pass model pixel
        probability = self._cleaned(probability, whole, evidence, spec, params, scale)
        choice = None
        if with_people:
            probability = self._shaped_by_people(probability, whole, people, grid, scale)
            probability, people, choice = self._chosen(probability, people, grid, params, history, fresh)
        return self._mask(probability, whole, people, choice, grid, spec, params, history)

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
            pose_spec(),
            lambda image: self.models.detect(face_spec(), image),
            lambda image: self.models.detect(pose_detector_spec(), image),
            self.models.look_at,
            tracked=tracked,
            detections=detections,
            hints=hints,
            look_at_everyone=history is None or self.settings.clip_full_body,
        )
        if history is not None and detections is None:
            history.remember(detectors, found)
        return people, detections is None

    def _people_or_things(
        self, preview: np.ndarray, params: JobParams, history: FrameHistory | None, small: np.ndarray | None
    ) -> SubjectMap:
        """``targets=auto``: people if any are found, else the other classes DeepLab knows."""
        people = self.find(preview, replace(params, targets=("person",)), history, small)
        if sum(people.detected.values()) >= FOUND_MIN_COVERAGE:
            return people
        others = tuple(c for c in get_model(DEFAULT_GENERAL_MODEL).classes if c != "person")
        things = self.find(preview, replace(params, targets=others, model=DEFAULT_GENERAL_MODEL), history, small)
        return replace(things, detected={t: share for t, share in things.detected.items() if share > 0})

    # Step 1: what the whole frame shows.
    def _whole_frame(
        self, spec: ModelSpec, params: JobParams, grid: WorkGrid, history: FrameHistory | None, views: bool
    ) -> WholeFrame:
        """The whole-frame passes and the plan of closer looks; in a sequence, the confirming pass, the
        scan and the plan are recalled between refreshes, and only the job's own model runs."""
        # Remembered per frame size: a camera that changes resolution starts afresh.
        memory = f"found {grid.width}x{grid.height} {params.targets} {params.model} {params.keep}"
        recalled = history.recall(memory) if history is not None else None
        if recalled is None:
            whole = self._passes_over(spec, grid, params.targets, views)
            if history is not None:
                history.remember(memory, (whole.confirming, whole.class_masks, whole.looks))
            return whole
        confirming, class_masks, looks = recalled
        first = self.models.segment(spec, grid.small, params.targets)
        if confirming is None:  # the job's model names every class: its own masks are current
            class_masks = grid.masks(first.class_masks)
        return WholeFrame(first, confirming, grid.resized(first.probability), class_masks, looks)

    def _passes_over(self, spec: ModelSpec, grid: WorkGrid, targets: tuple[str, ...], views: bool) -> WholeFrame:
        """The first pass over the whole preview (and the confirming model's, where the first knows one
        class), as the work-resolution probability and class masks; where every subject it found is
        small, tiles of the preview are passed over too and fill in what the whole-photo pass missed."""
        confirm_spec = get_model(spec.confirm_with) if spec.confirm_with and self.settings.confirm_targets else None

        def passes(image: np.ndarray) -> tuple[Segmentation, Segmentation | None]:
            first = self.models.segment(spec, image, targets, views=views)
            confirming = (
                self.models.segment(confirm_spec, image, targets, with_probability=False) if confirm_spec else None
            )
            return first, confirming

        # The whole-photo passes read the small copy (the models' inputs are smaller still); the tiles
        # below are cut from the preview itself.
        first, confirming = passes(grid.small)
        probability = grid.resized(first.probability)
        class_masks = grid.masks((confirming or first).class_masks)
        if self.settings.closer_look and needs_scan(_anything_found(probability, class_masks)):
            preview = grid.preview
            sx, sy = preview.shape[1] / grid.width, preview.shape[0] / grid.height
            tiles = []
            for tile in scan_tiles(grid.width, grid.height):
                region = tile.scaled(sx, sy)
                tile_first, tile_confirming = passes(
                    np.ascontiguousarray(preview[region.y0 : region.y1, region.x0 : region.x1])
                )
                size = (tile.width, tile.height)
                tiles.append((tile, cv2.resize(tile_first.probability, size, interpolation=cv2.INTER_LINEAR)))
                for target, mask in (tile_confirming or tile_first).class_masks.items():
                    class_masks[target][tile.y0 : tile.y1, tile.x0 : tile.x1] |= resized_mask(mask, *size)
            probability = merge_looks(probability, tiles)
        looks: list[Box] = []
        if self.settings.closer_look:
            looks = plan_looks(_anything_found(probability, class_masks))
        return WholeFrame(first, confirming, probability, class_masks, looks)

    # Step 2: the people in it.
    def _people_on_grid(
        self,
        grid: WorkGrid,
        probability: np.ndarray,
        whole: WholeFrame,
        evidence: np.ndarray,
        history: FrameHistory | None,
    ) -> tuple[list[Person], bool]:
        """The people found, their segmentations on the work grid; and whether the detectors ran."""
        # Small people the confirming model cannot see (a child far off) get a landmark pass instead.
        hints = []
        if whole.confirming is not None:
            hints = unconfirmed_regions(probability, whole.looks, evidence, grid.to_work)
        people, fresh = self.find_people(grid.preview, history, hints)
        return [on_grid(person, grid.to_work, grid.width, grid.height) for person in people], fresh

    def _upright_looks(
        self,
        probability: np.ndarray,
        people: list[Person],
        grid: WorkGrid,
        spec: ModelSpec,
        targets: tuple[str, ...],
        views: bool,
    ) -> np.ndarray:
        """A person turned from upright (lying, seen from above; see ``turned_from_upright``) gets a pass
        of the job's model on their body's region turned upright, blended in as a closer look is."""
        looks = []
        for region in turned_from_upright(people):
            side = max(16, min(UPRIGHT_LOOK_MAX_SIDE, round(region.size)))
            crop = upright_crop(grid.preview, region, side)
            found = self.models.segment(spec, crop, targets, views=views).probability
            looks.append((region, cv2.resize(found, (side, side), interpolation=cv2.INTER_LINEAR)))
        return merge_upright_looks(probability, looks, grid.to_work) if looks else probability

    def _cleaned(
        self,
        probability: np.ndarray,
        whole: WholeFrame,
        evidence: np.ndarray,
        spec: ModelSpec,
        params: JobParams,
        scale: float,
    ) -> np.ndarray:
        """Regions nothing else confirms, far islands and haze taken out (see ``clean_probability``); what
        the subject holds kept or left out (see ``objects``)."""
        probability = clean_probability(
            probability,
            evidence=evidence if whole.confirming is not None else None,
            drop_far_islands=not params.keep_islands,
            scale=scale,
        )
        if whole.knowing.labels is None:
            return probability
        person_only_pass = whole.first if whole.confirming is not None else None
        return objects_kept_or_not(probability, whole.knowing, knowing_spec(spec), params, scale, person_only_pass)

    # Step 3: each person's region.
    def _shaped_by_people(
        self, probability: np.ndarray, whole: WholeFrame, people: list[Person], grid: WorkGrid, scale: float
    ) -> np.ndarray:
        """Each person's full-body segmentation added where it is sure, and the background between two
        people taken out, except where DeepLab's own person mask (without the people's bodies added to
        it) sees someone nobody detected."""
        probability = full_body_view(probability, people)
        others_seen = whole.targets_seen if whole.confirming is not None else None
        return separate_people(probability, people, grid.to_work, margin=2 * scale, others_seen=others_seen)

    # Step 4: who of them is a subject.
    def _chosen(
        self,
        probability: np.ndarray,
        people: list[Person],
        grid: WorkGrid,
        params: JobParams,
        history: FrameHistory | None,
        fresh: bool,
    ) -> tuple[np.ndarray, list[Person], Choice]:
        """The people who are not subjects let go (see ``choice``); a sequence remembers who was one."""
        gray = cv2.cvtColor(grid.preview, cv2.COLOR_BGR2GRAY)
        probability, people, choice = settle_subjects(
            probability, people, gray, grid.to_work, params.subjects, fresh=fresh
        )
        if history is not None:
            chosen = zip(people, choice.subjects, strict=True)
            tracked = [replace(person, segmentation=None, was_subject=subject) for person, subject in chosen]
            history.remember(_tracked_key(grid.preview), tracked)
        return probability, people, choice

    # Step 5: the subject's mask.
    def _mask(
        self,
        probability: np.ndarray,
        whole: WholeFrame,
        people: list[Person],
        choice: Choice | None,
        grid: WorkGrid,
        spec: ModelSpec,
        params: JobParams,
        history: FrameHistory | None,
    ) -> SubjectMap:
        """The probability as the subject map: for targets other than people the main region alone (with
        ``subjects=main``), smoothed over a sequence, and the share of the frame each target covers."""
        class_masks = whole.class_masks
        if people:  # what the person models found counts as a person, as DeepLab's mask does
            seen = regions_with_people(probability >= 0.5, people, grid.to_work)
            class_masks = {**class_masks, "person": class_masks.get("person", False) | seen}
        if params.subjects is Subjects.MAIN and "person" not in params.targets:
            chosen = choose_regions(probability >= 0.5, params.subjects)
            probability = np.where(chosen | (probability < 0.5), probability, 0.0).astype(np.float32)
        if history is not None:
            probability = history.smooth(probability, grid.small)
        kept = probability >= 0.5
        detected = {t: round(float(np.count_nonzero(m & kept)) / m.size, 4) for t, m in class_masks.items()}
        height, width = grid.preview.shape[:2]
        return SubjectMap(
            probability=probability,
            detected=detected,
            model=f"{spec.name}/{spec.variant_for(width, height).name}",
            model_pixel=width / whole.first.probability.shape[1],
            looks=len(whole.looks),
            people=tuple(people),
            subjects=choice.subjects if choice is not None else (),
        )


def _any_target(class_masks: dict[str, np.ndarray]) -> np.ndarray:
    return np.logical_or.reduce(list(class_masks.values()))


def _anything_found(probability: np.ndarray, class_masks: dict[str, np.ndarray]) -> np.ndarray:
    """Where the model's probability or any class mask sees a target: what the scan and the looks plan by."""
    return (probability >= 0.5) | _any_target(class_masks)


def _detectors_key(preview: np.ndarray) -> str:
    """What a sequence remembers of its detectors' last run (per frame size: a camera may change it)."""
    return f"people {preview.shape[1]}x{preview.shape[0]}"


def _tracked_key(preview: np.ndarray) -> str:
    """What a sequence remembers of the last frame's people."""
    return f"{_detectors_key(preview)} tracked"
