"""Island removal, confirmation by a second model, and edge refinement."""

from __future__ import annotations

import cv2
import numpy as np

from backdrop.pipeline.refine import clean_probability, refine_alpha


def blobs(*circles: tuple[int, int, int], size: int = 256) -> np.ndarray:
    probability = np.zeros((size, size), np.float32)
    for x, y, r in circles:
        cv2.circle(probability, (x, y), r, 1.0, -1)
    return cv2.GaussianBlur(probability, (0, 0), 1.5)


def test_far_small_island_dropped_near_one_kept():
    probability = blobs((100, 128, 60), (240, 20, 6), (165, 128, 5))
    cleaned = clean_probability(probability)
    assert cleaned[128, 100] > 0.9  # main subject
    assert cleaned[20, 240] == 0.0  # far island
    assert cleaned[128, 165] > 0.9  # small but touching-close: a hand, an ear
    kept = clean_probability(probability, drop_far_islands=False)
    assert kept[20, 240] > 0.9


def test_two_large_subjects_both_kept():
    cleaned = clean_probability(blobs((60, 128, 40), (200, 128, 35)))
    assert cleaned[128, 60] > 0.9 and cleaned[128, 200] > 0.9


def test_regions_the_confirming_model_does_not_see_are_dropped():
    probability = blobs((70, 128, 50), (200, 128, 45))
    evidence = np.zeros((64, 64), bool)
    evidence[20:44, 8:28] = True  # the confirming model sees the target only on the left blob
    cleaned = clean_probability(probability, evidence=evidence, drop_far_islands=False)
    assert cleaned[128, 70] > 0.9 and cleaned[128, 200] == 0.0
    assert not clean_probability(probability, evidence=np.zeros((64, 64), bool)).any()


def test_nothing_found_gives_zero():
    assert not clean_probability(np.full((32, 32), 0.2, np.float32)).any()


def test_refined_edge_follows_the_photo_at_full_resolution():
    """A coarse, misplaced model edge snaps to the photo's real edge at full resolution."""
    height, width = 1200, 1600
    image = np.full((height, width, 3), 40, np.uint8)
    image[:, :803] = 210  # the real edge, at x = 803
    coarse = np.zeros((64, 64), np.float32)
    coarse[:, :33] = 1.0  # the model's edge lands near x = 825, and blurry once upsampled
    preview = cv2.resize(image, (512, 384), interpolation=cv2.INTER_AREA)
    alpha = refine_alpha(coarse, image, preview)
    assert alpha.full.shape == (height, width) and alpha.full.dtype == np.uint8
    row = alpha.full[600].astype(int)
    # A full-resolution step exactly at the photo's edge ...
    assert row[802] - row[804] > 100
    assert row[790] > 250 and row[860:].max() < 40
    # ... where the plain upsampled mask is a ramp 25 pixels per model pixel wide.
    naive = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)[600] * 255
    assert abs(naive[802] - naive[804]) < 25
    assert alpha.preview.shape == (384, 512)
