"""Who the subject is: of the people found, the ones a portrait keeps, and the others let go.

A phone's portrait mode keeps the person it focused on and whoever stands with them; people behind them
fall into the blur. Here the main subject is the most prominent person: the largest face (the nearest),
near the middle. The subjects are the people at about the same depth as the main one (a face at least
``SAME_DEPTH`` of the main face's width) that are not much blurrier (``SHARP_ENOUGH`` of its sharpness);
a group standing or sitting together has faces of about one size, so it stays together. A region of the
subject probability in which no detector saw anyone is kept unless it is small beside the subjects
(``ORPHAN_MAX_SHARE``): a person cut off by the frame's edge behind the subject.

``subjects=all`` keeps everyone. For targets other than people (cats, cars), the regions of the target
mask are the candidates: the largest, and those at least ``SAME_DEPTH`` squared of its area.

Pure functions over numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.params import Subjects
from backdrop.pipeline.people import Person
from backdrop.pipeline.regions import seed_of

# A subject's face is at least this share of the main subject's face width (the same depth, give or take
# a step back in a group; a person twice as far has a face half as wide).
SAME_DEPTH = 0.6
# A subject's face is at least this share of the main face's sharpness: below what the faces of the
# reference photos keep of their detail under a blur of 2 px (median 0.10 of 144 faces), and below every
# person at the subject's depth there (0.16 to 5.1 over 24 pairs; a soft face in focus measures as one
# blurred by 1.5 px). The measure cannot tell a mild defocus from a soft face, so only a clear one counts.
SHARP_ENOUGH = 0.1
# A region of the probability with no detected person in it is let go when smaller than this share of
# the subjects' largest region.
ORPHAN_MAX_SHARE = 0.25
# A person counts when at least this share of where they should be (seed) is on the subject probability.
BODY_MIN_SHARE = 0.3
# In a clip, a person who was a subject stays one until clearly out: the thresholds are this much lower
# for them (no one popping in and out of the subject between frames).
STAY = 0.8
# A region shared by several people is shared out by flooding the subject probability from each person's
# seed, level by level from the top (see share_out): a valley between two people below a level parts them.
SHARE_LEVELS = (0.95, 0.85, 0.75, 0.65, 0.5)
# Sharpness is compared on faces brought to one size: this, or the smaller face's width (not below the
# minimum: a face of a few pixels has no detail to compare).
SHARPNESS_SIDE = 48
MIN_SHARPNESS_SIDE = 12


@dataclass(frozen=True)
class Choice:
    """Which of the people are subjects, and which one is the main subject (index; None: nobody)."""

    subjects: tuple[bool, ...]
    main: int | None


def sharpness(gray: np.ndarray, box: tuple[float, float, float, float], side: int = SHARPNESS_SIDE) -> float:
    """How much fine detail a face has: the Laplacian's variance over the grey variance, on the face
    brought to ``side`` pixels (so faces of any size compare; out-of-focus faces score low)."""
    height, width = gray.shape[:2]
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    face = cv2.resize(gray[y0:y1, x0:x1].astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(face, cv2.CV_32F).var() / (face.var() + 1.0))


def choose_people(people: list[Person], gray: np.ndarray, mode: Subjects) -> Choice:
    """The subjects among ``people`` (found on the image ``gray`` is a grey copy of, same pixels)."""
    if not people:
        return Choice((), None)
    height, width = gray.shape[:2]
    half_diagonal = math.hypot(width, height) / 2

    def prominence(person: Person) -> float:
        x, y = person.head
        off_centre = math.hypot(x - width / 2, y - height / 2) / half_diagonal
        return person.face_width * (1.0 - 0.5 * min(1.0, off_centre))

    main = max(range(len(people)), key=lambda i: prominence(people[i]))
    if mode is Subjects.ALL:
        return Choice(tuple(True for _ in people), main)
    main_face = people[main].face
    main_width = people[main].face_width
    chosen = []
    for person in people:
        leeway = STAY if person.was_subject else 1.0
        near = person.face_width >= SAME_DEPTH * leeway * main_width
        in_focus = True
        if person.face is not None and main_face is not None:
            # Both faces at the smaller one's size: a small face brought up to a larger size looks blurred
            # by the resampling alone.
            side = max(MIN_SHARPNESS_SIDE, min(SHARPNESS_SIDE, round(min(person.face_width, main_width))))
            person_sharp, main_sharp = sharpness(gray, person.face.box, side), sharpness(gray, main_face.box, side)
            in_focus = person_sharp >= SHARP_ENOUGH * leeway * main_sharp
        chosen.append(near and in_focus)
    return Choice(tuple(chosen), main)


def settle_subjects(
    probability: np.ndarray, people: list[Person], gray: np.ndarray, scale: float, mode: Subjects, *, fresh: bool = True
) -> tuple[np.ndarray, list[Person], Choice]:
    """The subject probability (work resolution) without the people who are not subjects, the people
    that count, and the choice. ``gray``: the image the people were found on; ``scale``: work pixels per
    pixel of it. With ``fresh=False`` (a clip's frame between two runs of the detectors, its people
    followed from the last frame) the last frame's choice is kept: no one pops in or out between runs."""
    people = with_a_body(people, probability, scale)
    if fresh or any(person.was_subject is None for person in people):
        choice = choose_people(people, gray, mode)
    else:
        subjects = tuple(bool(person.was_subject) for person in people)
        choice = Choice(subjects, next((i for i, chosen in enumerate(subjects) if chosen), None))
    if mode is Subjects.MAIN:
        probability = keep_subjects(probability, people, choice, scale)
    return probability, people, choice


def with_a_body(people: list[Person], probability: np.ndarray, scale: float) -> list[Person]:
    """The people the subject probability (work resolution) agrees are there: at least BODY_MIN_SHARE of
    their seed (segmentation, or head-and-torso box) lies on it. A face on a football or a poster found by
    the face detector alone is not a person to choose, nor is a "face" that lies on another person's own
    segmentation (a hand, a print on a shirt)."""
    height, width = probability.shape
    subject = probability >= 0.5
    bodies = [person.segmentation >= 0.5 for person in people if person.segmentation is not None]
    kept = []
    for person in people:
        if person.segmentation is None and bodies:
            head_x, head_y = person.head
            x = min(max(0, round(head_x * scale)), width - 1)
            y = min(max(0, round(head_y * scale)), height - 1)
            if any(body[y, x] for body in bodies):
                continue
        seed = seed_of(person, width, height, scale)
        area = np.count_nonzero(seed)
        if area and np.count_nonzero(seed & subject) >= BODY_MIN_SHARE * area:
            kept.append(person)
    return kept


def keep_subjects(probability: np.ndarray, people: list[Person], choice: Choice, scale: float) -> np.ndarray:
    """``probability`` (work resolution) without the people who are not subjects.

    Regions of the probability (at 0.5) that hold only people let go are dropped; a region shared by
    subjects and others (someone partly hidden behind the subject) is shared out: each person's part grows
    from their seed (their own segmentation, else a head-and-torso box) along the probability's heights
    (see share_out). A region with nobody detected in it is dropped when small beside the subjects' (see
    ORPHAN_MAX_SHARE).
    ``scale``: work pixels per image pixel of the people's coordinates."""
    if not people or choice.main is None:
        return probability
    height, width = probability.shape
    mask = (probability >= 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return probability
    areas = stats[:, cv2.CC_STAT_AREA]
    seeds = [seed_of(person, width, height, scale) for person in people]
    # The regions each person is in: where their seed overlaps the mask most.
    holders: list[set[int]] = [set() for _ in range(count)]
    for index, seed in enumerate(seeds):
        inside = np.bincount(labels[seed], minlength=count)
        inside[0] = 0
        if inside.max() > 0:
            holders[int(inside.argmax())].add(index)
    subject_regions = [r for r in range(1, count) if any(choice.subjects[i] for i in holders[r])]
    largest = max((areas[r] for r in subject_regions), default=0)
    drop = np.zeros(count, dtype=bool)
    shared: list[int] = []
    for region in range(1, count):
        held = holders[region]
        if not held:
            drop[region] = bool(largest) and areas[region] < ORPHAN_MAX_SHARE * largest
        elif not any(choice.subjects[i] for i in held):
            drop[region] = True
        elif not all(choice.subjects[i] for i in held):
            shared.append(region)
    result = probability.copy()
    if drop.any():
        # The dropped regions and the soft rim around them (what the matte's band would read).
        dropped = cv2.dilate(drop[labels].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        result[dropped & ~np.isin(labels, np.flatnonzero(~drop & (np.arange(count) > 0)))] = 0.0
    for region in shared:
        members = sorted(holders[region])
        x, y, w, h = (int(v) for v in stats[region, :4])
        crop = (slice(y, y + h), slice(x, x + w))
        inside = labels[crop] == region
        owners = share_out(probability[crop], inside, [seeds[i][crop] for i in members])
        let_go = ~np.asarray([choice.subjects[i] for i in members])[owners]
        result[crop][inside & let_go] = 0.0
    return result


def share_out(probability: np.ndarray, inside: np.ndarray, seeds: list[np.ndarray]) -> np.ndarray:
    """Which of the people (index into ``seeds``) each pixel of a region (``inside``) belongs to: their
    regions grow from their seeds through the probability from its heights down (a watershed by
    immersion, one flooding per level of SHARE_LEVELS), so two people meet along the probability's valley
    between them, or where a plateau joins them, halfway along it, not at the straight midpoint of their
    seeds. A pixel no flooding reached (cut off at every level) goes to the nearest seed."""
    height, width = inside.shape
    owners = np.zeros((height + 2, width + 2), np.int32)  # 0: not yet anyone's; 1..n: seeds[i - 1]
    # Smaller seeds painted last: a head-and-torso box inside another person's outline keeps its pixels.
    for index in sorted(range(len(seeds)), key=lambda i: -int(np.count_nonzero(seeds[i]))):
        owners[1:-1, 1:-1][seeds[index] & inside] = index + 1
    outside = len(seeds) + 1
    heights = np.zeros((height + 2, width + 2), np.float32)
    heights[1:-1, 1:-1] = np.where(inside, probability, 0.0)
    for level in SHARE_LEVELS:
        allowed = heights >= level
        markers = np.where(allowed | (owners > 0), owners, outside)
        # OpenCV floods by the colour step between neighbours: zero inside this level, the largest step
        # into what lies below it, so the people fill this level before anything else floods.
        image = np.where(allowed, 0, 255).astype(np.uint8)
        cv2.watershed(cv2.merge([image, image, image]), markers)
        grown = allowed & (owners == 0) & (markers > 0) & (markers < outside)
        owners[grown] = markers[grown]
    owners = owners[1:-1, 1:-1]
    if (left := inside & (owners == 0)).any():
        distances = [cv2.distanceTransform((~seed).astype(np.uint8), cv2.DIST_L2, 3) for seed in seeds]
        owners[left] = np.argmin(np.stack([distance[left] for distance in distances]), axis=0) + 1
    return np.maximum(owners, 1) - 1


def choose_regions(class_mask: np.ndarray, mode: Subjects) -> np.ndarray:
    """For targets other than people: the target mask's regions that are subjects (``subjects=main``:
    the largest, and those at least SAME_DEPTH squared of its area), as a boolean mask."""
    if mode is Subjects.ALL:
        return class_mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(class_mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return class_mask
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    areas[0] = 0
    keep = areas >= SAME_DEPTH**2 * areas.max()
    keep[0] = False
    return keep[labels]
