"""The heavy per-pixel operations behind one small interface, with one registry.

``opencv`` (the default, for CPU workers) runs them with OpenCV, full-resolution steps striped over the
cores. ``tensorflow`` runs the same operations as TensorFlow ops, so on a GPU worker they run on the
device next to the model. Both give the same pixels within a small tolerance (tests check it).
"""

from __future__ import annotations

import importlib
from typing import Protocol

import cv2
import numpy as np

from backdrop.errors import BackdropError
from backdrop.pipeline.geometry import resize_to
from backdrop.pipeline.stripes import for_each_stripe


class PixelOps(Protocol):
    name: str

    def resize(self, pixels: np.ndarray, width: int, height: int) -> np.ndarray:
        """Area averaging when shrinking, bilinear when enlarging; keeps the dtype."""
        ...

    def gaussian(self, pixels: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur of a float32 image (mirrored borders)."""
        ...

    def convolve(self, pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Convolution of a float32 image with a 2-D kernel (mirrored borders)."""
        ...

    def matte(self, gain: np.ndarray, offset: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Full-resolution uint8 alpha = upsampled ``gain`` x gray(image) + upsampled ``offset`` (0-255)."""
        ...

    def composite(self, foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """``foreground * a + background * (1 - a)`` in uint8; exact where alpha is 0 or 255."""
        ...


class OpenCVPixels:
    name = "opencv"

    def resize(self, pixels: np.ndarray, width: int, height: int) -> np.ndarray:
        return resize_to(pixels, width, height)

    def gaussian(self, pixels: np.ndarray, sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(pixels, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)

    def convolve(self, pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return cv2.filter2D(pixels, -1, kernel, borderType=cv2.BORDER_REFLECT)

    def matte(self, gain: np.ndarray, offset: np.ndarray, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        gain_full = cv2.resize(gain, (width, height), interpolation=cv2.INTER_LINEAR)
        offset_full = cv2.resize(offset, (width, height), interpolation=cv2.INTER_LINEAR)
        alpha = np.empty((height, width), np.uint8)

        def apply(rows: slice) -> None:
            # cv2 arithmetic saturates to uint8 in one pass, far cheaper than numpy temporaries at 12 MP.
            gray = cv2.cvtColor(image[rows], cv2.COLOR_BGR2GRAY)
            scaled = cv2.multiply(gray, gain_full[rows], dtype=cv2.CV_32F)
            cv2.add(scaled, offset_full[rows], dst=alpha[rows], dtype=cv2.CV_8U)

        for_each_stripe(apply, height, width)
        return alpha

    def composite(self, foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        result = np.empty_like(foreground)

        def blend(rows: slice) -> None:
            alpha3 = cv2.merge([alpha[rows]] * 3)
            front = cv2.multiply(foreground[rows], alpha3, scale=1 / 255)
            back = cv2.multiply(background[rows], cv2.bitwise_not(alpha3), scale=1 / 255)
            cv2.add(front, back, dst=result[rows])

        for_each_stripe(blend, *alpha.shape)
        return result


# backend name -> "module:class"; TensorFlow is imported only when its backend is used.
PIXEL_BACKENDS: dict[str, str] = {
    "opencv": "backdrop.pipeline.pixels:OpenCVPixels",
    "tensorflow": "backdrop.pipeline.pixels_tf:TensorFlowPixels",
}


def pixel_ops(name: str) -> PixelOps:
    try:
        module_name, class_name = PIXEL_BACKENDS[name].split(":")
    except KeyError:
        known = ", ".join(PIXEL_BACKENDS)
        raise BackdropError(f"unknown pixel backend {name!r}; known: {known}", code="invalid_setting") from None
    return getattr(importlib.import_module(module_name), class_name)()
