"""Telling a photo from a video by its first bytes (no decoding, no heavy imports): the command line and
the client choose the upload's field with it; the probes (``backdrop.probe``, ``backdrop.video.probe``)
then check the whole file."""

from __future__ import annotations

from backdrop.params import MediaKind

HEAD_BYTES = 16


def looks_like_image(head: bytes) -> bool:
    """JPEG, PNG or WebP."""
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def looks_like_video(head: bytes) -> bool:
    """An ISO media file (MP4, MOV, M4V), Matroska/WebM, AVI or GIF."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free")
        or head.startswith(b"\x1a\x45\xdf\xa3")
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith((b"GIF87a", b"GIF89a"))
    )


def media_kind(head: bytes) -> MediaKind:
    """A video when the first bytes say so; otherwise an image (whose probe refuses what it is not)."""
    return MediaKind.VIDEO if looks_like_video(head) and not looks_like_image(head) else MediaKind.IMAGE
