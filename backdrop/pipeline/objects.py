"""What the subject holds, rides or sits on: the objects a model that names many classes (DeepLab) sees
beside the targets, kept or left out as the job's ``keep`` says rather than by accident.

Pure functions over numpy arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

from backdrop.models.registry import ModelSpec, get_model
from backdrop.params import JobParams, Keep
from backdrop.pipeline.segment import Segmentation
from backdrop.pipeline.subject import held_objects

# An object counts as held when it comes this close (model pixels) to the subject.
HELD_REACH_MODEL_PIXELS = 1
# keep=targets takes an object out of the person only where the naming model's logit for it beats the
# target's by this much (about 0.88 against 0.12 between the two): a real cat in the arms scores around 3.6,
# an orange hoodie the model half took for a bottle 0.8.
OBJECT_SURE_MARGIN = 2.0


def knowing_spec(spec: ModelSpec) -> ModelSpec:
    """The model whose labels name every class: the confirming one, where the job's model knows only one."""
    return get_model(spec.confirm_with) if spec.confirm_with else spec


def objects_kept_or_not(
    probability: np.ndarray,
    knowing: Segmentation,
    spec: ModelSpec,
    params: JobParams,
    scale: float,
    person_only_pass: Segmentation | None,
) -> np.ndarray:
    """``probability`` (work resolution) with the objects kept or left out.

    Objects are the pixels ``spec`` (a model that names many classes) gives to a class that is neither a
    target nor the background. ``keep=held``: the held ones join the subject. ``keep=targets``: where a
    person-only first pass took an object for part of the person (the chair sat on, the cat in the arms),
    the object's inner pixels are background where ``spec`` is sure of it (a clear logit margin over the
    target: a hoodie it half took for a bottle stays the person). ``scale``: work pixels per model pixel."""
    labels = knowing.labels
    assert labels is not None
    height, width = probability.shape
    others = [
        i for i, label in enumerate(spec.labels) if label != spec.background_label and label not in params.targets
    ]
    objects = resized_mask(np.isin(labels, others), width, height)
    if not objects.any():
        return probability
    foreground = None
    if person_only_pass is not None:
        foreground = resized_mask(person_only_pass.probability >= 0.5, width, height)
    if params.keep is Keep.HELD:
        reach = max(1, round(HELD_REACH_MODEL_PIXELS * scale))
        held = held_objects(objects, probability >= 0.5, reach=reach, foreground=foreground)
        return np.maximum(probability, held.astype(np.float32))
    if foreground is None:
        return probability  # a model that names every class already left other objects out
    sure = objects
    if knowing.margin is not None:
        margin = cv2.resize(knowing.margin.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        sure = objects & (margin >= OBJECT_SURE_MARGIN)
    # The inner pixels only: the two models' edges disagree by a model pixel or so.
    edge = max(1, round(scale))
    inner = cv2.erode(sure.astype(np.uint8), np.ones((2 * edge + 1, 2 * edge + 1), np.uint8)) > 0
    return np.where(inner, 0.0, probability).astype(np.float32)


def resized_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A boolean mask on a width x height grid (nearest pixel)."""
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
