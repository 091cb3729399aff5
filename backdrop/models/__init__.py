"""Model specs (pure data) and the fetcher that turns a spec into a verified local file."""

from backdrop.models.registry import (
    MODELS,
    ModelFile,
    ModelSpec,
    ModelVariant,
    UrlSource,
    WheelMemberSource,
    choose_model,
    get_model,
    normalize_targets,
)

__all__ = [
    "MODELS",
    "ModelFile",
    "ModelSpec",
    "ModelVariant",
    "UrlSource",
    "WheelMemberSource",
    "choose_model",
    "get_model",
    "normalize_targets",
]
