"""Resizing helpers shared by every stage."""

from __future__ import annotations

import cv2
import numpy as np


def resize_to(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    shrinking = width * height < pixels.shape[0] * pixels.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def fit_long_side(width: int, height: int, long_side: float) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``long_side`` (never below 1 pixel)."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_preview(image: np.ndarray, long_side: int) -> np.ndarray:
    """A reduced copy (long side at most ``long_side``) that the low-resolution stages share."""
    height, width = image.shape[:2]
    if max(width, height) <= long_side:
        return image
    return resize_to(image, *fit_long_side(width, height, long_side))
