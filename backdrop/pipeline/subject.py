"""Where the subjects are, looked at closely: from a first pass over the whole photo to one probability
map at work resolution.

Every model sees its input at 256x256 (or 257x257), so a person covering a tenth of the photo gets a few
thousand model pixels. After the first pass, each subject region (a connected region of the targets, or
a group of regions close together) gets a second look: the same model runs on a crop around it, at its
full input resolution, and the crops' probabilities replace the first pass's there, feathered towards
the crop's inner edges so overlapping looks blend. One subject that fills most of the photo costs no
second pass; many small ones each get their own look (the largest first, up to a limit).

Pure functions over numpy arrays; the models are called through the function the caller passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# The probability map the subject stages share is at most this long on its long side: about twice a
# model's input, so a closer look's detail survives, and cheap to clean and carry.
WORK_LONG_SIDE = 384
# A subject region smaller than this share of the photo is noise, not a subject.
MIN_REGION_SHARE = 0.0005
# Crops reach this share of the region's size beyond it on each side (context the model needs).
LOOK_MARGIN = 0.2
# A look covering more than this share of the photo would see what the first pass saw: skipped.
MAX_LOOK_SHARE = 0.85
# Regions whose margins overlap this much (share of the smaller box) are looked at together.
GROUP_OVERLAP = 0.3
MAX_LOOKS = 6
# Held objects: the share of an object that must lie on a person-only model's foreground, or else near
# the subject (see held_objects).
HELD_FOREGROUND_SHARE = 0.5
HELD_NEAR_SHARE = 0.25
# When no subject region covers this share of the photo, the first pass saw every subject small and may
# have missed some outright: the photo is scanned again in overlapping tiles, each at full model input.
SCAN_BELOW_SHARE = 0.08
SCAN_GRID = 2
SCAN_OVERLAP = 0.25
# Inside a crop, weights ramp from 0 at an inner edge to 1 over this share of the crop's size, so a
# look never ends in a seam (edges on the photo's border need no ramp).
FEATHER_SHARE = 0.12


@dataclass(frozen=True)
class Box:
    """A rectangle in work pixels: columns x0..x1 and rows y0..y1 (end exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    def union(self, other: Box) -> Box:
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def overlap(self, other: Box) -> int:
        return Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1)).area

    def grown(self, share: float, width: int, height: int) -> Box:
        """This box with ``share`` of its size added on each side, clipped to width x height."""
        dx, dy = math.ceil(self.width * share), math.ceil(self.height * share)
        return Box(max(0, self.x0 - dx), max(0, self.y0 - dy), min(width, self.x1 + dx), min(height, self.y1 + dy))

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(round(self.x0 * sx), round(self.y0 * sy), round(self.x1 * sx), round(self.y1 * sy))


def work_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the work map for a photo (or preview) of this size."""
    scale = min(1.0, WORK_LONG_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def needs_scan(mask: np.ndarray) -> bool:
    """Whether no region of the boolean subject mask covers ``SCAN_BELOW_SHARE`` of the photo."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if len(stats) > 1 else 0
    return largest < SCAN_BELOW_SHARE * mask.size


def scan_tiles(width: int, height: int) -> list[Box]:
    """A grid of overlapping tiles that covers the photo (work pixels)."""
    tile_w = math.ceil(width / (SCAN_GRID - (SCAN_GRID - 1) * SCAN_OVERLAP))
    tile_h = math.ceil(height / (SCAN_GRID - (SCAN_GRID - 1) * SCAN_OVERLAP))
    xs = np.linspace(0, width - tile_w, SCAN_GRID).round().astype(int)
    ys = np.linspace(0, height - tile_h, SCAN_GRID).round().astype(int)
    return [Box(int(x), int(y), int(x) + tile_w, int(y) + tile_h) for y in ys for x in xs]


def plan_looks(mask: np.ndarray) -> list[Box]:
    """The crops worth a second look, largest region first, for a boolean subject mask (work resolution)."""
    height, width = mask.shape
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    regions = [
        Box(int(x), int(y), int(x + w), int(y + h))
        for x, y, w, h, area in stats[1:]
        if area >= MIN_REGION_SHARE * width * height
    ]
    looks = [region.grown(LOOK_MARGIN, width, height) for region in regions]
    merged = True
    while merged:  # people in a group: one look at the group rather than crops cut through them
        merged = False
        for i in range(len(looks)):
            for j in range(i + 1, len(looks)):
                smaller = min(looks[i].area, looks[j].area)
                if looks[i].overlap(looks[j]) >= GROUP_OVERLAP * smaller:
                    looks[i] = looks[i].union(looks.pop(j))
                    merged = True
                    break
            if merged:
                break
    looks = [look for look in looks if look.area <= MAX_LOOK_SHARE * width * height]
    return sorted(looks, key=lambda look: look.area, reverse=True)[:MAX_LOOKS]


def feather(look: Box, width: int, height: int) -> np.ndarray:
    """Weights (look-sized float32) that are 1 inside and ramp to 0 towards the edges that are inside the
    photo; on the photo's own border the crop saw everything there is, so no ramp."""
    ramp_x = max(1.0, FEATHER_SHARE * look.width)
    ramp_y = max(1.0, FEATHER_SHARE * look.height)
    xs = np.arange(look.width, dtype=np.float32) + 0.5
    ys = np.arange(look.height, dtype=np.float32) + 0.5
    wx = np.ones(look.width, np.float32)
    wy = np.ones(look.height, np.float32)
    if look.x0 > 0:
        wx = np.minimum(wx, xs / ramp_x)
    if look.x1 < width:
        wx = np.minimum(wx, (look.width - xs) / ramp_x)
    if look.y0 > 0:
        wy = np.minimum(wy, ys / ramp_y)
    if look.y1 < height:
        wy = np.minimum(wy, (look.height - ys) / ramp_y)
    return np.clip(np.outer(wy, wx), 0.0, 1.0)


def merge_looks(base: np.ndarray, looks: list[tuple[Box, np.ndarray]]) -> np.ndarray:
    """``base`` (work resolution) with each look's probability (look-sized) blended in by its feathered
    weight; where looks overlap, they are averaged by weight."""
    height, width = base.shape
    total = np.zeros_like(base)
    weights = np.zeros_like(base)
    for look, probability in looks:
        weight = feather(look, width, height)
        rows, cols = slice(look.y0, look.y1), slice(look.x0, look.x1)
        total[rows, cols] += weight * probability
        weights[rows, cols] += weight
    return blended(base, total, weights)


def blended(base: np.ndarray, total: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``base`` with the looks' weighted sum ``total`` (and the sum of their ``weights``) blended in: where
    the weights reach 1 the looks replace it, averaged by weight where they overlap."""
    covered = np.minimum(weights, 1.0)
    closer = np.divide(total, weights, out=np.zeros_like(total), where=weights > 0)
    return (base * (1.0 - covered) + closer * covered).astype(np.float32)


def look_closer(
    base: np.ndarray,
    looks: list[Box],
    work_image: np.ndarray,
    probability_of: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """The work-resolution probability after a closer look at each planned crop (see :func:`plan_looks`).

    ``probability_of(crop)`` runs the model on an image crop (work-image pixels, or finer) and returns its
    probability at any resolution."""
    height, width = base.shape
    image_h, image_w = work_image.shape[:2]
    sx, sy = image_w / width, image_h / height
    probabilities = []
    for look in looks:
        region = look.scaled(sx, sy)
        crop = np.ascontiguousarray(work_image[region.y0 : region.y1, region.x0 : region.x1])
        if min(crop.shape[:2]) < 4:
            continue
        probability = probability_of(crop)
        probabilities.append((look, cv2.resize(probability, (look.width, look.height), interpolation=cv2.INTER_LINEAR)))
    return merge_looks(base, probabilities) if probabilities else base


def held_objects(
    objects: np.ndarray, subject: np.ndarray, *, reach: int, foreground: np.ndarray | None = None
) -> np.ndarray:
    """The connected regions of ``objects`` (boolean: pixels of any class that is neither a target nor
    the background) that the subject holds, rides or sits on.

    With ``foreground`` (what a person-only model took for the person: it sees a held bottle or the bike
    ridden as part of them, not the screen behind their head), an object is held when at least half of
    it lies there. Otherwise, when at least a quarter of it lies within ``reach`` pixels of ``subject``."""
    count, labels = cv2.connectedComponents(objects.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(objects.shape, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=count)
    if foreground is not None:
        on_subject, share = foreground, HELD_FOREGROUND_SHARE
    else:
        kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
        on_subject, share = cv2.dilate(subject.astype(np.uint8), kernel) > 0, HELD_NEAR_SHARE
    inside = np.bincount(labels[on_subject & objects], minlength=count)
    held = inside >= share * areas
    held[0] = False
    return held[labels]
