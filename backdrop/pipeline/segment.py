"""Segmentation: run a model on the photo and read its output as P(pixel is one of the targets)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.engines import Engine
from backdrop.models.registry import ModelSpec, ModelVariant
from backdrop.pipeline.geometry import resize_to


@dataclass(frozen=True)
class Segmentation:
    """Model-resolution results: ``probability`` (HxW float32) that a pixel belongs to any target, and for
    each target the pixels where that class is the most likely one."""

    probability: np.ndarray
    class_masks: dict[str, np.ndarray]


def model_input(preview: np.ndarray, spec: ModelSpec, variant: ModelVariant) -> np.ndarray:
    """The 1xHxWx3 float32 tensor the model expects (stretched to its input size, normalised)."""
    small = resize_to(preview, variant.input_width, variant.input_height)
    rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32)
    return (rgb * spec.input_scale + spec.input_offset)[None]


def read_output(output: np.ndarray, spec: ModelSpec, targets: tuple[str, ...]) -> Segmentation:
    """Turn one HxWxC model output into a :class:`Segmentation` for ``targets``."""
    if spec.output == "probability":
        probability = np.clip(output[..., 0], 0.0, 1.0).astype(np.float32)
        return Segmentation(probability, {spec.labels[0]: probability >= 0.5})
    logits = output.astype(np.float32)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = exp / exp.sum(axis=-1, keepdims=True)
    indexes = [spec.labels.index(t) for t in targets]
    probability = probabilities[..., indexes].sum(axis=-1).astype(np.float32)
    winner = logits.argmax(axis=-1)
    return Segmentation(probability, {t: winner == i for t, i in zip(targets, indexes, strict=True)})


def segment(
    engine: Engine, preview: np.ndarray, spec: ModelSpec, variant: ModelVariant, targets: tuple[str, ...]
) -> Segmentation:
    output = engine.run(model_input(preview, spec, variant))[0]
    return read_output(output, spec, targets)
