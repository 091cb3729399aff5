"""People as separate instances: detector outputs decoded, each person's region, and the full-body
segmentation inside it mapped back to the photo.

MediaPipe's pose detector finds people: four keypoints give the hips' centre, a point whose distance
from it is the body's size and direction (the tilt), and the shoulders'. (Its box is a constant size,
not the face's: faces come from the face detector, which also finds small and far ones.) The pose
landmark model looks at one person in a square region turned upright and returns 33 body points, a
presence score, the person's segmentation there, and two points that place the next frame's region.

The full-body view is trusted where it sees a person at least as finely as the whole-photo selfie pass:
there it adds what it is sure of (limbs, legs, a backlit arm) to the selfie probability. On close-ups
its region is several times the photo and its segmentation coarse; the selfie pass is better there and
the landmark model is not run at all (see ``worth_a_pose``).

Pure functions over numpy arrays: the models are run by the caller (see ``loaded.LoadedModels``); what a
person's segmentation does to the subject probability is in ``regions``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from backdrop.models.registry import AnchorGrid, DetectorSpec, PoseSpec
from backdrop.pipeline.subject import Box

# A region's full-body segmentation is used where its model pixel is at most this many times the
# whole-photo pass's (region width / the photo's long side): chosen on the reference photos' half A
# (1.25-3 all score within 0.001 mean IoU; 1.0 and no limit lower), at the low end, since the landmark
# model costs about as much as the rest of a small photo's segmentation.
FULL_BODY_MAX_RATIO = 1.5
# A pose region is about this many face widths wide (median over the reference photos' people, 9-13).
REGION_FACE_WIDTHS = 11.0
# The landmark model's own threshold on its presence output (no activation: a score 0-1).
PRESENCE_MIN = 0.5
# Pose detections below this score are ignored (MediaPipe's own graph keeps 0.5 and up).
POSE_MIN_SCORE = 0.5
# At most this many people get a landmark pass per frame, largest first.
MAX_POSES = 6
# A closer look's find is confirmed when this share of it lies on the confirming model's mask; else the
# landmark model is asked (a region a quarter larger than what was found, upright).
HINT_SEEN_SHARE = 0.25
HINT_ENLARGE = 1.25
# A fresh detection is the same person as a tracked one when their regions overlap this much (IoU).
TRACK_OVERLAP = 0.3
# Pose landmarks: the nose, and the two auxiliary points (33, 34) that place the next region.
NOSE = 0
NEXT_CENTER, NEXT_SCALE = 33, 34


@dataclass(frozen=True)
class Detection:
    """One detected object in image pixels: ``box`` (x0, y0, x1, y1), its ``keypoints`` (K x 2, x and y)
    and ``score`` (0-1)."""

    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def scaled(self, factor: float) -> Detection:
        box = tuple(value * factor for value in self.box)
        return Detection(box, self.keypoints * factor, self.score)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Region:
    """A rotated square in image pixels: centre, side and the rotation (radians, clockwise on screen)
    that turns the region's "up" into the image's."""

    cx: float
    cy: float
    size: float
    rotation: float

    def scaled(self, factor: float) -> Region:
        return Region(self.cx * factor, self.cy * factor, self.size * factor, self.rotation)

    def overlap(self, other: Region) -> float:
        """Intersection over union of the two regions' axis-aligned bounds."""
        a, b = self.bounds(), other.bounds()
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    def bounds(self) -> tuple[float, float, float, float]:
        """The axis-aligned box (x0, y0, x1, y1) around the rotated square."""
        half = self.size * (abs(math.cos(self.rotation)) + abs(math.sin(self.rotation))) / 2
        return self.cx - half, self.cy - half, self.cx + half, self.cy + half


@dataclass(frozen=True)
class Pose:
    """What the landmark model saw in one region: 33 body points (image pixels, x y), their visibility
    (0-1), the presence score, the segmentation (model-input sized probability, upright in ``region``)
    and the region the same person will likely fill in the next frame."""

    region: Region
    points: np.ndarray
    visibility: np.ndarray
    presence: float
    segmentation: np.ndarray
    next_region: Region

    @property
    def nose(self) -> tuple[float, float]:
        return float(self.points[NOSE, 0]), float(self.points[NOSE, 1])


@dataclass(frozen=True)
class Person:
    """Someone found in the image: their face (face detector), the region their body fills (pose
    detector, or the last frame's pose), and what the landmark model saw there (when it ran and saw a
    person). ``segmentation``: their full-body probability on the work grid, once laid there."""

    face: Detection | None = None
    region: Region | None = None
    pose: Pose | None = None
    segmentation: np.ndarray | None = None
    # In a sequence of frames: whether this person was a subject on the last frame (None: new).
    was_subject: bool | None = None
    # Found where the confirming model saw nobody (someone small): the landmark model follows them in
    # every frame of a clip, since their segmentation is what keeps them.
    followed: bool = False

    @property
    def face_width(self) -> float:
        """The face's width in image pixels (from the body's size when no face was seen): the depth cue."""
        if self.face is not None:
            return self.face.width
        assert self.region is not None
        return self.region.size / REGION_FACE_WIDTHS

    @property
    def head(self) -> tuple[float, float]:
        """Where the head is now (the pose's nose is the freshest in a clip; else the face's centre)."""
        if self.pose is not None:
            return self.pose.nose
        if self.face is not None:
            return self.face.center
        assert self.region is not None
        return self.region.cx, self.region.cy


def needs_poses(faces: list[Detection], width: int, height: int) -> bool:
    """Whether the pose detector is worth running: no face was found (someone seen from behind, or too
    small for the face detector), or a face is small enough for its body's region to be fine enough
    (about REGION_FACE_WIDTHS face widths). Close-ups skip it: their full-body view would not be used."""
    limit = FULL_BODY_MAX_RATIO * max(width, height) / REGION_FACE_WIDTHS
    return not faces or any(face.width <= limit for face in faces)


def find_people(
    image: np.ndarray,
    spec: PoseSpec,
    detect_faces: Callable[[np.ndarray], list[Detection]],
    detect_poses: Callable[[np.ndarray], list[Detection]],
    look_at: Callable[[np.ndarray, Region], Pose],
    *,
    tracked: list[Person] | None = None,
    detections: tuple[list[Detection], list[Detection]] | None = None,
    hints: list[Region] | None = None,
    look_at_everyone: bool = True,
) -> tuple[list[Person], tuple[list[Detection], list[Detection]]]:
    """The people in ``image`` (BGR) and the detections they came from (faces, poses).

    Without ``detections`` the detectors run (the pose detector only where ``needs_poses``); with them
    (a frame between two runs of the detectors), the ``tracked`` people of the last frame are followed.
    ``hints``: regions where the subject probability shows someone the confirming model does not see
    (someone small); the people there are ``followed``. The landmark model looks at every person whose
    region is fine enough (``worth_a_pose``), or with ``look_at_everyone=False`` (frames of a clip or a
    live session, where it would cost too much per frame) at the followed people only, in the region
    their last pose said they would fill; a person it looked at and did not see, with no face, is
    dropped."""
    height, width = image.shape[:2]
    fresh = detections is None
    if detections is None:
        faces = detect_faces(image)
        poses = detect_poses(image) if needs_poses(faces, width, height) else []
        candidates = [
            Person(face=face_of(faces, detection), region=_tracked_region(pose_region(detection, spec), tracked))
            for detection in sorted(poses, key=lambda d: -d.score)[:MAX_POSES]
        ]
        matched = {id(person.face) for person in candidates if person.face is not None}
        candidates += [Person(face=face) for face in faces if id(face) not in matched]
        for hint in hints or []:
            same = [
                i for i, p in enumerate(candidates) if p.region is not None and p.region.overlap(hint) > TRACK_OVERLAP
            ]
            if same:
                candidates[same[0]] = replace(candidates[same[0]], followed=True)
            else:
                candidates.append(Person(region=_tracked_region(hint, tracked), followed=True))
        candidates = [_with_history(person, tracked) for person in candidates]
        detections = (faces, poses)
    else:
        candidates = [
            replace(person, region=person.pose.next_region if person.pose else person.region, pose=None)
            for person in tracked or []
        ]
    people = []
    for person in candidates:
        looked_at = look_at_everyone or person.followed
        if looked_at and person.region is not None and worth_a_pose(person.region, width, height):
            pose = look_at(image, person.region)
            # The face checks the pose where both are fresh (between detector runs the face is older).
            checked = not fresh or person.face is None or _on_face(pose, person.face)
            if pose.presence >= PRESENCE_MIN and checked:
                person = replace(person, pose=pose)
            elif person.face is None:
                continue  # neither a face nor a body: not a person after all
        people.append(person)
    return people, detections


def _on_face(pose: Pose, face: Detection) -> bool:
    """Whether the pose's nose lies on the face (grown by half its width): in a crowded region the
    landmark model may follow the person beside the one detected, and its segmentation with them."""
    x0, y0, x1, y1 = face.box
    grow = face.width / 2
    x, y = pose.nose
    return x0 - grow <= x <= x1 + grow and y0 - grow <= y <= y1 + grow


def _tracked_region(region: Region, tracked: list[Person] | None) -> Region:
    """A fresh detection's region, or where a tracked person's pose placed the same person (finer)."""
    for person in tracked or []:
        if person.pose is not None and person.pose.next_region.overlap(region) > TRACK_OVERLAP:
            return person.pose.next_region
    return region


def _with_history(person: Person, tracked: list[Person] | None) -> Person:
    """``person`` with whether the same person (head within a face width) was a subject last frame."""
    x, y = person.head
    for earlier in tracked or []:
        ex, ey = earlier.head
        if math.hypot(x - ex, y - ey) <= max(person.face_width, earlier.face_width):
            return replace(person, was_subject=earlier.was_subject)
    return person


def anchor_centers(grid: AnchorGrid) -> np.ndarray:
    """(N, 2) anchor centres (x, y), normalised to the input, in the order of the detector's outputs
    (MediaPipe's SSD anchors of fixed size: layers of equal stride share one grid, each cell repeated
    once per anchor of each such layer)."""
    centers = []
    layer = 0
    while layer < len(grid.strides):
        stride, repeats = grid.strides[layer], 0
        while layer < len(grid.strides) and grid.strides[layer] == stride:
            repeats += grid.anchors_per_layer
            layer += 1
        cells = math.ceil(grid.input_size / stride)
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        centers.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], axis=1), repeats, axis=0))
    return np.concatenate(centers).astype(np.float32)


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits in a square model input: input = image * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Input pixels (..., 2) → image pixels."""
        return (points - np.array([self.pad_x, self.pad_y], np.float32)) / self.scale


def detector_input(image: np.ndarray, spec: DetectorSpec) -> tuple[np.ndarray, Letterbox]:
    """The detector's input (size x size x 3 float32): the BGR image fitted in its middle, normalised,
    zero padding around it (as MediaPipe's detectors were trained)."""
    size = spec.input_size
    height, width = image.shape[:2]
    fit = min(size / width, size / height)
    region_w, region_h = max(1, round(width * fit)), max(1, round(height * fit))
    pad_x, pad_y = (size - region_w) // 2, (size - region_h) // 2
    interpolation = cv2.INTER_AREA if fit < 1 else cv2.INTER_LINEAR
    rgb = cv2.cvtColor(cv2.resize(image, (region_w, region_h), interpolation=interpolation), cv2.COLOR_BGR2RGB)
    tensor = np.zeros((size, size, 3), np.float32)
    tensor[pad_y : pad_y + region_h, pad_x : pad_x + region_w] = rgb * np.float32(spec.input_scale) + np.float32(
        spec.input_offset
    )
    return tensor, Letterbox(region_w / width, float(pad_x), float(pad_y))


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(
    boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, overlap: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: the best remaining detection and every one that
    overlaps it by more than ``overlap`` (IoU) become one, their boxes and keypoints averaged by score."""
    order = np.argsort(-scores, kind="stable")
    boxes, points, scores = boxes[order], points[order], scores[order]
    remaining = np.ones(len(scores), dtype=bool)
    merged = []
    for index in range(len(scores)):
        if not remaining[index]:
            continue
        candidates = np.flatnonzero(remaining)
        same = candidates[_iou(boxes[index], boxes[candidates]) > overlap]
        same = np.union1d(same, [index])
        remaining[same] = False
        weights = scores[same] / scores[same].sum()
        merged.append(
            (
                (boxes[same] * weights[:, None]).sum(axis=0),
                (points[same] * weights[:, None, None]).sum(axis=0),
                float(scores[index]),
            )
        )
    return merged


def read_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    spec: DetectorSpec,
    anchors: np.ndarray,
    letterbox: Letterbox,
    min_score: float | None = None,
) -> list[Detection]:
    """One image's raw detector outputs (N x coords, N x 1) → detections in image pixels, best first.

    Each anchor's box (x, y, w, h) and keypoints are offsets in input pixels from its centre; scores are
    logits (clipped at ±100 as MediaPipe does)."""
    logits = np.clip(scores.reshape(-1).astype(np.float64), -100.0, 100.0)
    probability = 1.0 / (1.0 + np.exp(-logits))
    keep = probability >= (spec.min_score if min_score is None else min_score)
    if not keep.any():
        return []
    raw, centers = boxes[keep].astype(np.float32), anchors[keep] * np.float32(spec.input_size)
    cx, cy = raw[:, 0] + centers[:, 0], raw[:, 1] + centers[:, 1]
    half_w, half_h = raw[:, 2] / 2, raw[:, 3] / 2
    decoded = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    keypoints = raw[:, 4 : 4 + 2 * spec.keypoints].reshape(-1, spec.keypoints, 2) + centers[:, None, :]
    found = []
    for box, points, score in weighted_nms(decoded, keypoints, probability[keep], spec.nms_overlap):
        corners = letterbox.to_image(box.reshape(2, 2)).reshape(-1)
        found.append(Detection(tuple(float(v) for v in corners), letterbox.to_image(points), score))  # type: ignore[arg-type]
    return found


def aligned_region(center: tuple[float, float], scale_point: tuple[float, float], enlarge: float) -> Region:
    """MediaPipe's region from two alignment points (image pixels): centred on ``center``, a square of
    twice the distance to ``scale_point`` times ``enlarge`` (the training margin), rotated so that
    ``scale_point`` is straight up."""
    dx, dy = scale_point[0] - center[0], scale_point[1] - center[1]
    rotation = math.pi / 2 - math.atan2(-dy, dx)
    rotation -= 2 * math.pi * math.floor((rotation + math.pi) / (2 * math.pi))  # into [-pi, pi)
    return Region(center[0], center[1], 2.0 * math.hypot(dx, dy) * enlarge, rotation)


def pose_region(detection: Detection, spec: PoseSpec) -> Region:
    """The landmark model's region for a pose detection (keypoint 0: the hips' centre; 1: the scale point)."""
    return aligned_region(
        (float(detection.keypoints[0, 0]), float(detection.keypoints[0, 1])),
        (float(detection.keypoints[1, 0]), float(detection.keypoints[1, 1])),
        spec.region_enlarge,
    )


def region_transform(region: Region, size: int) -> np.ndarray:
    """The 2x3 affine map from model-input pixels (size x size) to image pixels for ``region``."""
    cos, sin = math.cos(region.rotation), math.sin(region.rotation)
    step = region.size / size
    linear = np.array([[cos * step, -sin * step], [sin * step, cos * step]], np.float64)
    offset = np.array([region.cx, region.cy]) - linear @ np.array([size / 2, size / 2])
    return np.hstack([linear, offset[:, None]]).astype(np.float32)


def upright_crop(image: np.ndarray, region: Region, side: int) -> np.ndarray:
    """The region cut out of ``image`` upright, side x side pixels (outside the image its edge pixels are
    repeated, as MediaPipe feeds the landmark model)."""
    return cv2.warpAffine(
        image,
        region_transform(region, side),
        (side, side),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def pose_input(image: np.ndarray, region: Region, spec: PoseSpec) -> np.ndarray:
    """The region cut out of the BGR ``image`` upright, as the landmark model's RGB 0-1 input."""
    crop = upright_crop(image, region, spec.input_size)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)


def read_pose(
    landmarks: np.ndarray, presence: np.ndarray, segmentation: np.ndarray, region: Region, spec: PoseSpec
) -> Pose:
    """The landmark model's outputs for one region (landmarks 39 x 5 in input pixels, the presence score,
    segmentation logits size x size) in image pixels."""
    values = landmarks.reshape(-1, 5).astype(np.float32)
    to_image = region_transform(region, spec.input_size)
    points = values[:, :2] @ to_image[:, :2].T + to_image[:, 2]
    logits = np.clip(segmentation.reshape(spec.input_size, spec.input_size), -60.0, 60.0)
    next_region = aligned_region(
        (float(points[NEXT_CENTER, 0]), float(points[NEXT_CENTER, 1])),
        (float(points[NEXT_SCALE, 0]), float(points[NEXT_SCALE, 1])),
        spec.region_enlarge,
    )
    return Pose(
        region=region,
        points=points[: spec.landmarks],
        visibility=1.0 / (1.0 + np.exp(-np.clip(values[: spec.landmarks, 3], -60, 60))),
        presence=float(np.asarray(presence).reshape(-1)[0]),
        segmentation=(1.0 / (1.0 + np.exp(-logits))).astype(np.float32),
        next_region=next_region,
    )


def paste(values: np.ndarray, region: Region, width: int, height: int) -> np.ndarray:
    """A model-input-sized map (a segmentation) laid back on a width x height grid of the same image
    (``region`` in that grid's pixels); 0 outside the region."""
    return cv2.warpAffine(
        values,
        region_transform(region, values.shape[0]),
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def on_grid(person: Person, scale: float, width: int, height: int) -> Person:
    """``person`` with their full-body segmentation laid on a width x height grid (``scale``: grid pixels
    per image pixel)."""
    if person.pose is None:
        return person
    return replace(
        person, segmentation=paste(person.pose.segmentation, person.pose.region.scaled(scale), width, height)
    )


def unconfirmed_regions(probability: np.ndarray, looks: list[Box], evidence: np.ndarray, scale: float) -> list[Region]:
    """Where the closer looks found someone the confirming model does not see (a person too small for it):
    for each look whose subject pixels (``probability`` at 0.5, work resolution) lie mostly off
    ``evidence`` (dilated by two pixels), an upright region around them as the landmark model expects one
    (a quarter larger than their height), in image pixels (``scale``: work pixels per image pixel)."""
    subject = probability >= 0.5
    near = cv2.dilate(evidence.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    regions = []
    for look in looks:
        inside = subject[look.y0 : look.y1, look.x0 : look.x1]
        count = np.count_nonzero(inside)
        if (
            not count
            or np.count_nonzero(inside & near[look.y0 : look.y1, look.x0 : look.x1]) >= HINT_SEEN_SHARE * count
        ):
            continue
        ys, xs = np.nonzero(inside)
        top, bottom = look.y0 + ys.min(), look.y0 + ys.max() + 1
        left, right = look.x0 + xs.min(), look.x0 + xs.max() + 1
        size = max(bottom - top, right - left) * HINT_ENLARGE
        regions.append(Region((left + right) / 2 / scale, (top + bottom) / 2 / scale, size / scale, 0.0))
    return regions


def worth_a_pose(region: Region, width: int, height: int) -> bool:
    """Whether a person's full-body segmentation would be fine enough to use (see FULL_BODY_MAX_RATIO)."""
    return region.size <= FULL_BODY_MAX_RATIO * max(width, height)


def face_of(faces: list[Detection], detection: Detection) -> Detection | None:
    """The face that belongs to a pose detection: the one nearest the middle of its shoulders' centre
    (keypoint 2) and the point above its head (keypoint 1), within half their distance."""
    top, shoulders = detection.keypoints[1], detection.keypoints[2]
    middle = (top + shoulders) / 2
    reach = 0.5 * float(np.hypot(*(top - shoulders)))
    best, best_distance = None, reach
    for face in faces:
        distance = math.hypot(face.center[0] - middle[0], face.center[1] - middle[1])
        if distance <= best_distance:
            best, best_distance = face, distance
    return best
