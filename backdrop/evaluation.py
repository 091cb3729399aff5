"""Scoring mattes against reference masks, and masks against time: the numbers the quality and video
benchmarks (and their regression tests) print. Pure functions over numpy arrays.

Mask scores follow the evaluation set's own definition: the matte is thresholded at 0.5; IoU; boundary F
with a tolerance of 0.75 % of the image diagonal (at least one pixel); MAE of the soft matte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

BOUNDARY_TOLERANCE_SHARE = 0.0075
# Flicker is measured where the picture itself barely changed between two frames.
STILL_PIXEL_MAX_DIFFERENCE = 4


@dataclass(frozen=True)
class MaskScore:
    iou: float
    boundary_f: float
    mae: float


def boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a background pixel among their 8 neighbours (outside the image is not background)."""
    as_bytes = mask.astype(np.uint8)
    return (as_bytes > 0) & (cv2.erode(as_bytes, np.ones((3, 3), np.uint8)) == 0)


def _within(points: np.ndarray, reference: np.ndarray, tolerance: float) -> float:
    """The share of ``points`` lying within ``tolerance`` pixels of a ``reference`` pixel."""
    distance = cv2.distanceTransform((~reference).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(np.count_nonzero(distance[points] <= tolerance)) / np.count_nonzero(points)


def boundary_f(predicted: np.ndarray, reference: np.ndarray) -> float:
    """F measure of the two masks' boundaries, each matched within 0.75 % of the diagonal."""
    ours, theirs = boundary(predicted), boundary(reference)
    if not ours.any() or not theirs.any():
        return 1.0 if not ours.any() and not theirs.any() else 0.0
    tolerance = max(1.0, BOUNDARY_TOLERANCE_SHARE * math.hypot(*predicted.shape[:2]))
    precision, recall = _within(ours, theirs, tolerance), _within(theirs, ours, tolerance)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def score_matte(matte: np.ndarray, reference: np.ndarray) -> MaskScore:
    """``matte``: soft 0–1 (float) or 0–255 (uint8) at the reference's size; ``reference``: boolean or 0/255."""
    soft = matte.astype(np.float32) / 255.0 if matte.dtype == np.uint8 else matte.astype(np.float32)
    truth = reference > (127 if reference.dtype == np.uint8 else 0.5)
    if soft.shape != truth.shape:
        raise ValueError(f"matte {soft.shape} and reference {truth.shape} differ in size")
    predicted = soft >= 0.5
    union = np.count_nonzero(predicted | truth)
    iou = 1.0 if union == 0 else np.count_nonzero(predicted & truth) / union
    return MaskScore(
        iou=float(iou),
        boundary_f=boundary_f(predicted, truth),
        mae=float(np.mean(np.abs(soft - truth.astype(np.float32)))),
    )


def still_pixels(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Pixels whose colour barely changed between two frames: max channel difference below 4 after a
    5x5 Gaussian blur of both (sensor noise and compression aside, nothing moved there)."""
    smooth_previous = cv2.GaussianBlur(previous, (5, 5), 0).astype(np.int16)
    smooth_current = cv2.GaussianBlur(current, (5, 5), 0).astype(np.int16)
    difference = np.abs(smooth_current - smooth_previous)
    if difference.ndim == 3:
        difference = difference.max(axis=2)
    return difference < STILL_PIXEL_MAX_DIFFERENCE


def flicker(frames: list[np.ndarray], mattes: list[np.ndarray]) -> float:
    """Mean over consecutive frame pairs of mean |alpha_t - alpha_t-1| over the still pixels (alpha 0–1)."""
    if len(frames) != len(mattes):
        raise ValueError("one matte per frame")
    changes = []
    for t in range(1, len(frames)):
        still = still_pixels(frames[t - 1], frames[t])
        if not still.any():
            continue
        before = mattes[t - 1].astype(np.float32) / (255.0 if mattes[t - 1].dtype == np.uint8 else 1.0)
        after = mattes[t].astype(np.float32) / (255.0 if mattes[t].dtype == np.uint8 else 1.0)
        changes.append(float(np.mean(np.abs(after - before)[still])))
    return float(np.mean(changes)) if changes else 0.0
