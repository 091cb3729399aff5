"""Inference engines behind one small interface, with one registry.

An engine runs one model file: NHWC float32 in, NHWC float32 out. Engines are imported lazily so
that code which only needs the model table never loads an ML runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np

from backdrop.errors import BackdropError


class Engine(Protocol):
    """A loaded model, reused across images."""

    name: str

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model expects."""
        ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an NHWC float32 batch; returns the NHWC float32 output."""
        ...


class MultiOutputEngine(Engine, Protocol):
    """An engine that also returns every output of a model with several (detectors, pose landmarks)."""

    def run_outputs(self, batch: np.ndarray) -> list[np.ndarray]: ...


class EngineFactory(Protocol):
    def __call__(self, model_path: Path, *, threads: int) -> Engine: ...


# engine name -> "module:factory"; the module is imported only when that engine is used.
ENGINES: dict[str, str] = {
    "litert": "backdrop.engines.litert:LiteRTEngine",
    "tensorflow": "backdrop.engines.tensorflow:TensorFlowEngine",
    "tensorflow-frozen": "backdrop.engines.tensorflow:FrozenGraphEngine",
}


def choose_engine(name: str) -> str:
    """``auto``: TensorFlow when it is installed and an NVIDIA GPU is present, else LiteRT. Decided
    without importing TensorFlow (slow, and not fork-safe in a prefork parent)."""
    if name != "auto":
        return name
    has_gpu = Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()
    return "tensorflow" if has_gpu and importlib.util.find_spec("tensorflow") is not None else "litert"


def load_engine(name: str, model_path: Path, *, threads: int) -> Engine:
    name = choose_engine(name)
    try:
        module_name, factory_name = ENGINES[name].split(":")
    except KeyError:
        raise BackdropError(
            f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}", code="unknown_engine"
        ) from None
    factory: EngineFactory = getattr(importlib.import_module(module_name), factory_name)
    return factory(model_path, threads=threads)
