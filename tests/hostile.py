"""A corpus of hostile and unusual uploads, generated (nothing binary is committed).

Each case says what the API must answer: ``ok`` (accepted and processed to success), ``processed``
(accepted, then succeeded or failed with an image error code), or the 4xx status it must refuse with.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from skimage import data as samples

IMAGE_ERROR_CODES = {"empty_image", "image_too_large", "unsupported_format", "animated_image", "corrupt_image"}


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str | int  # "ok", "processed", or an HTTP status
    filename: str = "photo.jpg"
    fields: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_bomb() -> bytes:
    """An extended WebP header declaring a 16384x16384 canvas around a tiny frame."""
    small = _save(Image.new("RGB", (16, 16)), "WEBP", lossless=True)
    frame = small[12:]  # the VP8L chunk
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + struct.pack("<I", 16383)[:3] * 2
    body = b"WEBP" + vp8x + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)


def with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(rgb), "JPEG", quality=90, exif=exif.tobytes())


def corpus() -> list[Case]:
    astronaut = samples.astronaut()
    photo = _save(Image.fromarray(astronaut), "JPEG", quality=90)
    png = _save(Image.fromarray(astronaut[:256, :256]), "PNG")
    rng = np.random.default_rng(11)
    flipped = []
    for index in range(3):
        damaged = bytearray(photo)
        for position in rng.integers(200, len(damaged), 12):
            damaged[position] ^= 1 << int(rng.integers(0, 8))
        flipped.append(Case(f"bit-flipped jpeg {index}", bytes(damaged), "processed"))
    deep = _save(Image.fromarray(astronaut[:, :, 0].astype(np.uint16) * 257), "PNG")
    zip_bytes = b"PK\x03\x04" + b"\0" * 26 + b"PK\x05\x06" + b"\0" * 18
    cases = [
        Case("png bomb 100k x 100k", png_bomb(100_000, 100_000), 413),
        Case("png bomb 20k x 20k", png_bomb(20_000, 20_000), 413),
        Case("jpeg bomb 60k x 60k", jpeg_bomb(60_000, 60_000), 413),
        Case("webp bomb 16k x 16k", webp_bomb(), 413),
        Case("truncated jpeg", photo[: len(photo) // 2], 415),
        Case("truncated png", png[: len(png) // 2], 415),
        *flipped,
        Case("zero bytes", b"", 400),
        Case("html renamed .jpg", b"<!doctype html><script>alert(1)</script>", 415),
        Case("svg renamed .jpg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415),
        Case("pdf renamed .jpg", b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF", 415),
        Case("zip renamed .jpg", zip_bytes, 415),
        Case("jpeg magic then html", b"\xff\xd8\xff\xe0<html><body>not really</body></html>", 415),
        Case("polyglot jpeg + zip", photo + zip_bytes, "ok"),
        Case("gif + script polyglot", b"GIF89a/*\x01\x00\x01\x00*/=alert(1);", 415),
        Case("animated gif", animated("GIF"), 415),
        Case("animated webp", animated("WEBP"), 415),
        Case("16-bit png", deep, "ok"),
        Case("cmyk jpeg", _save(Image.fromarray(astronaut).convert("CMYK"), "JPEG"), "ok"),
        Case("greyscale png", _save(Image.fromarray(astronaut).convert("L"), "PNG"), "ok"),
        Case("1x1 png", _save(Image.new("RGB", (1, 1), "white"), "PNG"), "ok"),
        Case("20000x1 png", _save(Image.new("RGB", (20000, 1), "gray"), "PNG"), "ok"),
        *(Case(f"exif orientation {o}", with_orientation(astronaut[:, :400], o), "ok") for o in range(1, 9)),
        Case("path traversal name", photo, "ok", filename="../../../../etc/passwd.jpg"),
        Case("unicode name", photo, "ok", filename="фото 😀 ％.jpg"),
        Case("control chars in name", photo, "ok", filename="a\r\nb\tc.jpg"),
        Case("unknown effect", photo, 400, fields={"effect": "sparkle"}),
        Case("unknown target", photo, 422, fields={"targets": "dragon"}),
        Case("unknown model", photo, 422, fields={"model": "../../etc/passwd"}),
        Case("target model cannot do", photo, 422, fields={"targets": "cat", "model": "selfie"}),
        Case("bad colour", photo, 422, fields={"effect": "color", "color": "#12"}),
        Case("bad colour words", photo, 422, fields={"effect": "color", "color": "red; drop table"}),
        Case("negative strength", photo, 400, fields={"strength": "-5"}),
        Case("absurd strength", photo, 400, fields={"strength": "1e309"}),
        Case("huge strength", photo, 400, fields={"strength": "9" * 500}),
        Case("bad quality", photo, 400, fields={"quality": "0"}),
        Case("bad format", photo, 400, fields={"format": "gif"}),
        Case("oversize idempotency key", photo, 400, headers={"Idempotency-Key": "k" * 1000}),
        Case("unprintable idempotency key", photo, 400, headers={"Idempotency-Key": "a\tb"}),
    ]
    return cases
