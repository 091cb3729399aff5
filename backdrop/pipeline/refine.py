"""From a coarse model probability to a full-resolution alpha matte.

1. ``clean_probability``: regions a confirming model does not see as the target (a coat on a chair
   that a person-only model took for a person) and small blobs far from the main subject are removed,
   at model resolution.
2. ``refine_alpha``: a fast guided filter (He & Sun, 2015) fits the upsampled probability to the photo's
   own edges: coefficients are solved on the shared preview and applied to the full-resolution photo,
   so edges are full-resolution and soft where the photo is (hair), at a fraction of the cost.
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


@dataclass(frozen=True)
class Alpha:
    """The matte at full resolution (HxW uint8, 255 = subject) and at preview resolution (float32 0–1)."""

    full: np.ndarray
    preview: np.ndarray


def clean_probability(
    probability: np.ndarray, *, evidence: np.ndarray | None = None, drop_far_islands: bool = True
) -> np.ndarray:
    """``probability`` with unwanted subject regions (and soft haze away from kept ones) set to 0.

    ``evidence``: a boolean mask (any resolution) from a second model that knows the target class; a
    region of the first model is kept only where enough of it is confirmed there. ``drop_far_islands``
    drops small regions far from the main subject.
    """
    mask = (probability >= 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    candidate = np.ones(count, dtype=bool)
    candidate[0] = False  # label 0 is the background
    if evidence is not None:
        evidence = cv2.resize(evidence.astype(np.uint8), mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
        evidence = cv2.dilate(evidence, np.ones((3, 3), np.uint8), iterations=EVIDENCE_SLACK_PIXELS) > 0
        confirmed = np.bincount(labels[evidence], minlength=count)
        candidate &= confirmed >= EVIDENCE_MIN_SHARE * areas
    if not candidate.any():
        return np.zeros_like(probability)
    keep = candidate.copy()
    if drop_far_islands:
        large = candidate & (areas >= ISLAND_MIN_AREA * areas[candidate].max())
        gap_to_large = cv2.distanceTransform((~large[labels]).astype(np.uint8), cv2.DIST_L2, 3)
        limit = ISLAND_MAX_GAP * math.hypot(*probability.shape)
        for component in np.flatnonzero(candidate & ~large):
            keep[component] = gap_to_large[labels == component].min() <= limit
    distance_to_kept = cv2.distanceTransform((~keep[labels]).astype(np.uint8), cv2.DIST_L2, 3)
    result = probability.copy()
    result[distance_to_kept > RIM_PIXELS] = 0.0
    return result


def _box(pixels: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(pixels, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def refine_alpha(
    probability: np.ndarray, image: np.ndarray, preview: np.ndarray, *, eps: float = 1e-3, ops: PixelOps = OPENCV
) -> Alpha:
    """Guided-filter ``probability`` (any resolution) against ``image``, solving on ``preview``."""
    preview_h, preview_w = preview.shape[:2]
    guide = cv2.cvtColor(preview, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    target = cv2.resize(probability, (preview_w, preview_h), interpolation=cv2.INTER_LINEAR)
    # About two model pixels: wide enough to cover the model's uncertain band at the edge.
    model_scale = max(preview_h, preview_w) / max(probability.shape)
    radius = max(1, round(2 * model_scale))

    mean_guide = _box(guide, radius)
    mean_target = _box(target, radius)
    var_guide = _box(guide * guide, radius) - mean_guide * mean_guide
    cov = _box(guide * target, radius) - mean_guide * mean_target
    gain = cov / (var_guide + eps)
    offset = mean_target - gain * mean_guide
    mean_gain = _box(gain, radius)
    mean_offset = _box(offset, radius)
    alpha_preview = np.clip(mean_gain * guide + mean_offset, 0.0, 1.0)

    height, width = image.shape[:2]
    if (height, width) == (preview_h, preview_w):
        full = cv2.convertScaleAbs(alpha_preview, alpha=255.0)
        return Alpha(full=full, preview=alpha_preview)
    # Full resolution: alpha = gain * gray + offset, with the two planes upsampled.
    return Alpha(full=ops.matte(mean_gain, mean_offset * 255.0, image), preview=alpha_preview)
