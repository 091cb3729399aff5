"""The one settings object, read from the environment at start-up.

Nothing else in Backdrop reads ``os.environ``. Every field is documented in the README's settings table.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from backdrop.errors import BackdropError


class SettingsError(BackdropError):
    """An environment variable holds a value Backdrop cannot use (``invalid_setting``)."""

    code = "invalid_setting"


def _default_model_dir(env: Mapping[str, str]) -> Path:
    cache_home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "backdrop" / "models"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _path_list(text: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in text.split(os.pathsep) if part.strip())


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with :meth:`from_env`; tests build their own with keyword arguments."""

    model_dir: Path = field(default_factory=lambda: _default_model_dir(os.environ))
    model_mirrors: tuple[Path, ...] = ()
    model_download_timeout_s: float = 30.0
    model_pip_args: tuple[str, ...] = ()
    engine: str = "litert"
    confirm_targets: bool = True
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_image_bytes: int = 30 * 1024 * 1024
    max_image_pixels: int = 40_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {"model_dir": _default_model_dir(env)}
        for name, (variable, parse) in _ENV.items():
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = parse(raw.strip())
            except ValueError as exc:
                raise SettingsError(f"{variable}={raw!r}: {exc}") from None
        return cls(**values)

    def describe(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


# field name -> (environment variable, parser). The README's settings table lists the same variables.
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "model_dir": ("BACKDROP_MODEL_DIR", lambda text: Path(text).expanduser()),
    "model_mirrors": ("BACKDROP_MODEL_MIRRORS", _path_list),
    "model_download_timeout_s": ("BACKDROP_MODEL_DOWNLOAD_TIMEOUT_S", _positive_float),
    "model_pip_args": ("BACKDROP_MODEL_PIP_ARGS", lambda text: tuple(shlex.split(text))),
    "engine": ("BACKDROP_ENGINE", str.lower),
    "confirm_targets": ("BACKDROP_CONFIRM_TARGETS", _bool),
    "threads": ("BACKDROP_THREADS", _positive_int),
    "max_image_bytes": ("BACKDROP_MAX_IMAGE_BYTES", _positive_int),
    "max_image_pixels": ("BACKDROP_MAX_IMAGE_PIXELS", _positive_int),
}
