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

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value


# PixelLib's alter_bg blur levels, as strengths.
BLUR_LEVELS = {"low": 20, "moderate": 50, "extreme": 90}
FORMAT_ALIASES = {"jpg": "jpeg"}
# Formats that can carry what each effect produces (the first is the default).
EFFECT_FORMATS = {
    Effect.CUTOUT: (OutputFormat.PNG, OutputFormat.WEBP),
    Effect.MASK: (OutputFormat.PNG,),
}
EFFECT_VIDEO_FORMATS = {Effect.CUTOUT: (VideoFormat.WEBM,)}  # transparency: VP9 with alpha, in WebM
_HEX_COLOR = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


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


def parse_color(raw: str) -> tuple[int, int, int]:
    """``#RRGGBB`` (or ``#RGB``) → (r, g, b)."""
    match = _HEX_COLOR.fullmatch(raw.strip())
    if not match:
        raise ParameterError("color", f"{raw!r} is not a colour like #1E90FF", code="invalid_color")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)


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
    color: tuple[int, int, int] = (255, 255, 255)
    format: OutputFormat | VideoFormat | None = None
    quality: int = 90
    keep: Keep = Keep.TARGETS
    subjects: Subjects = Subjects.MAIN
    keep_islands: bool = False
    keep_metadata: bool = False

    FIELDS = (
        "effect", "strength", "bokeh", "targets", "model", "color", "format", "quality", "keep",
        "subjects", "keep_islands", "keep_metadata",
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
        for flag in ("keep_islands", "keep_metadata"):
            if flag in given:
                kwargs[flag] = _bool(flag, given[flag])
        targets = normalize_targets(given.get("targets", "person").split(","))
        spec = choose_model(targets, given.get("model", "").strip().lower() or None)
        params = cls(targets=targets, model=spec.name, kind=kind, **kwargs)
        # Refuse effect/format pairs that cannot work before any work is done.
        if kind is MediaKind.VIDEO:
            params.video_format()
        else:
            params.output_format(OutputFormat.PNG)
        return params

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
        allowed = EFFECT_FORMATS.get(self.effect)
        self._checked_format(allowed)
        if isinstance(self.format, OutputFormat):
            return self.format
        if allowed and input_format not in allowed:
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
            "color": "#{:02X}{:02X}{:02X}".format(*self.color),
            "format": self.format.value if self.format else None,
            "quality": self.quality,
            "keep": self.keep.value,
            "subjects": self.subjects.value,
            "keep_islands": self.keep_islands,
            "keep_metadata": self.keep_metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobParams:
        values = {k: v for k, v in data.items() if v is not None}
        kind = MediaKind(values.pop("kind", MediaKind.IMAGE.value))
        if isinstance(values.get("targets"), list | tuple):
            values["targets"] = ",".join(values["targets"])
        return cls.parse({k: str(v) for k, v in values.items()}, kind)
