"""Job parameters: parsed once from strings (CLI flags, HTTP form fields) into one immutable object.

``JobParams.parse`` validates everything that can be checked without the image, including the
targets against the chosen model, so a bad request is refused before any work is queued.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from backdrop.errors import ParameterError
from backdrop.models.registry import choose_model, normalize_targets
from backdrop.text import parse_bool


class Effect(StrEnum):
    BLUR = "blur"
    REPLACE = "replace"
    COLOR = "color"
    GRAY = "gray"
    CUTOUT = "cutout"
    MASK = "mask"


# The effects a live session takes: a cut-out needs transparency, which a camera view does not carry.
LIVE_EFFECTS = (Effect.BLUR, Effect.REPLACE, Effect.COLOR, Effect.GRAY, Effect.MASK)


class Bokeh(StrEnum):
    GAUSSIAN = "gaussian"
    LENS = "lens"


class Keep(StrEnum):
    """What stays sharp besides the target pixels themselves."""

    TARGETS = "targets"  # only what the models call a target
    HELD = "held"  # also objects in contact with a target: a held book or bottle, the bike ridden, the chair sat on


class Subjects(StrEnum):
    """Which of the people (or target objects) found are the subject."""

    MAIN = "main"  # the most prominent one and those with them (same depth, in focus); others are background
    ALL = "all"  # everyone the models see


class MediaKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


class VideoFormat(StrEnum):
    MP4 = "mp4"  # H.264 + AAC
    WEBM = "webm"  # VP9 (with an alpha plane for cut-outs) + Opus

    @property
    def content_type(self) -> str:
        return f"video/{self.value}"

    @property
    def extension(self) -> str:
        return self.value


class OutputFormat(StrEnum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    ZIP = "zip"  # a cut-out as two files: color.jpg (the colours) and alpha.png (the matte)

    @property
    def content_type(self) -> str:
        return "application/zip" if self is OutputFormat.ZIP else f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @property
    def transparent(self) -> bool:
        """Whether the format carries an alpha channel."""
        return self is not OutputFormat.JPEG


# PixelLib's alter_bg blur levels, as strengths.
BLUR_LEVELS = {"low": 20, "moderate": 50, "extreme": 90}
FORMAT_ALIASES = {"jpg": "jpeg"}
# Formats that can carry what each effect produces (the first is the default).
EFFECT_FORMATS = {
    Effect.CUTOUT: (OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.ZIP),
    Effect.MASK: (OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP),
}
# Every other effect is opaque: the formats an image of it can be written in.
OPAQUE_FORMATS = (OutputFormat.JPEG, OutputFormat.PNG, OutputFormat.WEBP)
# A translucent background colour (color with an alpha) needs a format with transparency.
TRANSLUCENT_FORMATS = (OutputFormat.PNG, OutputFormat.WEBP)
EFFECT_VIDEO_FORMATS = {Effect.CUTOUT: (VideoFormat.WEBM,)}  # transparency: VP9 with alpha, in WebM
_HEX_COLOR = re.compile(r"#?([0-9a-fA-F]{8}|[0-9a-fA-F]{6}|[0-9a-fA-F]{4}|[0-9a-fA-F]{3})")
# The basic colour names of CSS (and grey), accepted wherever a colour is.
COLOR_NAMES = {
    "black": "000000", "white": "FFFFFF", "red": "FF0000", "lime": "00FF00", "green": "008000", "blue": "0000FF",
    "yellow": "FFFF00", "aqua": "00FFFF", "cyan": "00FFFF", "fuchsia": "FF00FF", "magenta": "FF00FF",
    "silver": "C0C0C0", "gray": "808080", "grey": "808080", "maroon": "800000", "olive": "808000",
    "purple": "800080", "teal": "008080", "navy": "000080", "orange": "FFA500",
}  # fmt: skip
_LENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(px|%)?")
# Limits of the framing parameters (those remove.bg documents for the same parameters).
MAX_MARGIN_PIXELS = 500
MAX_MARGIN_SHARE = 0.5
MIN_SCALE = 0.1
MIN_MAX_PIXELS = 10_000


def _choice(enum: type[StrEnum], field_name: str, raw: str, aliases: Mapping[str, str] = {}) -> Any:
    text = raw.strip().lower()
    text = aliases.get(text, text)
    try:
        return enum(text)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise ParameterError(field_name, f"{raw!r} is not one of: {allowed}") from None


def _int_in_range(field_name: str, raw: str, low: int, high: int, aliases: Mapping[str, int] = {}) -> int:
    text = raw.strip().lower()
    if text in aliases:
        return aliases[text]
    try:
        value = int(text)
    except ValueError:
        hint = f" or one of {', '.join(aliases)}" if aliases else ""
        raise ParameterError(field_name, f"{raw!r} is not a whole number from {low} to {high}{hint}") from None
    if not low <= value <= high:
        raise ParameterError(field_name, f"{value} is outside {low}–{high}")
    return value


def parse_color(raw: str) -> tuple[int, int, int, int]:
    """``#RRGGBB``, ``#RGB``, with an alpha ``#RRGGBBAA`` / ``#RGBA``, or a basic colour name → (r, g, b, a)."""
    text = raw.strip()
    text = COLOR_NAMES.get(text.lower(), text)
    match = _HEX_COLOR.fullmatch(text)
    if not match:
        raise ParameterError(
            "color",
            f"{raw!r} is not a colour like #1E90FF, #1E90FF80 or {', '.join(list(COLOR_NAMES)[:4])}",
            code="invalid_color",
        )
    digits = match.group(1)
    if len(digits) in (3, 4):
        digits = "".join(c * 2 for c in digits)
    if len(digits) == 6:
        digits += "FF"
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16), int(digits[6:8], 16)


@dataclass(frozen=True)
class Length:
    """A length in pixels, or a share of something (``share=True``: 0.1 is 10 %)."""

    value: float
    share: bool = False

    def resolve(self, whole: float) -> float:
        return self.value * whole if self.share else self.value

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.share else f"{self.value:g}px"


def parse_length(field_name: str, raw: str) -> Length:
    """``30px``, ``30`` (pixels) or ``10%``."""
    match = _LENGTH.fullmatch(raw.strip().lower())
    if not match:
        raise ParameterError(field_name, f"{raw!r} is not a length like 30px or 10%")
    number = float(match.group(1))
    return Length(number / 100, share=True) if match.group(2) == "%" else Length(number)


def _lengths(field_name: str, raw: str, counts: tuple[int, ...]) -> tuple[Length, ...]:
    parts = raw.replace(",", " ").split()
    if len(parts) not in counts:
        raise ParameterError(field_name, f"{raw!r}: give {' or '.join(map(str, counts))} values")
    return tuple(parse_length(field_name, part) for part in parts)


def parse_margin(raw: str) -> tuple[Length, Length, Length, Length]:
    """One value (every side), two (top and bottom, left and right) or four (top, right, bottom, left),
    each in pixels (at most 500) or a share of the subject's size (at most 50 %)."""
    values = _lengths("crop_margin", raw, (1, 2, 4))
    for value in values:
        if value.value > (MAX_MARGIN_SHARE if value.share else MAX_MARGIN_PIXELS):
            raise ParameterError("crop_margin", f"{value} is over the most a side may have (500px or 50%)")
    if len(values) == 1:
        values = values * 4
    elif len(values) == 2:
        values = (values[0], values[1], values[0], values[1])
    return values  # type: ignore[return-value]


def parse_scale(raw: str) -> float | None:
    """``original`` (None) or 10 %-100 %: the subject's size relative to the picture's."""
    text = raw.strip().lower()
    if text == "original":
        return None
    length = parse_length("scale", text)
    if not length.share or not MIN_SCALE <= length.value <= 1.0:
        raise ParameterError("scale", f"{raw!r} is not original or a share from 10% to 100%")
    return length.value


def parse_position(raw: str) -> tuple[float, float] | None:
    """``original`` (None), ``center``, or one share (both ways) or two (across, down) from 0 % to 100 %."""
    text = raw.strip().lower()
    if text == "original":
        return None
    if text == "center":
        return 0.5, 0.5
    values = _lengths("position", text, (1, 2))
    if not all(v.share and 0.0 <= v.value <= 1.0 for v in values):
        raise ParameterError("position", f"{raw!r} is not original, center or shares from 0% to 100%")
    return (values[0].value, values[-1].value)


def parse_roi(raw: str) -> tuple[Length, Length, Length, Length]:
    """``x1 y1 x2 y2``, each in pixels or a share of the width or height: only what lies inside can be
    the subject."""
    values = _lengths("roi", raw, (4,))
    return values  # type: ignore[return-value]


def _bool(field_name: str, raw: str) -> bool:
    try:
        return parse_bool(raw)
    except ValueError as exc:
        raise ParameterError(field_name, str(exc)) from None


@dataclass(frozen=True)
class JobParams:
    """What to do to one image. ``model`` is always resolved (chosen from the targets when not given)."""

    effect: Effect = Effect.BLUR
    kind: MediaKind = MediaKind.IMAGE
    strength: int = 50
    bokeh: Bokeh = Bokeh.GAUSSIAN
    targets: tuple[str, ...] = ("person",)
    model: str = "selfie"
    color: tuple[int, int, int, int] = (255, 255, 255, 255)
    format: OutputFormat | VideoFormat | None = None
    quality: int = 90
    keep: Keep = Keep.TARGETS
    subjects: Subjects = Subjects.MAIN
    keep_islands: bool = False
    keep_metadata: bool = False
    # The result's framing (photos): at most this many pixels; only a region of interest may be the
    # subject; cropped to the subject (with a margin per side: top, right, bottom, left); the subject
    # scaled to a share of the picture and placed at a position (shares across and down).
    max_pixels: int | None = None
    roi: tuple[Length, Length, Length, Length] | None = None
    crop: bool = False
    crop_margin: tuple[Length, Length, Length, Length] = (Length(0),) * 4
    scale: float | None = None
    position: tuple[float, float] | None = None

    FIELDS = (
        "effect", "strength", "bokeh", "targets", "model", "color", "format", "quality", "keep",
        "subjects", "keep_islands", "keep_metadata", "max_pixels", "roi", "crop", "crop_margin", "scale",
        "position",
    )  # fmt: skip

    @classmethod
    def parse(cls, values: Mapping[str, str | None], kind: MediaKind = MediaKind.IMAGE) -> JobParams:
        """Build from string values (missing or empty → default) for an image or a video job (``format``
        names an image or a video format). Unknown keys are refused."""
        # A multipart part whose name could not be decoded arrives with the name None: unknown too.
        unknown = sorted(str(key) for key in set(values) - set(cls.FIELDS))
        if unknown:
            raise ParameterError(unknown[0], f"unknown parameter; known: {', '.join(cls.FIELDS)}")
        given = {k: v for k, v in values.items() if v is not None and str(v).strip() != ""}
        kwargs: dict[str, Any] = {}
        if "effect" in given:
            kwargs["effect"] = _choice(Effect, "effect", given["effect"])
        if "strength" in given:
            kwargs["strength"] = _int_in_range("strength", given["strength"], 1, 100, BLUR_LEVELS)
        if "bokeh" in given:
            kwargs["bokeh"] = _choice(Bokeh, "bokeh", given["bokeh"])
        if "color" in given:
            kwargs["color"] = parse_color(given["color"])
        if "format" in given:
            formats = VideoFormat if kind is MediaKind.VIDEO else OutputFormat
            kwargs["format"] = _choice(formats, "format", given["format"], FORMAT_ALIASES)
        if "quality" in given:
            kwargs["quality"] = _int_in_range("quality", given["quality"], 1, 100)
        if "keep" in given:
            kwargs["keep"] = _choice(Keep, "keep", given["keep"])
        if "subjects" in given:
            kwargs["subjects"] = _choice(Subjects, "subjects", given["subjects"])
        for flag in ("keep_islands", "keep_metadata", "crop"):
            if flag in given:
                kwargs[flag] = _bool(flag, given[flag])
        if "max_pixels" in given:
            kwargs["max_pixels"] = _int_in_range("max_pixels", given["max_pixels"], MIN_MAX_PIXELS, 1_000_000_000)
        if "roi" in given:
            kwargs["roi"] = parse_roi(given["roi"])
        if "crop_margin" in given:
            kwargs["crop_margin"] = parse_margin(given["crop_margin"])
        if "scale" in given:
            kwargs["scale"] = parse_scale(given["scale"])
        if "position" in given:
            kwargs["position"] = parse_position(given["position"])
        targets = normalize_targets(given.get("targets", "person").split(","))
        spec = choose_model(targets, given.get("model", "").strip().lower() or None)
        params = cls(targets=targets, model=spec.name, kind=kind, **kwargs)
        # Refuse effect/format pairs that cannot work before any work is done.
        if kind is MediaKind.VIDEO:
            params.video_format()
            photo_only = {
                "max_pixels": params.max_pixels is not None,
                "roi": params.roi is not None,
                "crop": params.crop,
                "scale": params.scale is not None,
                "position": params.position is not None,
                "targets": params.targets == ("auto",),
            }
            for name, asked in photo_only.items():
                if asked:
                    raise ParameterError(name, "is for photos (a video keeps its frames' size and subject)")
        else:
            params.output_format(OutputFormat.PNG)
        if (params.scale is not None or params.position is not None) and params.effect in (Effect.BLUR, Effect.GRAY):
            raise ParameterError(
                "scale" if params.scale is not None else "position",
                f"moves the subject on a new background: effect {params.effect.value} keeps the photo's own",
            )
        return params

    @property
    def framed(self) -> bool:
        """Whether the result is cropped, or its subject scaled or moved."""
        return self.crop or self.scale is not None or self.position is not None

    @property
    def translucent(self) -> bool:
        """Whether the result has transparency: a cut-out, or a colour background with an alpha."""
        return self.effect is Effect.CUTOUT or (self.effect is Effect.COLOR and self.color[3] < 255)

    def _checked_format(self, allowed: tuple[StrEnum, ...] | None) -> None:
        if self.format is not None and allowed and self.format not in allowed:
            names = " or ".join(f.value for f in allowed)
            raise ParameterError(
                "format",
                f"effect {self.effect.value} needs {names}, not {self.format.value}",
                code="unsupported_output",
            )

    def video_format(self) -> VideoFormat:
        """The video format to write: the one asked for, else MP4 (WebM where the effect needs it)."""
        allowed = EFFECT_VIDEO_FORMATS.get(self.effect)
        self._checked_format(allowed)
        if isinstance(self.format, VideoFormat):
            return self.format
        return allowed[0] if allowed else VideoFormat.MP4

    def output_format(self, input_format: OutputFormat) -> OutputFormat:
        """The format to write: the one asked for, else the input's (PNG where the effect needs it)."""
        allowed = EFFECT_FORMATS.get(self.effect, OPAQUE_FORMATS)
        if self.effect is Effect.COLOR and self.color[3] < 255:
            allowed = TRANSLUCENT_FORMATS
        self._checked_format(allowed)
        if isinstance(self.format, OutputFormat):
            return self.format
        if self.effect is Effect.MASK or input_format not in allowed:  # a matte is PNG unless asked
            return allowed[0]
        return input_format

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form; ``JobParams.from_dict(p.as_dict()) == p``."""
        return {
            "effect": self.effect.value,
            "kind": self.kind.value,
            "strength": self.strength,
            "bokeh": self.bokeh.value,
            "targets": list(self.targets),
            "model": self.model,
            "color": "#" + "".join(f"{c:02X}" for c in (self.color if self.color[3] < 255 else self.color[:3])),
            "format": self.format.value if self.format else None,
            "quality": self.quality,
            "keep": self.keep.value,
            "subjects": self.subjects.value,
            "keep_islands": self.keep_islands,
            "keep_metadata": self.keep_metadata,
            "max_pixels": self.max_pixels,
            "roi": " ".join(map(str, self.roi)) if self.roi else None,
            "crop": self.crop,
            "crop_margin": " ".join(map(str, self.crop_margin)),
            "scale": f"{self.scale * 100:g}%" if self.scale is not None else "original",
            "position": " ".join(f"{v * 100:g}%" for v in self.position) if self.position else "original",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobParams:
        values = {k: v for k, v in data.items() if v is not None}
        kind = MediaKind(values.pop("kind", MediaKind.IMAGE.value))
        if isinstance(values.get("targets"), list | tuple):
            values["targets"] = ",".join(values["targets"])
        return cls.parse({k: str(v) for k, v in values.items()}, kind)
