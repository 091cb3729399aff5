"""Carrying the input's EXIF into the output, when a job asks to keep it (it is dropped by default:
EXIF can hold GPS positions and camera serial numbers)."""

from __future__ import annotations

import struct
import zlib

from PIL import Image

from backdrop.params import OutputFormat

_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION = 0x0112


def upright_exif(exif: bytes) -> bytes:
    """``exif`` (with or without the ``Exif\\0\\0`` header) with the orientation reset to 1: the pixels
    were already turned upright, and a kept tag would turn them again."""
    parsed = Image.Exif()
    parsed.load(exif if exif.startswith(_EXIF_HEADER) else _EXIF_HEADER + exif)
    if _ORIENTATION in parsed:
        parsed[_ORIENTATION] = 1
    return parsed.tobytes()


def attach_exif(encoded: bytes, fmt: OutputFormat, exif: bytes) -> bytes:
    """Insert an EXIF block (``Exif\\0\\0`` + TIFF) into encoded JPEG, PNG or WebP bytes."""
    tiff = exif[len(_EXIF_HEADER) :] if exif.startswith(_EXIF_HEADER) else exif
    if fmt is OutputFormat.JPEG:
        segment = _EXIF_HEADER + tiff
        if len(segment) + 2 > 0xFFFF:
            return encoded  # too large for one APP1 segment: drop rather than corrupt
        return encoded[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + encoded[2:]
    if fmt is OutputFormat.PNG:
        # After the 8-byte signature and the 25-byte IHDR chunk.
        chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
        return encoded[:33] + chunk + encoded[33:]
    return _webp_with_exif(encoded, tiff)


def _webp_chunks(body: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 0
    while offset + 8 <= len(body):
        kind, size = body[offset : offset + 4], struct.unpack("<I", body[offset + 4 : offset + 8])[0]
        chunks.append((kind, body[offset + 8 : offset + 8 + size]))
        offset += 8 + size + (size & 1)
    return chunks


def _webp_with_exif(encoded: bytes, tiff: bytes) -> bytes:
    """Simple WebP (VP8/VP8L) becomes extended (VP8X) with an EXIF chunk, as the container spec says."""
    chunks = _webp_chunks(encoded[12:])
    kinds = [kind for kind, _ in chunks]
    if b"VP8X" in kinds:
        header = bytearray(chunks[0][1])
        header[0] |= 0x08
        chunks[0] = (b"VP8X", bytes(header))
    else:
        width, height, alpha = _webp_size(chunks[0])
        flags = 0x08 | (0x10 if alpha else 0)
        size = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
        chunks.insert(0, (b"VP8X", bytes([flags, 0, 0, 0]) + size))
    chunks.append((b"EXIF", tiff))
    body = b"WEBP" + b"".join(
        kind + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"") for kind, data in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_size(chunk: tuple[bytes, bytes]) -> tuple[int, int, bool]:
    kind, data = chunk
    if kind == b"VP8L":
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    # Lossy: a 10-byte frame header; width and height are 14-bit fields after the start code.
    width, height = struct.unpack("<HH", data[6:10])
    return width & 0x3FFF, height & 0x3FFF, False
