"""The models a process has loaded: one engine per model file, per process, reused across images, and
the calls that run them (a segmentation pass, a detector, the pose landmark model)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import cache

import numpy as np

from backdrop.engines import Engine, MultiOutputEngine, load_engine
from backdrop.engines.batching import BatchingEngine
from backdrop.models.fetch import resolve_model_file
from backdrop.models.registry import PEOPLE_MODELS, DetectorSpec, ModelSpec, ModelVariant, PoseSpec, get_model
from backdrop.pipeline.geometry import make_preview
from backdrop.pipeline.people import (
    Detection,
    Pose,
    Region,
    anchor_centers,
    detector_input,
    pose_input,
    read_detections,
    read_pose,
)
from backdrop.pipeline.segment import Segmentation, probability_over_views, segment, segment_many
from backdrop.settings import Settings


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


class LoadedModels:
    """Loads each model file once (lazily, or up front with :meth:`preload`) and runs it."""

    def __init__(self, settings: Settings, on_batch: Callable[[int], None] | None = None) -> None:
        """``on_batch(n)`` is told the size of every segmentation model invocation (for metrics)."""
        self.settings = settings
        self._on_batch = on_batch
        self._engines: dict[str, Engine] = {}
        self.engine_loads = 0  # how many interpreters this process created (once per model file)
        self._lock = threading.Lock()

    @property
    def loaded_files(self) -> tuple[str, ...]:
        return tuple(self._engines)

    def loaded(self, file_name: str) -> Engine:
        """The engine already loaded for a model file."""
        return self._engines[file_name]

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

    def segment(
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
        spec = pose_spec()
        landmarks, presence, segmentation = self.people_engine(spec).run_outputs(pose_input(image, region, spec)[None])[
            :3
        ]
        return read_pose(landmarks[0], presence[0], segmentation[0], region, spec)


@cache
def _anchors(spec: DetectorSpec) -> np.ndarray:
    return anchor_centers(spec.anchors)


def face_spec() -> DetectorSpec:
    return PEOPLE_MODELS["face-detector"]  # type: ignore[return-value]


def pose_detector_spec() -> DetectorSpec:
    return PEOPLE_MODELS["pose-detector"]  # type: ignore[return-value]


def pose_spec() -> PoseSpec:
    return PEOPLE_MODELS["pose-landmarks"]  # type: ignore[return-value]
