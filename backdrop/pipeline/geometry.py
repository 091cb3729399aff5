"""Resizing helpers shared by every stage."""

from __future__ import annotations

import math

import cv2
import numpy as np


def resize_to(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    shrinking = width * height < pixels.shape[0] * pixels.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def make_preview(image: np.ndarray, long_side: int) -> np.ndarray:
    """A reduced copy (long side at most ``long_side``) that the low-resolution stages share.

    Shrinks by a whole factor: OpenCV's area averaging is several times faster then."""
    height, width = image.shape[:2]
    factor = math.ceil(max(width, height) / long_side)
    if factor <= 1:
        return image
    return resize_to(image, max(1, width // factor), max(1, height // factor))
