"""Segmentation: run a model on the photo and read its output as P(pixel is one of the targets)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from backdrop.engines import Engine
from backdrop.models.registry import ModelSpec, ModelVariant
from backdrop.pipeline.geometry import resize_to

# The zoomed-out view adds a replicated border of this share of the photo's long side on every side.
VIEW_BORDER_SHARE = 0.1


@dataclass(frozen=True)
class Segmentation:
    """Model-resolution results: ``probability`` (HxW float32) that a pixel belongs to any target, and for
    each target the pixels where that class is the most likely one. ``labels`` (multi-class models): the
    index of the most likely label of every pixel, whatever the targets; ``margin`` (models with logits):
    how far the most likely label's logit lies above the best target's (0 where a target wins), i.e. how
    sure the model is that a pixel is something else."""

    probability: np.ndarray
    class_masks: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    margin: np.ndarray | None = None


def input_region(width: int, height: int, spec: ModelSpec, variant: ModelVariant) -> tuple[int, int]:
    """(width, height) of the photo inside the model input: all of it, or its letterboxed fit."""
    if not spec.keep_aspect:
        return variant.input_width, variant.input_height
    scale = min(variant.input_width / width, variant.input_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def model_input(preview: np.ndarray, spec: ModelSpec, variant: ModelVariant) -> np.ndarray:
    """The 1xHxWx3 float32 tensor the model expects: resized (letterboxed at the top left when the
    model keeps aspect; the padding is the normalised zero), then normalised."""
    region_w, region_h = input_region(preview.shape[1], preview.shape[0], spec, variant)
    rgb = cv2.cvtColor(resize_to(preview, region_w, region_h), cv2.COLOR_BGR2RGB)
    if spec.output == "labels":  # frozen DeepLab graphs take uint8 RGB of any size: no padding
        return rgb[None]
    rgb = rgb.astype(np.float32)
    tensor = np.zeros((1, variant.input_height, variant.input_width, 3), np.float32)
    tensor[0, :region_h, :region_w] = rgb * spec.input_scale + spec.input_offset
    return tensor


def read_output(
    output: np.ndarray, spec: ModelSpec, targets: tuple[str, ...], *, with_probability: bool = True
) -> Segmentation:
    """Turn one HxWxC model output into a :class:`Segmentation` for ``targets``.

    ``with_probability=False`` skips the softmax when only the class masks are wanted."""
    if spec.output == "probability":
        probability = np.clip(output[..., 0], 0.0, 1.0).astype(np.float32)
        return Segmentation(probability, {spec.labels[0]: probability >= 0.5})
    if spec.output == "labels":
        labels = output[..., 0].astype(np.int64)
        masks = {t: labels == spec.labels.index(t) for t in targets}
        return Segmentation(np.logical_or.reduce(list(masks.values())).astype(np.float32), masks, labels)
    # Channel-first makes the per-pixel reductions over classes contiguous (several times faster).
    logits = np.ascontiguousarray(np.moveaxis(output, -1, 0), dtype=np.float32)
    indexes = [spec.labels.index(t) for t in targets]
    winner = logits.argmax(axis=0)
    masks = {t: winner == i for t, i in zip(targets, indexes, strict=True)}
    best = np.take_along_axis(logits, winner[None], axis=0)[0]
    margin = best - logits[indexes].max(axis=0)
    if not with_probability:
        return Segmentation(np.zeros(winner.shape, np.float32), masks, winner, margin)
    exp = np.exp(logits - best)
    probability = (exp[indexes].sum(axis=0) / exp.sum(axis=0)).astype(np.float32)
    return Segmentation(probability, masks, winner, margin)


def segment(
    engine: Engine,
    preview: np.ndarray,
    spec: ModelSpec,
    variant: ModelVariant,
    targets: tuple[str, ...],
    *,
    with_probability: bool = True,
) -> Segmentation:
    return segment_many(engine, [preview], spec, variant, targets, with_probability=with_probability)[0]


def segment_many(
    engine: Engine,
    images: list[np.ndarray],
    spec: ModelSpec,
    variant: ModelVariant,
    targets: tuple[str, ...],
    *,
    with_probability: bool = True,
) -> list[Segmentation]:
    """:func:`segment` for several images in one model invocation (cheaper than one each: three selfie
    inputs take about twice the time of one on a CPU)."""
    outputs = engine.run(np.concatenate([model_input(image, spec, variant) for image in images]))
    segmentations = []
    for image, output in zip(images, outputs, strict=True):
        if spec.output != "labels":  # a letterboxed input: keep the photo's part of the output
            region_w, region_h = input_region(image.shape[1], image.shape[0], spec, variant)
            output = output[:region_h, :region_w]
        segmentations.append(read_output(output, spec, targets, with_probability=with_probability))
    return segmentations


def probability_over_views(
    probabilities_of: Callable[[list[np.ndarray]], list[np.ndarray]], image: np.ndarray
) -> np.ndarray:
    """P(target) for ``image`` fused over three views of it: the photo, its mirror image and the photo
    zoomed out inside a replicated border. Where at least two views see the target (0.5 and up), the
    most confident of them; elsewhere their mean. ``probabilities_of(views)`` runs a one-class model on
    the views (together, where it can); the result has the size of the photo's own pass.

    Why: the selfie model was trained on close, centred selfies. It loses limbs, a book on a lap or whole
    legs that reach the frame's edge or lie far from its centre, and a mirrored or zoomed-out view often
    sees them; just as often one view alone sees a person in a wall, a boulder or the grass. A vote keeps
    what two views saw and not what one view alone hallucinates. (The maximum, kept until 2026-12, was
    chosen on 44 photos and kept a wall behind a portrait as person: see docs/models.md for the numbers
    on 145.)"""
    height, width = image.shape[:2]
    border = max(1, round(VIEW_BORDER_SHARE * max(height, width)))
    own, mirrored, zoomed = probabilities_of(
        [
            image,
            np.ascontiguousarray(image[:, ::-1]),
            cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_REPLICATE),
        ]
    )
    out_h, out_w = own.shape
    mirrored = mirrored[:, ::-1]  # same size as the photo's own pass: same input size, same variant
    # The photo's part of the zoomed-out view's output, resampled straight to the own pass's grid.
    sx = zoomed.shape[1] / (width + 2 * border)
    sy = zoomed.shape[0] / (height + 2 * border)
    step_x, step_y = sx * width / out_w, sy * height / out_h
    to_zoomed = np.float32(
        [[step_x, 0, border * sx + 0.5 * step_x - 0.5], [0, step_y, border * sy + 0.5 * step_y - 0.5]]
    )
    zoomed = cv2.warpAffine(
        zoomed,
        to_zoomed,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    views = np.stack([own, mirrored, zoomed])
    agreed = np.count_nonzero(views >= 0.5, axis=0) >= 2
    return np.where(agreed, views.max(axis=0), views.mean(axis=0)).astype(np.float32)
