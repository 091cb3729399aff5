"""The result's frame: a region of interest the subject must lie in, a crop to the subject with a margin,
and the subject scaled and placed on the picture (what remove.bg calls roi, crop, crop_margin, scale and
position; ``JobParams`` documents the values).

Pure functions over numpy arrays. The subject is where the matte is not zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.errors import ParameterError
from backdrop.params import JobParams, Length


@dataclass(frozen=True)
class Frame:
    """Where a result's pixels come from and go: the ``source`` rectangle of the rendered image (x0, y0,
    x1, y1; it may reach beyond the image, which is then filled), drawn at ``dest`` (x, y, width, height)
    on a ``canvas`` (width, height)."""

    source: tuple[int, int, int, int]
    dest: tuple[int, int, int, int]
    canvas: tuple[int, int]


def region_of_interest(
    roi: tuple[Length, Length, Length, Length], width: int, height: int
) -> tuple[int, int, int, int]:
    """The rectangle (x0, y0, x1, y1) in pixels; refused when it holds no pixel of the image."""
    x1, y1, x2, y2 = (
        round(length.resolve(whole)) for length, whole in zip(roi, (width, height, width, height), strict=True)
    )
    x1, x2 = max(0, min(x1, x2)), min(width, max(x1, x2))
    y1, y2 = max(0, min(y1, y2)), min(height, max(y1, y2))
    if x2 <= x1 or y2 <= y1:
        raise ParameterError("roi", f"holds no pixel of the {width}x{height} image")
    return x1, y1, x2, y2


def outside_zeroed(matte: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``matte`` (any size; ``box`` in its pixels) with everything outside ``box`` set to 0."""
    x0, y0, x1, y1 = box
    kept = np.zeros_like(matte)
    kept[y0:y1, x0:x1] = matte[y0:y1, x0:x1]
    return kept


def subject_box(matte: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the matte's non-zero pixels (end exclusive), or None when it is empty."""
    rows = np.flatnonzero(matte.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(matte.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def plan_frame(
    box: tuple[int, int, int, int] | None, width: int, height: int, params: JobParams, *, within: bool = False
) -> Frame:
    """The frame of a width x height result whose subject lies in ``box``. Without a subject, or with no
    framing asked for, the result is left as it is. ``within``: a crop stays inside the image (a result
    whose background is the photo's own has nothing to fill a margin beyond it with)."""
    whole = Frame((0, 0, width, height), (0, 0, width, height), (width, height))
    if box is None or not params.framed:
        return whole
    x0, y0, x1, y1 = box
    subject_w, subject_h = x1 - x0, y1 - y0
    canvas = (width, height)
    if params.crop:
        top, right, bottom, left = (
            round(length.resolve(size))
            for length, size in zip(params.crop_margin, (subject_h, subject_w, subject_h, subject_w), strict=True)
        )
        source = (x0 - left, y0 - top, x1 + right, y1 + bottom)
        if within:
            source = (max(0, source[0]), max(0, source[1]), min(width, source[2]), min(height, source[3]))
        canvas = (source[2] - source[0], source[3] - source[1])
        if params.scale is None and params.position is None:
            return Frame(source, (0, 0, *canvas), canvas)
    factor = 1.0
    if params.scale is not None:
        factor = params.scale * min(canvas[0] / subject_w, canvas[1] / subject_h)
    dest_w, dest_h = max(1, round(subject_w * factor)), max(1, round(subject_h * factor))
    across, down = params.position or (0.5, 0.5)
    dest = (round(across * (canvas[0] - dest_w)), round(down * (canvas[1] - dest_h)), dest_w, dest_h)
    return Frame(box, dest, canvas)


def place(pixels: np.ndarray, frame: Frame, fill: float | tuple[float, ...] = 0) -> np.ndarray:
    """``pixels`` (HxW or HxWxC) drawn as ``frame`` says, on a canvas of ``fill``."""
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = frame.source
    if frame.source == (0, 0, width, height) and frame.dest == (0, 0, width, height):
        return pixels
    # The source rectangle, with what lies beyond the image filled.
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    region = pixels[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    if any(pad):
        region = cv2.copyMakeBorder(region, *pad, cv2.BORDER_CONSTANT, value=fill)
    dx, dy, dw, dh = frame.dest
    if (dw, dh) != (region.shape[1], region.shape[0]):
        shrinking = dw * dh < region.shape[0] * region.shape[1]
        region = cv2.resize(region, (dw, dh), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    canvas_w, canvas_h = frame.canvas
    canvas = np.empty((canvas_h, canvas_w, *pixels.shape[2:]), pixels.dtype)
    canvas[:] = fill
    # The subject may reach beyond the canvas (a position at the edge with a large subject): clip it.
    cx0, cy0 = max(0, dx), max(0, dy)
    cx1, cy1 = min(canvas_w, dx + dw), min(canvas_h, dy + dh)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = region[cy0 - dy : cy1 - dy, cx0 - dx : cx1 - dx]
    return canvas
