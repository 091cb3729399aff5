"""What consecutive frames share: smoothing over time, and the expensive steps spread over frames.

Per-frame masks flicker: the model's answer for a pixel that did not change wobbles from frame to frame.
:class:`TemporalState` keeps the previous frame's subject probability and a small grey copy of it, and
blends the new probability with the old one where the picture stood still (an exponential moving
average whose weight falls to nothing where the picture moved), so still edges stop shimmering and
moving ones do not lag. It also remembers the expensive steps' results (the confirming model's pass,
the tiled scan, where to look closer) for ``refresh_every`` frames, so their cost is spread over frames.

One object per clip chunk or live session, held by the caller and passed to every frame; never shared
between sequences. Pure numpy/OpenCV (no PyAV), so the pipeline and live mode import it freely.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

# How much of the previous probability a still pixel keeps: the higher, the calmer and the slower.
HISTORY_WEIGHT = 0.75
# The same for the full-resolution matte, where the photo's own noise makes edges shimmer.
MATTE_HISTORY_WEIGHT = 0.85
# Grey-level change (0-255, after a small blur) at which a pixel counts as moving and keeps no history.
MOTION_LEVELS = 10.0
# Frames between two runs of the expensive steps (at 30 fps, three times a second).
REFRESH_EVERY = 10


class TemporalState:
    """The memory of one sequence of frames (a clip chunk, a live session)."""

    def __init__(self, *, refresh_every: int = REFRESH_EVERY, history_weight: float = HISTORY_WEIGHT) -> None:
        self.refresh_every = refresh_every
        self.history_weight = history_weight
        self.frames = 0
        self._gray: np.ndarray | None = None
        self._probability: np.ndarray | None = None
        self._remembered: dict[str, tuple[int, Any]] = {}
        self._blurred: np.ndarray | None = None
        self._matte: np.ndarray | None = None

    def recall(self, step: str) -> Any | None:
        """What ``step`` found on a recent frame, or None when it is due again (or never ran)."""
        found = self._remembered.get(step)
        if found is None or self.frames - found[0] >= self.refresh_every:
            return None
        return found[1]

    def remember(self, step: str, value: Any) -> None:
        self._remembered[step] = (self.frames, value)

    def previous(self) -> np.ndarray | None:
        """The last frame's smoothed probability (None before the first frame)."""
        return self._probability

    def smooth(self, probability: np.ndarray, preview: np.ndarray) -> np.ndarray:
        """This frame's probability blended with the last one's where the picture stood still; moves on
        to the next frame."""
        small = cv2.resize(preview, probability.shape[::-1], interpolation=cv2.INTER_AREA)
        gray = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0).astype(np.float32)
        smoothed = probability
        if self._probability is not None and self._gray is not None and self._probability.shape == probability.shape:
            motion = cv2.absdiff(gray, self._gray)
            weight = self.history_weight * np.clip(1.0 - motion / MOTION_LEVELS, 0.0, 1.0)
            smoothed = (weight * self._probability + (1.0 - weight) * probability).astype(np.float32)
        self._gray, self._probability = gray, smoothed
        self.frames += 1
        return smoothed

    def steady(self, matte: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The full-resolution matte (uint8) blended with the last frame's where the picture stood still
        (colour change under ``MOTION_LEVELS`` after a 5x5 blur), so edges do not shimmer with noise."""
        blurred = cv2.GaussianBlur(image, (5, 5), 0)
        current = matte.astype(np.float32)
        steadied = current
        if self._matte is not None and self._blurred is not None and self._matte.shape == current.shape:
            change = cv2.absdiff(blurred, self._blurred)
            if change.ndim == 3:  # the largest change of the three channels (OpenCV: far faster than numpy)
                blue, green, red = cv2.split(change)
                change = cv2.max(cv2.max(blue, green), red)
            weight = cv2.LUT(change, _MATTE_WEIGHTS)
            steadied = cv2.add(current, cv2.multiply(weight, cv2.subtract(self._matte, current)))
        self._blurred, self._matte = blurred, steadied
        return cv2.convertScaleAbs(steadied)  # rounds and saturates to uint8


# Weight of the last matte for each change level 0-255 (looked up, not computed per pixel).
_MATTE_WEIGHTS = (MATTE_HISTORY_WEIGHT * np.clip(1.0 - np.arange(256) / MOTION_LEVELS, 0.0, 1.0)).astype(np.float32)
