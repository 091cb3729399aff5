"""Probing and decoding: limits from the header, hostile and unusual files, orientation."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from backdrop.errors import ImageError
from backdrop.params import OutputFormat
from backdrop.pipeline.imageio import encode_image, load_image
from backdrop.settings import Settings
from tests.conftest import encode_rgb
from tests.hostile import jpeg_bomb, png_bomb

SETTINGS = Settings(max_image_bytes=5_000_000, max_image_pixels=40_000_000)


def code_of(data: bytes, settings: Settings = SETTINGS) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(data, settings)
    return caught.value.code


@pytest.mark.parametrize("bomb", [png_bomb(100_000, 100_000), png_bomb(20_000, 20_000), jpeg_bomb(60_000, 60_000)])
def test_bomb_refused_from_header_before_any_large_allocation(bomb):
    tracemalloc.start()
    try:
        assert code_of(bomb) == "image_too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_webp_bomb_refused():
    small = encode_rgb(np.zeros((8, 8, 3), np.uint8), "WEBP")
    assert code_of(small, Settings(max_image_pixels=32)) == "image_too_large"


def test_byte_limit():
    data = encode_rgb(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8), "PNG")
    assert code_of(data, Settings(max_image_bytes=len(data) - 1)) == "image_too_large"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"<!doctype html><html><body>hello</body></html>", "unsupported_format"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "unsupported_format"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "unsupported_format"),
        (b"PK\x03\x04" + b"\0" * 60, "unsupported_format"),
        (b"\xff\xd8\xff", "corrupt_image"),
        (b"\x89PNG\r\n\x1a\n\0\0", "corrupt_image"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "corrupt_image"),
    ],
)
def test_not_images(data, code):
    assert code_of(data) == code


def test_other_image_formats_are_unsupported():
    rgb = np.zeros((8, 8, 3), np.uint8)
    assert code_of(encode_rgb(rgb, "BMP")) == "unsupported_format"
    assert code_of(encode_rgb(rgb, "GIF")) == "unsupported_format"


def test_truncated_jpeg_is_corrupt(astronaut_jpeg):
    assert code_of(astronaut_jpeg[: len(astronaut_jpeg) // 2]) == "corrupt_image"


def test_truncated_png_is_corrupt(astronaut):
    data = encode_rgb(astronaut, "PNG")
    assert code_of(data[: len(data) // 2]) == "corrupt_image"


def test_bit_flipped_jpeg_never_crashes(astronaut_jpeg):
    rng = np.random.default_rng(7)
    for _ in range(40):
        damaged = bytearray(astronaut_jpeg)
        for position in rng.integers(0, len(damaged), 8):
            damaged[position] ^= 1 << int(rng.integers(0, 8))
        try:
            image = load_image(bytes(damaged), SETTINGS)
        except ImageError as exc:
            assert exc.code in {"corrupt_image", "unsupported_format", "image_too_large"}
        else:
            assert image.bgr.dtype == np.uint8 and image.bgr.ndim == 3


@pytest.mark.parametrize("fmt", ["WEBP", "GIF"])
def test_animated_images_refused(fmt):
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100)
    assert code_of(buffer.getvalue()) in ({"animated_image"} if fmt == "WEBP" else {"unsupported_format"})


def test_animated_png_refused():
    frames = [Image.new("RGB", (16, 16), color) for color in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    assert code_of(buffer.getvalue()) == "animated_image"


def test_wrong_extension_does_not_matter(astronaut):
    # Content decides: PNG bytes are a PNG whatever the file was called.
    image = load_image(encode_rgb(astronaut, "PNG"), SETTINGS)
    assert image.info.format is OutputFormat.PNG
    assert np.array_equal(image.bgr[..., ::-1], astronaut)


def test_cmyk_jpeg(astronaut):
    buffer = io.BytesIO()
    Image.fromarray(astronaut).convert("CMYK").save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = load_image(data, SETTINGS)
    assert image.bgr.shape == astronaut.shape
    assert np.abs(image.bgr[..., ::-1].astype(int) - astronaut).mean() < 6


def test_grayscale_and_16_bit(astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    image = load_image(encode_rgb(gray, "PNG"), SETTINGS)
    assert image.bgr.shape == (*gray.shape, 3) and np.array_equal(image.bgr[..., 0], gray)

    deep = Image.fromarray(gray.astype(np.uint16) * 257)
    buffer = io.BytesIO()
    deep.save(buffer, "PNG")
    image = load_image(buffer.getvalue(), SETTINGS)
    assert np.array_equal(image.bgr[..., 1], gray)

    rgb16 = astronaut.astype(np.uint16) * 257
    import cv2

    _ok, png16 = cv2.imencode(".png", rgb16[..., ::-1])
    image = load_image(png16.tobytes(), SETTINGS)
    assert np.array_equal(image.bgr[..., ::-1], astronaut)


def test_alpha_is_flattened_on_white_and_kept():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 5:, 3] = 255
    image = load_image(encode_rgb(rgba, "PNG"), SETTINGS)
    assert image.alpha is not None and image.alpha[0, 0] == 0 and image.alpha[0, 9] == 255
    assert tuple(image.bgr[0, 0]) == (255, 255, 255)
    assert tuple(image.bgr[0, 9]) == (0, 0, 200)


def test_palette_png(astronaut):
    data = encode_rgb(np.asarray(Image.fromarray(astronaut).quantize(64).convert("RGB")), "PNG")
    paletted = io.BytesIO()
    Image.open(io.BytesIO(data)).quantize(64).save(paletted, "PNG")
    assert load_image(paletted.getvalue(), SETTINGS).bgr.shape == astronaut.shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(orientation):
    # An upright picture: a red top-left corner in a 3:2 landscape frame.
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:10, :10] = (255, 0, 0)
    stored = np.asarray(Image.fromarray(upright).transpose(_INVERSE[orientation])) if orientation > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode_rgb(stored, "JPEG", quality=98, exif=exif.tobytes())
    image = load_image(data, SETTINGS)
    assert image.bgr.shape == upright.shape
    assert image.info.size == (60, 40)
    assert image.bgr[5, 5, 2] > 200 and image.bgr[35, 55, 2] < 50


# Pillow transposes that store an upright image under each EXIF orientation.
_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 2000, 3), (2000, 1, 3)])
def test_tiny_and_extreme_shapes_decode(shape):
    image = load_image(encode_rgb(np.full(shape, 90, np.uint8), "PNG"), SETTINGS)
    assert image.bgr.shape == shape


def test_encode_formats_round_trip(astronaut):
    bgr = np.ascontiguousarray(astronaut[..., ::-1])
    for fmt, magic in [(OutputFormat.JPEG, b"\xff\xd8"), (OutputFormat.PNG, b"\x89PNG"), (OutputFormat.WEBP, b"RIFF")]:
        data = encode_image(bgr, fmt, 90)
        assert data.startswith(magic)
        assert load_image(data, SETTINGS).bgr.shape == astronaut.shape
    small = encode_image(bgr, OutputFormat.JPEG, 10)
    assert len(small) < len(encode_image(bgr, OutputFormat.JPEG, 95))
    with pytest.raises(ImageError):
        encode_image(np.zeros((4, 4, 4), np.uint8), OutputFormat.JPEG, 90)
