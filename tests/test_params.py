import pytest

from backdrop.errors import ParameterError, TargetError, UnknownModel
from backdrop.params import Bokeh, Effect, JobParams, OutputFormat


def test_defaults_blur_person_with_selfie():
    params = JobParams.parse({})
    assert params.effect is Effect.BLUR
    assert params.targets == ("person",)
    assert params.model == "selfie"
    assert params.strength == 50


@pytest.mark.parametrize(("targets", "model"), [("person", "selfie"), ("cat", "deeplab"), ("person,cat", "deeplab")])
def test_model_chosen_from_targets(targets, model):
    assert JobParams.parse({"targets": targets}).model == model


def test_targets_normalised_and_aliases_resolved():
    params = JobParams.parse({"targets": " Cat, dog ,cat, tvmonitor"})
    assert params.targets == ("cat", "dog", "tv")


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError) as caught:
        JobParams.parse({"targets": "unicorn"})
    assert caught.value.code == "unknown_target"
    assert "person" in caught.value.message and "cat" in caught.value.message


def test_target_the_model_cannot_do_lists_what_it_can():
    with pytest.raises(TargetError) as caught:
        JobParams.parse({"targets": "cat", "model": "selfie"})
    assert caught.value.code == "unsupported_target"
    assert "can segment: person" in caught.value.message


def test_unknown_model():
    with pytest.raises(UnknownModel):
        JobParams.parse({"model": "sam"})


@pytest.mark.parametrize(("raw", "value"), [("1", 1), ("100", 100), ("low", 20), ("Moderate", 50), ("extreme", 90)])
def test_strength_numbers_and_pixellib_levels(raw, value):
    assert JobParams.parse({"strength": raw}).strength == value


@pytest.mark.parametrize("raw", ["0", "101", "-5", "abc", "1.5"])
def test_bad_strength_refused(raw):
    with pytest.raises(ParameterError) as caught:
        JobParams.parse({"strength": raw})
    assert caught.value.code == "invalid_parameter" and caught.value.field == "strength"


@pytest.mark.parametrize(
    ("raw", "rgba"),
    [
        ("#1E90FF", (30, 144, 255, 255)),
        ("00ff00", (0, 255, 0, 255)),
        ("#fff", (255,) * 4),
        ("#1E90FF80", (30, 144, 255, 128)),
        ("#fff8", (255, 255, 255, 136)),
        ("Red", (255, 0, 0, 255)),
    ],
)
def test_colors(raw, rgba):
    assert JobParams.parse({"effect": "color", "color": raw}).color == rgba


@pytest.mark.parametrize("raw", ["reddish", "#12345", "#GGGGGG", "#1234567"])
def test_bad_color_has_its_own_code(raw):
    with pytest.raises(ParameterError) as caught:
        JobParams.parse({"color": raw})
    assert caught.value.code == "invalid_color"


def test_cutout_never_jpeg_and_a_mask_is_png_unless_asked():
    with pytest.raises(ParameterError):
        JobParams.parse({"effect": "cutout", "format": "jpeg"})
    assert JobParams.parse({"effect": "mask", "format": "jpeg"}).output_format(OutputFormat.PNG) is OutputFormat.JPEG
    assert JobParams.parse({"effect": "cutout"}).output_format(OutputFormat.JPEG) is OutputFormat.PNG
    assert JobParams.parse({"effect": "cutout"}).output_format(OutputFormat.WEBP) is OutputFormat.WEBP
    assert JobParams.parse({"effect": "mask"}).output_format(OutputFormat.WEBP) is OutputFormat.PNG
    assert JobParams.parse({"format": "jpg"}).output_format(OutputFormat.PNG) is OutputFormat.JPEG
    assert JobParams.parse({}).output_format(OutputFormat.WEBP) is OutputFormat.WEBP


def test_unknown_parameter_refused():
    with pytest.raises(ParameterError) as caught:
        JobParams.parse({"blurriness": "3"})
    assert caught.value.field == "blurriness"


def test_unnamed_form_part_refused_not_crashed():
    """Werkzeug names a multipart part whose name it cannot decode None (found by the contract fuzzer)."""
    with pytest.raises(ParameterError) as caught:
        JobParams.parse({None: "x", "blurriness": "3"})  # type: ignore[dict-item]
    assert caught.value.field == "None"


def test_round_trip_through_dict():
    params = JobParams.parse(
        {"effect": "blur", "strength": "77", "bokeh": "lens", "targets": "cat,dog", "color": "#102030",
         "format": "webp", "quality": "70", "keep_islands": "true"}
    )  # fmt: skip
    assert params.bokeh is Bokeh.LENS
    assert JobParams.from_dict(params.as_dict()) == params
