"""Each person's region: where each found person is on the work grid, and the probability shaped by
them. Their own full-body segmentation adds what it is sure of (``full_body_view``); the background
between two people is taken out (``separate_people``); a region of the probability that holds someone's
seed counts as a person found (``regions_with_people``). Where a person has no segmentation of their own,
a box around the face stands for them (``seed_of``). A person turned from upright (lying, seen from
above) gets a pass of the job's model on their region turned upright (``turned_from_upright``).

Pure functions over numpy arrays.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from backdrop.pipeline.people import Person, Region, paste
from backdrop.pipeline.subject import Box, blended, feather

# Background enclosed by the subject (a gap between people, or between an arm and the body) at least this
# share of the photo is never filled by the full-body view.
HOLE_MIN_SHARE = 0.002
# Where a person has no segmentation of their own, this box around the face stands for them when pixels
# are shared out: face widths to either side, above and below the face.
HEAD_AND_TORSO = (1.2, 0.3, 3.0)
# Between two people, background is what both their full-body segmentations put under this probability.
GAP_MAX_PROBABILITY = 0.1
# ... unless another model (DeepLab's person class) sees someone there: a region of it at least this share
# of the smaller of the two bodies (a head and shoulders are about a fifth of a standing person).
SOMEONE_MIN_SHARE = 0.2
# A person whose body's region is turned more than this from upright (radians) gets an upright look: the
# selfie model was trained on upright people and misses most of one lying down; past 45 degrees a person
# lies more than stands.
UPRIGHT_LOOK_MIN_ROTATION = math.pi / 4


def seed_of(person: Person, width: int, height: int, scale: float) -> np.ndarray:
    """Where ``person`` surely is, on a width x height grid (``scale``: grid pixels per image pixel)."""
    if person.segmentation is not None:
        seed = person.segmentation >= 0.5
        if seed.any():
            return seed
    seed = np.zeros((height, width), np.uint8)
    x, y = person.head
    face = person.face_width
    side, above, below = HEAD_AND_TORSO
    corners = (
        (round((x - side * face) * scale), round((y - above * face - face / 2) * scale)),
        (round((x + side * face) * scale), round((y + below * face) * scale)),
    )
    cv2.rectangle(seed, *corners, 1, thickness=-1)
    return seed > 0


def full_body_view(probability: np.ndarray, people: list[Person]) -> np.ndarray:
    """``probability`` (work resolution) with each person's full-body segmentation (already on the work
    grid) added where it is sure of a person (at least 0.5): the per-pixel maximum there. Not inside a
    gap the probability leaves between parts of the subject (background between two people, or between
    an arm and the body, wider than HOLE_MIN_SHARE of the photo): the landmark model, which sees one
    person at a time, paints a second person in its region too, and the gap between them with it."""
    seen = [person.segmentation for person in people if person.segmentation is not None]
    if not seen:
        return probability
    body = np.maximum.reduce(seen)
    background = (probability < 0.5).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    height, width = probability.shape
    x, y, w, h, area = (stats[:, i] for i in range(5))
    enclosed = (x > 0) & (y > 0) & (x + w < width) & (y + h < height) & (area >= HOLE_MIN_SHARE * height * width)
    enclosed[0] = False  # label 0: the subject itself
    addable = (body >= 0.5) & ~enclosed[labels]
    return np.where(addable, np.maximum(probability, body), probability).astype(np.float32)


def bodies_of(people: list[Person]) -> np.ndarray | bool:
    """Where the people's own segmentations are sure of them (their union on the work grid; False when
    none has one)."""
    bodies = [person.segmentation >= 0.5 for person in people if person.segmentation is not None]
    return np.logical_or.reduce(bodies) if bodies else False


def regions_with_people(mask: np.ndarray, people: list[Person], scale: float) -> np.ndarray:
    """The connected regions of ``mask`` (work resolution) that hold one of ``people``'s seeds: where the
    person models (a face, a pose) found someone that the subject probability agrees is there. It makes
    a person found when the whole-photo class model (DeepLab) does not see them: a silhouette against
    the sky, someone lying or upside down. ``scale``: work pixels per pixel of the people's coordinates."""
    height, width = mask.shape
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    held = np.zeros(count, dtype=bool)
    for person in people:
        held[np.unique(labels[seed_of(person, width, height, scale)])] = True
    held[0] = False
    return held[labels]


def separate_people(
    probability: np.ndarray,
    people: list[Person],
    scale: float,
    margin: float,
    others_seen: np.ndarray | None = None,
) -> np.ndarray:
    """``probability`` (work resolution) with the background between people taken out: where two people's
    full-body segmentations both say background, farther than ``margin`` work pixels from either body,
    inside the hull the two span (the grass between sitting people, the wall between standing ones that
    the coarser whole-photo pass filled in), and where ``others_seen`` (another model's mask of the
    targets, e.g. DeepLab's person class) does not see someone: people nobody detected, walking between
    two who were, are not a gap. ``scale``: work pixels per image pixel of the people."""
    bodies = [person.segmentation for person in people if person.segmentation is not None]
    if len(bodies) < 2:
        return probability
    sure = [body >= 0.5 for body in bodies]
    anyone = np.maximum.reduce(bodies)
    near = cv2.dilate(np.logical_or.reduce(sure).astype(np.uint8), _disc(margin)) > 0
    # Only a region of the probability that runs from one of the two into the other is a bridge to cut: a
    # separate region between them is someone else.
    count, labels = cv2.connectedComponents((probability >= 0.5).astype(np.uint8), connectivity=8)
    touched = [np.bincount(labels[mask], minlength=count) > 0 for mask in sure]
    between = np.zeros(probability.shape, np.uint8)
    for i in range(len(sure)):
        for j in range(i + 1, len(sure)):
            bridges = touched[i] & touched[j]
            bridges[0] = False
            if not bridges.any():
                continue
            points = cv2.findNonZero((sure[i] | sure[j]).astype(np.uint8))
            hull = np.zeros(probability.shape, np.uint8)
            cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
            between |= hull & bridges[labels]
    # Someone the landmark model did not look at (a face alone) may stand in between: not a gap.
    height, width = probability.shape
    for person in people:
        if person.segmentation is None:
            near |= seed_of(person, width, height, scale)
    gap = (between > 0) & ~near & (anyone < GAP_MAX_PROBABILITY)
    if others_seen is not None and gap.any():
        # What the other model sees in the gap, region by region: at least a head and shoulders' worth of
        # the smaller body is someone nobody detected (kept); less is the other model's coarse outline
        # spilling between limbs and bodies (taken out).
        seen = (gap & others_seen).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(seen, connectivity=8)
        smallest = min(int(np.count_nonzero(body)) for body in sure)
        someone = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= SOMEONE_MIN_SHARE * smallest)
        gap &= ~np.isin(labels, someone[someone > 0])
    return np.where(gap, np.minimum(probability, anyone), probability).astype(np.float32)


def _disc(radius: float) -> np.ndarray:
    side = 2 * max(1, round(radius)) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))


def turned_from_upright(people: list[Person]) -> list[Region]:
    """The body regions (the landmark model's, so a body was seen there) of the people turned more than
    UPRIGHT_LOOK_MIN_ROTATION from upright."""
    return [
        person.pose.region
        for person in people
        if person.pose is not None
        and abs(math.remainder(person.pose.region.rotation, math.tau)) > UPRIGHT_LOOK_MIN_ROTATION
    ]


def merge_upright_looks(base: np.ndarray, looks: list[tuple[Region, np.ndarray]], scale: float) -> np.ndarray:
    """``base`` (work resolution) with each upright look's probability (square, upright in its region,
    ``scale``: work pixels per pixel of the regions) turned back onto the grid and blended in by a weight
    that ramps to 0 towards the region's edges, as a closer look's does."""
    height, width = base.shape
    total = np.zeros_like(base)
    weights = np.zeros_like(base)
    for region, probability in looks:
        side = probability.shape[0]
        # A box with every edge inside the frame: it ramps on all four sides.
        weight = feather(Box(1, 1, side + 1, side + 1), side + 2, side + 2)
        on_grid = region.scaled(scale)
        weights += paste(weight, on_grid, width, height)
        total += paste((weight * probability).astype(np.float32), on_grid, width, height)
    return blended(base, total, weights)
