"""From a coarse model probability to a full-resolution alpha matte.

1. ``clean_probability``: regions a confirming model does not see as the target (a coat on a chair
   that a person-only model took for a person) and small blobs far from the main subject are removed,
   at model resolution.
2. ``refine_alpha``: a trimap (certain subject, certain background, an unknown band as wide as the
   model's uncertainty), then a fast guided filter (He & Sun, 2015) fits the probability to the photo's
   own edges inside the band: coefficients are solved on the shared preview and applied to the
   full-resolution photo, so edges are full-resolution and soft where the photo is (hair), at a fraction
   of the cost, and everything outside the band is exactly subject or background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.pipeline.pixels import OpenCVPixels, PixelOps

OPENCV = OpenCVPixels()

# An island is dropped when smaller than this share of the largest subject region ...
ISLAND_MIN_AREA = 0.05
# ... and farther from every large region than this share of the model image's diagonal.
ISLAND_MAX_GAP = 0.04
# Soft probability is kept only this close (model pixels) to a kept region, so faint haze elsewhere
# cannot become half-sharp patches in the background.
RIM_PIXELS = 3
# With a confirming model: the share of a region it must confirm, and how far (model pixels) its coarse
# mask may miss the region's edge.
EVIDENCE_MIN_SHARE = 0.25
EVIDENCE_SLACK_PIXELS = 2
# The matte's unknown band reaches this many model pixels either side of the subject's boundary: the
# width over which a model's upsampled output is unsure where the edge lies.
UNKNOWN_BAND_MODEL_PIXELS = 1.5


@dataclass(frozen=True)
class Alpha:
    """The matte at full resolution (HxW uint8, 255 = subject) and at preview resolution (float32 0–1)."""

    full: np.ndarray
    preview: np.ndarray


def clean_probability(
    probability: np.ndarray,
    *,
    evidence: np.ndarray | None = None,
    drop_far_islands: bool = True,
    scale: float = 1.0,
) -> np.ndarray:
    """``probability`` with unwanted subject regions (and soft haze away from kept ones) set to 0.

    ``evidence``: a boolean mask (any resolution) from a second model that knows the target class; a
    region of the first model is kept only where enough of it is confirmed there. ``drop_far_islands``
    drops small regions far from the main subject. ``scale``: pixels of ``probability`` per model pixel.
    """
    mask = (probability >= 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    candidate = np.ones(count, dtype=bool)
    candidate[0] = False  # label 0 is the background
    if evidence is not None:
        evidence = cv2.resize(evidence.astype(np.uint8), mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        slack = max(1, round(EVIDENCE_SLACK_PIXELS * scale))
        evidence = cv2.dilate(evidence, np.ones((3, 3), np.uint8), iterations=slack) > 0
        confirmed = np.bincount(labels[evidence], minlength=count)
        candidate &= confirmed >= EVIDENCE_MIN_SHARE * areas
    if not candidate.any():
        return np.zeros_like(probability)
    keep = candidate.copy()
    if drop_far_islands:
        large = candidate & (areas >= ISLAND_MIN_AREA * areas[candidate].max())
        gap_to_large = cv2.distanceTransform((~large[labels]).astype(np.uint8), cv2.DIST_L2, 3)
        limit = ISLAND_MAX_GAP * math.hypot(*probability.shape)
        near = np.zeros(count, dtype=bool)
        near[np.unique(labels[gap_to_large <= limit])] = True  # components with a pixel close to a large one
        keep = large | (candidate & near)
    distance_to_kept = cv2.distanceTransform((~keep[labels]).astype(np.uint8), cv2.DIST_L2, 3)
    result = probability.copy()
    result[distance_to_kept > RIM_PIXELS * scale] = 0.0
    return result


def _box(pixels: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(pixels, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def trimap(probability: np.ndarray, band: float) -> tuple[np.ndarray, np.ndarray]:
    """(subject, unknown) as float32 0/1 planes: the subject is where ``probability`` is at least 0.5; the
    unknown band is every pixel within ``band`` pixels of that boundary. Outside it the matte is certain:
    1 on the subject, 0 elsewhere, whatever faint probability the model left there."""
    subject = (probability >= 0.5).astype(np.uint8)
    inside = cv2.distanceTransform(subject, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - subject, cv2.DIST_L2, 3)
    unknown = (cv2.max(inside, outside) <= band).astype(np.float32)  # one of the two is 0 at every pixel
    return subject.astype(np.float32), unknown


def _around(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows and columns of ``mask``'s non-zero pixels, grown by ``margin`` (empty slices when none)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)),
    )


def _guided_coefficients(
    guide: np.ndarray, target: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """The guided filter's smoothed coefficients: alpha = gain * guide + offset fits target to guide's edges."""
    mean_guide = _box(guide, radius)
    mean_target = _box(target, radius)
    var_guide = _box(guide * guide, radius) - mean_guide * mean_guide
    cov = _box(guide * target, radius) - mean_guide * mean_target
    gain = cov / (var_guide + eps)
    offset = mean_target - gain * mean_guide
    return _box(gain, radius), _box(offset, radius)


def refine_alpha(
    probability: np.ndarray,
    image: np.ndarray,
    preview: np.ndarray,
    *,
    model_pixel: float | None = None,
    eps: float = 1e-3,
    ops: PixelOps = OPENCV,
) -> Alpha:
    """The matte of ``image`` from ``probability`` (any resolution), solved on ``preview``.

    A trimap first: certain subject, certain background, and between them a band as wide as the model's
    own uncertainty (``UNKNOWN_BAND_MODEL_PIXELS`` model pixels either side of the 0.5 boundary;
    ``model_pixel`` is the size of one, in preview pixels). In the band a guided filter fits the
    probability to the photo's own edges; outside it the matte is exactly 0 or 1, so faint haze in the
    background never becomes a half-sharp ghost and the subject has no holes."""
    preview_h, preview_w = preview.shape[:2]
    guide = cv2.cvtColor(preview, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    if model_pixel is None:
        model_pixel = max(preview_h, preview_w) / max(probability.shape)
    # The trimap is found on the probability's own grid (cheaper), then enlarged with the probability.
    band = UNKNOWN_BAND_MODEL_PIXELS * model_pixel * probability.shape[1] / preview_w
    subject, unknown = trimap(probability, band)
    size = (preview_w, preview_h)
    target = cv2.resize(probability, size, interpolation=cv2.INTER_LINEAR)
    certain = cv2.resize(subject, size, interpolation=cv2.INTER_NEAREST)
    unknown = cv2.resize(unknown, size, interpolation=cv2.INTER_NEAREST)
    target = certain + unknown * (target - certain)
    # About two model pixels: wide enough to cover the model's uncertain band at the edge.
    radius = max(1, round(2 * model_pixel))
    # Certain pixels: alpha = 0 * gray + (0 or 1), exactly; the filter runs only around the band.
    mean_gain = np.zeros_like(certain)
    mean_offset = certain.copy()
    rows, cols = _around(unknown, 2 * radius + 1)
    if rows.stop > rows.start and cols.stop > cols.start:
        gain, offset = _guided_coefficients(guide[rows, cols], target[rows, cols], radius, eps)
        band = unknown[rows, cols]
        mean_gain[rows, cols] = gain * band
        mean_offset[rows, cols] = certain[rows, cols] + band * (offset - certain[rows, cols])
    alpha_preview = np.clip(mean_gain * guide + mean_offset, 0.0, 1.0)

    height, width = image.shape[:2]
    if (height, width) == (preview_h, preview_w):
        full = cv2.convertScaleAbs(alpha_preview, alpha=255.0)
        return Alpha(full=full, preview=alpha_preview)
    # Full resolution: alpha = gain * gray + offset, with the two planes upsampled.
    return Alpha(full=ops.matte(mean_gain, mean_offset * 255.0, image), preview=alpha_preview)
