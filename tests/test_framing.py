"""The result's frame (region of interest, crop, scale, position) and the parameters that ask for it."""

from __future__ import annotations

import io
import zipfile

import cv2
import numpy as np
import pytest

from backdrop.errors import ParameterError
from backdrop.params import JobParams, Length, MediaKind, parse_color
from backdrop.pipeline.framing import outside_zeroed, place, plan_frame, region_of_interest, subject_box


def matte_with_subject(x0: int, y0: int, x1: int, y1: int, size: tuple[int, int] = (200, 100)) -> np.ndarray:
    matte = np.zeros((size[1], size[0]), np.uint8)
    matte[y0:y1, x0:x1] = 255
    return matte


def test_framing_parameters_parse_and_round_trip():
    params = JobParams.parse(
        {"effect": "color", "color": "#1E90FF80", "crop": "true", "crop_margin": "10px 5%", "scale": "50%",
         "position": "25% 100%", "roi": "0 10px 50% 100%", "max_pixels": "250000"}
    )  # fmt: skip
    assert params.color == (30, 144, 255, 128) and params.translucent and params.framed
    assert params.crop_margin == (Length(10), Length(0.05, True), Length(10), Length(0.05, True))
    assert params.scale == 0.5 and params.position == (0.25, 1.0) and params.max_pixels == 250_000
    assert JobParams.from_dict(params.as_dict()) == params
    assert JobParams.parse({"effect": "cutout", "position": "center"}).position == (0.5, 0.5)
    assert JobParams.parse({"scale": "original", "position": "original"}).framed is False
    assert parse_color("green") == (0, 128, 0, 255) and parse_color("#abc") == (170, 187, 204, 255)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crop_margin", "60%"),  # more than half the subject on a side
        ("crop_margin", "501px"),
        ("crop_margin", "1px 2px 3px"),  # 1, 2 or 4 values
        ("scale", "5%"),
        ("scale", "120%"),
        ("scale", "200px"),
        ("position", "150%"),
        ("position", "left"),
        ("roi", "0 0 100%"),
        ("max_pixels", "99"),
        ("color", "not-a-colour"),
    ],
)
def test_impossible_framing_values_are_refused(field, value):
    with pytest.raises(ParameterError):
        JobParams.parse({"effect": "cutout", field: value})


def test_a_video_job_round_trips_without_framing():
    params = JobParams.parse({"effect": "blur"}, MediaKind.VIDEO)
    assert JobParams.from_dict(params.as_dict()) == params


def test_framing_is_refused_where_it_cannot_work():
    with pytest.raises(ParameterError, match="photos"):
        JobParams.parse({"crop": "true"}, MediaKind.VIDEO)
    with pytest.raises(ParameterError, match="new background"):
        JobParams.parse({"effect": "blur", "scale": "50%"})
    with pytest.raises(ParameterError):  # a translucent colour needs a format with transparency
        JobParams.parse({"effect": "color", "color": "#00000080", "format": "jpeg"})
    with pytest.raises(ParameterError):  # a ZIP holds a cut-out
        JobParams.parse({"effect": "blur", "format": "zip"})


def test_subject_box_and_region_of_interest():
    matte = matte_with_subject(50, 20, 120, 90)
    assert subject_box(matte) == (50, 20, 120, 90)
    assert subject_box(np.zeros((10, 10), np.uint8)) is None
    roi = region_of_interest((Length(0), Length(0), Length(0.5, True), Length(1.0, True)), 200, 100)
    assert roi == (0, 0, 100, 100)
    assert subject_box(outside_zeroed(matte, roi)) == (50, 20, 100, 90)
    with pytest.raises(ParameterError):
        region_of_interest((Length(300), Length(0), Length(400), Length(50)), 200, 100)


def test_a_crop_keeps_the_subject_and_its_margin_even_beyond_the_picture():
    matte = matte_with_subject(10, 20, 60, 80)  # 50 wide, 60 high
    params = JobParams.parse({"effect": "cutout", "crop": "true", "crop_margin": "10%"})
    frame = plan_frame(subject_box(matte), 200, 100, params)
    assert frame.canvas == (60, 72)  # 5 px each side across, 6 down
    framed = place(matte, frame)
    assert subject_box(framed) == (5, 6, 55, 66)
    # A margin reaching past the picture's edge is filled (here with 0); within=True stays inside it.
    wide = JobParams.parse({"effect": "cutout", "crop": "true", "crop_margin": "30px"})
    assert plan_frame(subject_box(matte), 200, 100, wide).canvas == (110, 120)
    assert plan_frame(subject_box(matte), 200, 100, wide, within=True).canvas == (90, 100)


def test_the_subject_is_scaled_and_placed_on_the_picture():
    matte = matte_with_subject(10, 20, 60, 80)
    centred = JobParams.parse({"effect": "cutout", "scale": "50%"})
    frame = plan_frame(subject_box(matte), 200, 100, centred)
    framed = place(matte, frame)
    assert framed.shape == (100, 200)
    x0, y0, x1, y1 = subject_box(framed)
    assert (y1 - y0) == 50 and abs((x0 + x1) / 2 - 100) <= 1 and abs((y0 + y1) / 2 - 50) <= 1
    corner = JobParams.parse({"effect": "cutout", "position": "100% 0%"})  # its own size, top right
    assert subject_box(place(matte, plan_frame(subject_box(matte), 200, 100, corner))) == (150, 0, 200, 60)
    colour = place(cv2.merge([matte] * 3), plan_frame(subject_box(matte), 200, 100, corner), fill=(1, 2, 3))
    assert tuple(colour[99, 0]) == (1, 2, 3)


def test_frames_through_the_pipeline(pipeline, astronaut):
    """Real jobs: a cut-out cropped to the person, a ZIP of colours and matte, a translucent colour, the
    photo shrunk to a size, and a region of interest that leaves half of her out."""
    photo = cv2.imencode(".jpg", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))[1].tobytes()
    cropped = pipeline.process(photo, JobParams.parse({"effect": "cutout", "crop": "true"}))
    box = cropped.foreground
    assert box is not None and (box["left"], box["top"]) == (0, 0)
    assert (box["width"], box["height"]) == (cropped.width, cropped.height) and cropped.height < 512
    archive = zipfile.ZipFile(
        io.BytesIO(pipeline.process(photo, JobParams.parse({"effect": "cutout", "format": "zip"})).data)
    )
    assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
    alpha = cv2.imdecode(np.frombuffer(archive.read("alpha.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert alpha.ndim == 2 and alpha.shape == (512, 512) and alpha.max() == 255
    translucent = pipeline.process(photo, JobParams.parse({"effect": "color", "color": "#0000FF80"}))
    pixels = cv2.imdecode(np.frombuffer(translucent.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert translucent.format.value == "png" and pixels.shape[2] == 4
    assert pixels[5, 500, 3] == pytest.approx(128, abs=2) and pixels[5, 500, 0] > 240  # blue, half see-through
    assert pixels[200, 250, 3] == 255  # the person, opaque
    small = pipeline.process(photo, JobParams.parse({"effect": "mask", "max_pixels": "40000"}))
    assert small.width * small.height <= 40_000 and small.width == small.height
    half = pipeline.process(photo, JobParams.parse({"effect": "mask", "roi": "0 0 50% 100%"}))
    assert half.foreground is not None and half.foreground["left"] + half.foreground["width"] <= 256
