"""One live session: its settings, its temporal state, and one camera frame in → one processed frame out.

Plain code with the pipeline passed in (no sockets), so it is tested without a server. Settings arrive
as JSON objects (any subset of the fields, at any time) and apply from the next frame.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backdrop.errors import BackdropError, ImageError, ParameterError
from backdrop.params import LIVE_EFFECTS, Effect, JobParams, OutputFormat
from backdrop.pipeline import Pipeline
from backdrop.pipeline.imageio import decode_image, encode_image, load_image
from backdrop.probe import probe_image
from backdrop.settings import Settings
from backdrop.video.temporal import TemporalState

# The job parameters a live session takes (a frame has no metadata; its effects: LIVE_EFFECTS).
SETTING_FIELDS = ("effect", "strength", "bokeh", "color", "targets", "model", "keep", "subjects", "quality")
LIVE_FORMATS = {"jpeg": OutputFormat.JPEG, "jpg": OutputFormat.JPEG, "webp": OutputFormat.WEBP}
_DATA_URL = re.compile(r"data:[\w/+.-]*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class FrameSettings:
    """What a frame is processed with: the settings in force when it arrived (later ones apply to later
    frames), and the memory of the frames before it."""

    params: JobParams
    output: OutputFormat
    background: np.ndarray | None
    history: TemporalState


@dataclass
class LiveSession:
    """A camera's frames through the pipeline, in order, with smoothing across them."""

    pipeline: Pipeline
    settings: Settings
    params: JobParams = field(default_factory=lambda: JobParams.parse({"quality": "80"}))
    output: OutputFormat = OutputFormat.JPEG
    background: np.ndarray | None = None
    history: TemporalState = field(default_factory=TemporalState)

    def configure(self, message: dict[str, Any]) -> dict[str, Any]:
        """Apply a settings message (raises :class:`BackdropError` and keeps the old settings when one field
        is wrong); returns the settings now in force."""
        unknown = sorted(set(message) - {*SETTING_FIELDS, "format", "background", "api_key"})
        if unknown:
            raise ParameterError(
                unknown[0], f"unknown setting; known: {', '.join((*SETTING_FIELDS, 'format', 'background'))}"
            )
        values = {k: v for k, v in self.params.as_dict().items() if k in SETTING_FIELDS}
        values.update({k: message[k] for k in SETTING_FIELDS if k in message})
        if "targets" in message and "model" not in message:
            values.pop("model", None)  # chosen again for the new targets
        if isinstance(values.get("targets"), list):
            values["targets"] = ",".join(values["targets"])
        params = JobParams.parse({k: None if v is None else str(v) for k, v in values.items()})
        if params.effect not in LIVE_EFFECTS:
            names = ", ".join(e.value for e in LIVE_EFFECTS)
            raise ParameterError("effect", f"{params.effect.value} is not for live frames; live effects: {names}")
        output = self.output
        if "format" in message:
            try:
                output = LIVE_FORMATS[str(message["format"]).lower()]
            except KeyError:
                raise ParameterError("format", "live frames come back as jpeg or webp") from None
        background = self.background
        if "background" in message:
            background = self._background(message["background"])
        if params.effect is Effect.REPLACE and background is None:
            raise ParameterError("background", "effect replace needs a background image first (a data URL)")
        subject = (params.targets, params.model, params.keep, params.subjects)
        if subject != (self.params.targets, self.params.model, self.params.keep, self.params.subjects):
            self.history = TemporalState()  # another subject: nothing of the last one carries over
        self.params, self.output, self.background = params, output, background
        return self.current()

    def current(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.params.as_dict().items() if k in SETTING_FIELDS},
            "format": self.output.value,
            "background": self.background is not None,
        }

    def _background(self, value: object) -> np.ndarray | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ParameterError("background", "send the background image as a data URL or base64 text")
        try:
            data = base64.b64decode(_DATA_URL.sub("", value, count=1), validate=True)
        except (binascii.Error, ValueError):
            raise ParameterError("background", "not valid base64") from None
        return load_image(data, self.settings).bgr

    def snapshot(self) -> FrameSettings:
        """The settings the next frame goes with."""
        return FrameSettings(self.params, self.output, self.background, self.history)

    def process(self, frame: bytes, max_pixels: int, settings: FrameSettings | None = None) -> bytes:
        """One camera frame (JPEG or WebP) in, the processed frame out, same size, with ``settings`` (those
        in force now by default); raises :class:`BackdropError` for a frame that is not one."""
        settings = settings or self.snapshot()
        # The frame's limits from its header, before any pixel is decoded.
        limit = min(max_pixels, self.settings.max_image_pixels)
        info = probe_image(frame, max_bytes=self.settings.max_image_bytes, max_pixels=limit)
        if info.format not in (OutputFormat.JPEG, OutputFormat.WEBP):
            raise ImageError("live frames are JPEG or WebP", code="unsupported_format")
        decoded = decode_image(frame, info)
        result = self.pipeline.process_frame(
            decoded.bgr, settings.params, background=settings.background, history=settings.history
        )
        return encode_image(result.rendered, settings.output, settings.params.quality)


def error_message(exc: BackdropError) -> dict[str, Any]:
    return {"error": exc.as_dict()}
