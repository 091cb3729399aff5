"""Decoding to an upright 8-bit BGR array, and encoding the result (OpenCV, libjpeg-turbo)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.errors import ImageError
from backdrop.params import OutputFormat
from backdrop.probe import ImageInfo, probe_image
from backdrop.settings import Settings


@dataclass(frozen=True)
class DecodedImage:
    """An upright image: ``bgr`` is HxWx3 uint8 (any transparency flattened onto white), ``alpha`` the
    input's own alpha channel (HxW uint8) or None when the input was opaque."""

    bgr: np.ndarray
    alpha: np.ndarray | None
    info: ImageInfo


def load_image(data: bytes, settings: Settings) -> DecodedImage:
    """Probe (limits checked from the header), then decode."""
    info = probe_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    return decode_image(data, info)


def decode_image(data: bytes, info: ImageInfo) -> DecodedImage:
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha; the EXIF orientation is applied below from the probe.
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(f"the {info.format.value} data could not be decoded (truncated or damaged)")
    if pixels.shape[:2] != (info.height, info.width):
        raise ImageError(
            f"decoded size {pixels.shape[1]}x{pixels.shape[0]} disagrees with the header {info.width}x{info.height}"
        )
    pixels = _to_8bit(pixels)
    bgr, alpha = _split_alpha(pixels)
    bgr = apply_orientation(bgr, info.orientation)
    if alpha is not None:
        alpha = apply_orientation(alpha, info.orientation)
    return DecodedImage(bgr=np.ascontiguousarray(bgr), alpha=alpha, info=info)


def _to_8bit(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    raise ImageError(f"unsupported sample type {pixels.dtype}", code="unsupported_format")


def _split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR), None
    channels = pixels.shape[2]
    if channels == 1:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR), None
    if channels == 3:
        return pixels, None
    if channels == 2:
        gray, alpha = pixels[..., 0], pixels[..., 1]
        bgr = cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2BGR)
    elif channels == 4:
        bgr, alpha = pixels[..., :3], pixels[..., 3]
    else:
        raise ImageError(f"unsupported channel count {channels}", code="unsupported_format")
    alpha = np.ascontiguousarray(alpha)
    if alpha.min() == 255:
        return np.ascontiguousarray(bgr), None
    # Flatten onto white: what a viewer shows, and what the model should see.
    white = np.full_like(bgr, 255)
    weight = alpha.astype(np.float32) / 255
    flat = cv2.blendLinear(np.ascontiguousarray(bgr), white, weight, 1 - weight)
    return flat, alpha


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright according to the EXIF orientation tag (1–8)."""
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def encode_image(pixels: np.ndarray, fmt: OutputFormat, quality: int) -> bytes:
    """Encode BGR, BGRA or single-channel pixels. No metadata is written (EXIF, GPS are dropped). ZIP: a
    BGRA cut-out as ``color.jpg`` (its colours, edge colours included) and ``alpha.png`` (its matte)."""
    if fmt is OutputFormat.ZIP:
        if pixels.ndim != 3 or pixels.shape[2] != 4:
            raise ImageError("a ZIP holds a cut-out (colours and matte)", code="unsupported_format")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # both parts are compressed already
            archive.writestr(
                "color.jpg", encode_image(np.ascontiguousarray(pixels[..., :3]), OutputFormat.JPEG, quality)
            )
            archive.writestr("alpha.png", encode_image(np.ascontiguousarray(pixels[..., 3]), OutputFormat.PNG, quality))
        return buffer.getvalue()
    if fmt is OutputFormat.JPEG:
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            raise ImageError("JPEG cannot hold transparency", code="unsupported_format")
        ok, buffer = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    elif fmt is OutputFormat.PNG:
        # Level 3 keeps large PNGs quick to write at a small size cost; PNG is lossless, so no quality.
        ok, buffer = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buffer = cv2.imencode(".webp", pixels, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ImageError(f"could not encode the result as {fmt.value}", code="encode_failed")
    return buffer.tobytes()
