"""Typed errors, raised where a problem is found.

Each error carries a stable ``code`` that callers (CLI, HTTP API, job records) can rely on; the mapping
from codes to exit codes or HTTP statuses lives with those callers, in one place each.
"""

from __future__ import annotations


class BackdropError(Exception):
    """Base of every error Backdrop raises on purpose."""

    code = "backdrop_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ImageError(BackdropError):
    """The input image cannot be processed.

    Codes: ``empty_image``, ``image_too_large``, ``unsupported_format``, ``animated_image``,
    ``corrupt_image``.
    """

    code = "corrupt_image"


class ParameterError(BackdropError):
    """A job parameter is malformed or out of range (``invalid_parameter``)."""

    code = "invalid_parameter"

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}", code=code)
        self.field = field


class TargetError(BackdropError):
    """The requested targets cannot be segmented: ``unknown_target`` or ``unsupported_target``."""

    code = "unknown_target"


class ModelUnavailable(BackdropError):
    """A model file could not be obtained from any source (``model_unavailable``)."""

    code = "model_unavailable"


class UnknownModel(BackdropError):
    """The requested model is not in the registry (``unknown_model``)."""

    code = "unknown_model"


class JobTimeout(BackdropError):
    """A job passed its deadline between two pipeline stages (``timeout``)."""

    code = "timeout"
