"""End to end through the real models, on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backdrop.errors import ImageError, ParameterError
from backdrop.params import JobParams, OutputFormat
from tests.conftest import decode_rgb, encode_rgb


def run(pipeline, data, background=None, **params):
    return pipeline.process(data, JobParams.parse(params), background)


@pytest.mark.parametrize("model", ["selfie", "deeplab"])
def test_person_found_on_astronaut(pipeline, astronaut_jpeg, model):
    result = run(pipeline, astronaut_jpeg, model=model)
    assert result.found and result.detected["person"] > 0.3
    assert result.model.startswith(model)


def test_cat_found_on_chelsea(pipeline, chelsea):
    result = run(pipeline, encode_rgb(chelsea), targets="cat")
    assert result.model == "deeplab/257"
    assert result.found and result.detected["cat"] > 0.4


def test_cat_and_dog_reported_separately(pipeline, chelsea):
    result = run(pipeline, encode_rgb(chelsea), targets="cat,dog")
    assert result.detected["cat"] > 0.4 and result.detected["dog"] < 0.02


@pytest.mark.parametrize("model", ["selfie", "deeplab"])
def test_no_person_on_coffee_still_produces_output(pipeline, coffee, model):
    result = run(pipeline, encode_rgb(coffee), model=model)
    assert not result.found and result.detected["person"] < 0.001
    out = decode_rgb(result.data)
    assert out.shape == coffee.shape
    # Whole image treated as background: everything is blurred.
    assert np.abs(out.astype(int) - coffee).mean() > 3


def test_selfie_alone_would_call_the_cat_a_person(settings, chelsea):
    """Why the selfie model is confirmed by deeplab: on its own it keeps any salient foreground."""
    from dataclasses import replace

    from backdrop.pipeline import Pipeline

    unconfirmed = Pipeline(replace(settings, confirm_targets=False))
    assert unconfirmed.process(encode_rgb(chelsea), JobParams.parse({})).detected["person"] > 0.2


def test_subject_kept_sharp_background_blurred(pipeline, astronaut_jpeg):
    result = run(pipeline, astronaut_jpeg, format="png", strength="80")
    out = decode_rgb(result.data).astype(int)
    reference = decode_rgb(astronaut_jpeg).astype(int)
    face = (slice(60, 140), slice(200, 280))  # the astronaut's face
    flag = (slice(0, 200), slice(0, 40))  # the flag, top left: background
    assert np.abs(out[face] - reference[face]).mean() < 2
    assert np.abs(out[flag] - reference[flag]).mean() > 10


@pytest.mark.parametrize(
    ("params", "fmt", "mode"),
    [
        ({"effect": "blur", "bokeh": "lens"}, "JPEG", "RGB"),
        ({"effect": "gray"}, "JPEG", "RGB"),
        ({"effect": "color", "color": "#00FF00", "format": "webp"}, "WEBP", "RGB"),
        ({"effect": "cutout"}, "PNG", "RGBA"),
        ({"effect": "cutout", "format": "webp"}, "WEBP", "RGBA"),
        ({"effect": "mask"}, "PNG", "L"),
    ],
)
def test_every_effect_and_format(pipeline, astronaut_jpeg, params, fmt, mode):
    result = run(pipeline, astronaut_jpeg, **params)
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.format == fmt and image.mode == mode and image.size == (512, 512)
    assert result.content_type == f"image/{fmt.lower()}"


def test_replace_background(pipeline, astronaut_jpeg, coffee):
    result = run(pipeline, astronaut_jpeg, background=encode_rgb(coffee), effect="replace")
    assert decode_rgb(result.data).shape == (512, 512, 3)
    with pytest.raises(ParameterError):
        run(pipeline, astronaut_jpeg, effect="replace")
    with pytest.raises(ImageError):
        run(pipeline, astronaut_jpeg, background=b"not an image", effect="replace")


def test_exif_rotated_input_comes_out_upright(pipeline, astronaut):
    stored = np.asarray(Image.fromarray(astronaut[:, :400]).transpose(Image.Transpose.ROTATE_90))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    result = run(pipeline, encode_rgb(stored, exif=exif.tobytes(), quality=95), format="png")
    out = decode_rgb(result.data)
    assert out.shape == (512, 400, 3)
    assert result.found and result.detected["person"] > 0.3  # the upright person is found
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.getexif().get(0x0112) is None  # no orientation tag left to rotate it again


def test_output_keeps_format_size_and_quality(pipeline, astronaut):
    webp = run(pipeline, encode_rgb(astronaut, "WEBP"))
    assert webp.format is OutputFormat.WEBP
    low = run(pipeline, encode_rgb(astronaut), quality="20")
    high = run(pipeline, encode_rgb(astronaut), quality="95")
    assert len(low.data) < len(high.data)


def test_landscape_variant_for_wide_photos(pipeline, astronaut):
    wide = np.concatenate([astronaut[:288], astronaut[:288, ::-1]], axis=1)  # 1024x288, two people
    result = run(pipeline, encode_rgb(wide))
    assert result.model == "selfie/landscape" and result.found


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 3000, 3), (3000, 1, 3), (7, 5, 3)])
def test_degenerate_shapes_processed(pipeline, shape):
    image = np.full(shape, 128, np.uint8)
    result = run(pipeline, encode_rgb(image, "PNG"))
    assert decode_rgb(result.data).shape == shape


def test_grayscale_and_alpha_inputs(pipeline, astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    assert decode_rgb(run(pipeline, encode_rgb(gray, "PNG")).data).shape == (512, 512, 3)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, :100, 3] = 0
    cut = run(pipeline, encode_rgb(rgba, "PNG"), effect="cutout")
    with Image.open(io.BytesIO(cut.data)) as image:
        alpha = np.asarray(image)[..., 3]
    assert alpha[:, :100].max() == 0  # transparent input stays transparent


def test_model_loaded_once_per_process(pipeline, astronaut_jpeg, chelsea):
    run(pipeline, astronaut_jpeg)
    run(pipeline, encode_rgb(chelsea), targets="cat")
    engines = {name: pipeline.models.loaded(name) for name in pipeline.loaded_files}
    for _ in range(3):
        run(pipeline, astronaut_jpeg)
        run(pipeline, encode_rgb(chelsea), targets="cat")
    assert {name: pipeline.models.loaded(name) for name in pipeline.loaded_files} == engines
    assert len(set(pipeline.loaded_files)) == len(pipeline.loaded_files)


def test_timings_reported_per_stage(pipeline, astronaut_jpeg):
    timings = run(pipeline, astronaut_jpeg).timings_ms
    assert list(timings) == ["decode", "segment", "refine", "effect", "encode"]
    assert all(value >= 0 for value in timings.values())


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_metadata_dropped_unless_kept(pipeline, astronaut, fmt):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "BackdropCam"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPS latitude
    photo = encode_rgb(astronaut, exif=exif.tobytes())
    dropped = run(pipeline, photo, format=fmt)
    with Image.open(io.BytesIO(dropped.data)) as image:
        assert not image.getexif()
    kept = run(pipeline, photo, format=fmt, keep_metadata="true")
    with Image.open(io.BytesIO(kept.data)) as image:
        image.load()
        tags = image.getexif()
        assert tags[0x010F] == "BackdropCam" and tags.get_ifd(0x8825)[2] == (48.0, 51.0, 29.0)
        assert tags[0x0112] == 1  # pixels are already upright
        assert image.size == (512, 512)


def test_metadata_kept_on_lossless_webp_with_alpha(pipeline, astronaut):
    exif = Image.Exif()
    exif[0x010F] = "BackdropCam"
    kept = run(pipeline, encode_rgb(astronaut, exif=exif.tobytes()), effect="cutout", format="webp", keep_metadata="1")
    with Image.open(io.BytesIO(kept.data)) as image:
        image.load()
        assert image.mode == "RGBA" and image.getexif()[0x010F] == "BackdropCam"


def test_a_passed_deadline_stops_the_job_before_the_next_stage(pipeline, astronaut):
    import time

    from backdrop.errors import JobTimeout

    with pytest.raises(JobTimeout) as caught:
        pipeline.process(encode_rgb(astronaut), JobParams(), deadline=time.monotonic() - 1, limit_s=60)
    assert caught.value.code == "timeout" and "60 s limit" in caught.value.message
    far = pipeline.process(encode_rgb(astronaut), JobParams(), deadline=time.monotonic() + 600, limit_s=600)
    assert far.found
