"""Effects: build a background, then composite the subject over it with the alpha matte.

Blurs are computed at reduced resolution (the image is shrunk so the blur radius is a fixed number of
pixels there, then enlarged back), so their cost does not grow with strength. They are normalised
convolutions weighted by "is background", so the subject's colours never bleed into the blurred
background around it (no halo).

On a new background (colour, replace) and in cutouts, the matte's soft edge pixels would carry the old
background's colour with them: a light glow around a head shot against a white wall. There the
subject's own colour is estimated first (``edge_colours``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.params import Bokeh, Effect, JobParams
from backdrop.pipeline.pixels import OpenCVPixels, PixelOps

OPENCV = OpenCVPixels()

# Subject colours at the matte's edge are estimated from clear subject and background pixels within about
# this share of the photo's longer side (two model pixels: from anywhere in the matte's soft band, the
# nearest clear pixels on both sides). Mean colours are smooth: they are found on a copy of about this
# long side, and the edge's detail is kept at full size.
EDGE_COLOUR_SHARE = 2 / 256
EDGE_COLOUR_LONG_SIDE = 384
# Blur radius at strength 1 and 100, as a share of the image's longer side.
MIN_RADIUS_SHARE = 0.004
MAX_RADIUS_SHARE = 0.06
# Radius, in pixels of the reduced image, at which each blur is computed; a disc needs more pixels
# than a Gaussian to keep its crisp bokeh edge.
WORK_RADIUS = {Bokeh.GAUSSIAN: 8.0, Bokeh.LENS: 12.0}
# Lens: highlights above this linear brightness gain up to BLOOM_GAIN times their energy, so they
# spread into bright discs the way point lights do through a real lens.
BLOOM_THRESHOLD = 0.9
BLOOM_GAIN = 6.0
_GAMMA = 2.2
_SRGB_TO_LINEAR = ((np.arange(256, dtype=np.float32) / 255.0) ** _GAMMA).astype(np.float32)


def blur_radius(strength: int, width: int, height: int) -> float:
    """Blur radius in pixels for a strength of 1–100."""
    share = MIN_RADIUS_SHARE + (MAX_RADIUS_SHARE - MIN_RADIUS_SHARE) * (strength - 1) / 99
    return share * max(width, height)


def background_weight(alpha: np.ndarray) -> np.ndarray:
    """How much a pixel may contribute to the blurred background: 1 for clear background, 0 from
    half-subject on, so soft edge pixels do not carry the subject's colour outwards."""
    return np.square(np.clip(1.0 - 2.0 * alpha, 0.0, 1.0)).astype(np.float32)


def disc_kernel(radius: float) -> np.ndarray:
    """A normalised, anti-aliased disc: the aperture of a lens."""
    half = math.ceil(radius)
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return (kernel / kernel.sum()).astype(np.float32)


def blurred_background(
    image: np.ndarray,
    preview: np.ndarray,
    alpha_preview: np.ndarray,
    strength: int,
    bokeh: Bokeh,
    ops: PixelOps = OPENCV,
    coarse: np.ndarray | None = None,
) -> np.ndarray:
    """The background of ``image`` blurred at ``strength``, with the subject left out (full-res uint8).

    ``preview`` is ``image`` shrunk (or ``image`` itself); ``alpha_preview`` the matte at its size;
    ``coarse``, if given, a smaller copy of the preview, shrunk from when the blur's working size allows."""
    height, width = image.shape[:2]
    radius = blur_radius(strength, width, height)
    # Never finer than the shared preview: that bounds the cost of weak blurs on huge photos, and the
    # full-resolution image is never shrunk a second time.
    factor = max(radius / WORK_RADIUS[bokeh], width / preview.shape[1], height / preview.shape[0])
    work_w, work_h = (
        min(preview.shape[1], max(1, round(width / factor))),
        min(preview.shape[0], max(1, round(height / factor))),
    )
    fine_enough = coarse is not None and coarse.shape[1] >= work_w and coarse.shape[0] >= work_h
    small = ops.resize(coarse if fine_enough else preview, work_w, work_h)
    weight = background_weight(ops.resize(alpha_preview, work_w, work_h))
    work_radius = radius / factor

    if bokeh is Bokeh.LENS:
        light = cv2.LUT(small, _SRGB_TO_LINEAR)
        brightness = light.max(axis=2)
        ramp = np.clip((brightness - BLOOM_THRESHOLD) / (1.0 - BLOOM_THRESHOLD), 0.0, 1.0)
        light *= (1.0 + (BLOOM_GAIN - 1.0) * ramp * ramp)[..., None]
        kernel = disc_kernel(work_radius)

        def spread(x: np.ndarray) -> np.ndarray:
            return ops.convolve(x, kernel)
    else:
        light = small.astype(np.float32)
        sigma = max(work_radius / 2.0, 0.5)

        def spread(x: np.ndarray) -> np.ndarray:
            return ops.gaussian(x, sigma)

    # Normalised convolution: sum(background colour) / sum(background weight). The small constant term
    # falls back to the unblurred pixel deep inside the subject, where no background is near (hidden
    # by the subject anyway).
    floor = 1e-3
    numerator = spread(light * weight[..., None]) + floor * light
    denominator = spread(weight) + floor
    blurred = numerator / denominator[..., None]

    if bokeh is Bokeh.LENS:
        blurred = cv2.pow(np.clip(blurred, 0.0, 1.0), 1.0 / _GAMMA) * 255.0
    result = cv2.convertScaleAbs(blurred)  # saturating float → uint8 (values are never negative)
    return ops.resize(result, width, height)


def cover(background: np.ndarray, width: int, height: int, ops: PixelOps = OPENCV) -> np.ndarray:
    """Scale ``background`` to cover width x height (cropping the overflow, centred)."""
    bg_h, bg_w = background.shape[:2]
    scale = max(width / bg_w, height / bg_h)
    crop_w, crop_h = min(bg_w, max(1, round(width / scale))), min(bg_h, max(1, round(height / scale)))
    x0, y0 = (bg_w - crop_w) // 2, (bg_h - crop_h) // 2
    return ops.resize(np.ascontiguousarray(background[y0 : y0 + crop_h, x0 : x0 + crop_w]), width, height)


def _normalised_blur(pixels: np.ndarray, weight: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``weight``-weighted Gaussian mean colour around each pixel, and the weight found there."""
    found = cv2.GaussianBlur(weight, (0, 0), sigma)
    mean = cv2.GaussianBlur(pixels * weight[..., None], (0, 0), sigma) / np.maximum(found, 1e-6)[..., None]
    return mean, found


@dataclass(frozen=True)
class EdgeColours:
    """The matte's partly transparent pixels (``flat``: indexes into the image's pixels in row order),
    their alpha (0-1, Nx1) and the subject's own colour estimated at each (Nx3 float32 BGR)."""

    flat: np.ndarray
    alpha: np.ndarray
    colours: np.ndarray

    def write(self, pixels: np.ndarray) -> np.ndarray:
        """The estimated colours written into ``pixels`` (HxWx3 or HxWx4 uint8, changed in place)."""
        rows = pixels.reshape(-1, pixels.shape[2])
        rows[self.flat, :3] = np.clip(self.colours + 0.5, 0, 255).astype(np.uint8)
        return pixels

    def over(self, rendered: np.ndarray, background: np.ndarray) -> np.ndarray:
        """``rendered`` (the plain composite over ``background``) with each edge pixel composited again
        from the subject's estimated colour (in place)."""
        behind = background.reshape(-1, 3).take(self.flat, axis=0).astype(np.float32)
        mixed = behind + self.alpha * (self.colours - behind)
        rendered.reshape(-1, 3)[self.flat] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        return rendered


def edge_colours(image: np.ndarray, alpha_full: np.ndarray, small: np.ndarray, alpha_small: np.ndarray) -> EdgeColours:
    """The subject's own colour at each partly transparent pixel of the matte: what the pixel would show
    without the old background behind a hair or an edge.

    After blur fusion (Forte & Pitie, 2021): mean subject and background colours near each edge pixel,
    from the clear pixels of ``small`` (a reduced copy of ``image``; ``alpha_small`` its matte, float
    0-1), then a full-resolution correction that keeps the pixel's own detail:
    F = F_mean + a * (I - a * F_mean - (1 - a) * B_mean). Only pixels with 0 < a < 1 are computed, so the
    cost follows the edge's length, not the photo's size."""
    points = cv2.findNonZero(cv2.inRange(alpha_full, 1, 254))
    if points is None:
        return EdgeColours(np.zeros(0, np.intp), np.zeros((0, 1), np.float32), np.zeros((0, 3), np.float32))
    points = points.reshape(-1, 2)  # (x, y) pairs
    cols, rows = points[:, 0], points[:, 1]
    flat = rows.astype(np.intp) * image.shape[1] + cols
    sigma = max(0.7, EDGE_COLOUR_SHARE * max(small.shape[:2]))
    # Each edge pixel's place on the small copy (pixel centres); the means are needed only around them.
    scale_x, scale_y = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
    x = (cols + 0.5) * scale_x - 0.5
    y = (rows + 0.5) * scale_y - 0.5
    reach = math.ceil(3 * sigma) + 2
    x0, y0 = max(0, math.floor(x.min()) - reach), max(0, math.floor(y.min()) - reach)
    x1 = min(small.shape[1], math.ceil(x.max()) + reach + 1)
    y1 = min(small.shape[0], math.ceil(y.max()) + reach + 1)
    pixels = small[y0:y1, x0:x1].astype(np.float32)
    alpha_near = alpha_small[y0:y1, x0:x1]
    # Means of the clear pixels on each side (weights fall to 0 at half transparency), not of the mixed ones.
    subject_mean, subject_found = _normalised_blur(pixels, background_weight(1.0 - alpha_near), sigma)
    background_mean, _ = _normalised_blur(pixels, background_weight(alpha_near), sigma)
    # Sampled bilinearly at the edge pixels; remap's maps are images under 32767 wide, so the points go in
    # rows of 1024.
    padded = -rows.size % 1024
    map_x = np.pad(x - x0, (0, padded)).astype(np.float32).reshape(-1, 1024)
    map_y = np.pad(y - y0, (0, padded)).astype(np.float32).reshape(-1, 1024)

    def sample(plane: np.ndarray) -> np.ndarray:
        found = cv2.remap(plane, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return found.reshape(rows.size + padded, -1)[: rows.size]

    subject_at, background_at = sample(subject_mean), sample(background_mean)
    a = (alpha_full.reshape(-1).take(flat).astype(np.float32) * (1 / 255))[:, None]
    observed = image.reshape(-1, 3).take(flat, axis=0).astype(np.float32)
    # Where no clear subject pixel is near (a faint edge far out), the pixel's own colour stays.
    subject_at = np.where(sample(subject_found) > 1e-3, subject_at, observed)
    # F_mean + a * (I - a * F_mean - (1 - a) * B_mean), arranged to make fewer temporaries.
    residual = observed - background_at
    residual -= a * (subject_at - background_at)
    residual *= a
    residual += subject_at
    return EdgeColours(flat, a, np.clip(residual, 0.0, 255.0, out=residual))


def composite(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray, ops: PixelOps = OPENCV) -> np.ndarray:
    """``foreground * a + background * (1 - a)`` in uint8; exact where alpha is 0 or 255."""
    return ops.composite(foreground, background, alpha)


def onto_background(
    cutout: np.ndarray, params: JobParams, background: np.ndarray | None, ops: PixelOps = OPENCV
) -> np.ndarray:
    """A cut-out (BGRA, its edge colours already the subject's) over the job's new background: a picture
    (``replace``) or a colour, whose alpha below 255 leaves the result that transparent around the
    subject (BGRA then; BGR otherwise)."""
    height, width = cutout.shape[:2]
    colours, alpha = np.ascontiguousarray(cutout[..., :3]), np.ascontiguousarray(cutout[..., 3])
    if params.effect is Effect.REPLACE:
        if background is None:
            raise ValueError("effect replace needs a background image")
        return composite(colours, cover(background, width, height, ops), alpha, ops)
    red, green, blue, opacity = params.color
    back = np.empty_like(colours)
    back[:] = (blue, green, red)
    if opacity == 255:
        return composite(colours, back, alpha, ops)
    # The subject over a translucent colour: coverage a + o (1 - a), colour (a F + o (1 - a) B) / coverage.
    subject = alpha.astype(np.float32) * (1 / 255)
    under = (opacity / 255) * (1.0 - subject)
    coverage = subject + under
    mixed = colours * subject[..., None] + back * under[..., None]
    mixed /= np.maximum(coverage, 1e-6)[..., None]
    return cv2.merge(
        [*cv2.split(np.clip(mixed + 0.5, 0, 255).astype(np.uint8)), cv2.convertScaleAbs(coverage, alpha=255.0)]
    )


def with_input_alpha(alpha: np.ndarray, input_alpha: np.ndarray | None) -> np.ndarray:
    """The subject matte combined with the input's own transparency, if it had any."""
    if input_alpha is None:
        return alpha
    return cv2.multiply(alpha, input_alpha, scale=1 / 255)


def _edge_colour_copy(
    preview: np.ndarray, alpha_preview: np.ndarray, coarse: np.ndarray | None, ops: PixelOps
) -> tuple[np.ndarray, np.ndarray]:
    """The reduced copy (and its matte) that edge colours are estimated on: ``coarse`` when it is at least
    half of ``EDGE_COLOUR_LONG_SIDE`` long (or all of the preview), else the preview shrunk to that."""
    scale = min(1.0, EDGE_COLOUR_LONG_SIDE / max(preview.shape[:2]))
    width, height = max(1, round(preview.shape[1] * scale)), max(1, round(preview.shape[0] * scale))
    if coarse is not None and (2 * coarse.shape[1] >= width or coarse.shape[1] == preview.shape[1]):
        small = coarse
    else:
        small = ops.resize(preview, width, height)
    return small, ops.resize(alpha_preview, small.shape[1], small.shape[0])


def apply_effect(
    image: np.ndarray,
    preview: np.ndarray,
    alpha_full: np.ndarray,
    alpha_preview: np.ndarray,
    params: JobParams,
    *,
    input_alpha: np.ndarray | None = None,
    background: np.ndarray | None = None,
    ops: PixelOps = OPENCV,
    coarse: np.ndarray | None = None,
) -> np.ndarray:
    """Render ``params.effect``. Returns BGR (most effects), BGRA (cutout) or one channel (mask).
    ``coarse``: a smaller copy of ``preview`` the blur may start from."""
    height, width = image.shape[:2]
    effect = params.effect
    if effect is Effect.CUTOUT:
        cut = cv2.merge([*cv2.split(image), with_input_alpha(alpha_full, input_alpha)])
        return edge_colours(image, alpha_full, *_edge_colour_copy(preview, alpha_preview, coarse, ops)).write(cut)
    if effect is Effect.MASK:
        return with_input_alpha(alpha_full, input_alpha)
    if effect is Effect.BLUR:
        back = blurred_background(image, preview, alpha_preview, params.strength, params.bokeh, ops, coarse)
    elif effect is Effect.GRAY:
        back = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    elif effect is Effect.COLOR:
        red, green, blue, _ = params.color  # a translucent colour is put under a cut-out (onto_background)
        back = np.empty_like(image)
        back[:] = (blue, green, red)
    elif effect is Effect.REPLACE:
        if background is None:
            raise ValueError("effect replace needs a background image")
        back = cover(background, width, height, ops)
    else:  # pragma: no cover - every Effect is handled above
        raise ValueError(f"unhandled effect {effect}")
    rendered = composite(image, back, alpha_full, ops)
    if effect in (Effect.COLOR, Effect.REPLACE):  # a background the photo's own edge colours do not match
        edges = edge_colours(image, alpha_full, *_edge_colour_copy(preview, alpha_preview, coarse, ops))
        return edges.over(rendered, back)
    return rendered
