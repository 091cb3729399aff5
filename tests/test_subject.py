"""The closer look, the views of a still, held objects and the trimap, as pure functions (no models)."""

from __future__ import annotations

import cv2
import numpy as np

from backdrop.pipeline.refine import refine_alpha, trimap
from backdrop.pipeline.segment import probability_over_views
from backdrop.pipeline.subject import (
    MAX_LOOKS,
    Box,
    feather,
    held_objects,
    look_closer,
    merge_looks,
    plan_looks,
)


def mask_with(*rects: tuple[int, int, int, int], shape=(300, 400)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def test_one_subject_filling_the_photo_gets_no_second_look():
    assert plan_looks(mask_with((20, 10, 390, 300))) == []


def test_each_small_subject_gets_its_own_look_largest_first():
    people = [(20, 150, 50, 260), (120, 120, 160, 270), (240, 170, 262, 250), (330, 140, 370, 280)]
    looks = plan_looks(mask_with(*people))
    assert len(looks) == 4
    assert [look.area for look in looks] == sorted((look.area for look in looks), reverse=True)
    for x0, y0, x1, y1 in people:  # every subject lies inside one look, with a margin around it
        assert any(look.x0 < x0 and look.y0 < y0 and look.x1 > x1 and look.y1 > y1 for look in looks)


def test_a_region_inside_another_ones_look_is_looked_at_with_it():
    # A ball just off a player's foot: its own look would lie inside the player's.
    looks = plan_looks(mask_with((100, 50, 220, 280), (225, 200, 240, 230)))
    assert len(looks) == 1 and looks[0].x0 < 100 and looks[0].x1 > 240


def test_specks_are_not_subjects_and_looks_are_capped():
    assert plan_looks(mask_with((10, 10, 12, 12))) == []
    crowd = [(10 + 45 * i, 100, 30 + 45 * i, 160) for i in range(9)]
    assert len(plan_looks(mask_with(*crowd))) == MAX_LOOKS


def test_feather_ramps_only_on_inner_edges():
    inner = feather(Box(100, 50, 200, 150), 400, 300)
    assert inner[50, 50] == 1.0 and inner[0, 50] < 0.1 and inner[50, 0] < 0.1 and inner[99, 50] < 0.1
    on_border = feather(Box(0, 0, 100, 100), 400, 300)
    assert on_border[0, 0] == 1.0 and on_border[50, 0] == 1.0 and on_border[50, 99] < 0.1


def test_merge_replaces_the_first_pass_inside_a_look_and_keeps_it_outside():
    base = np.full((300, 400), 0.2, np.float32)
    look = Box(100, 50, 200, 150)
    merged = merge_looks(base, [(look, np.full((100, 100), 0.9, np.float32))])
    assert merged[100, 150] == np.float32(0.9) and merged[10, 10] == np.float32(0.2)
    assert 0.2 < merged[52, 150] < 0.9  # feathered towards the look's inner edge: no seam


def test_look_closer_crops_the_finer_image():
    image = np.zeros((600, 800, 3), np.uint8)
    mask = mask_with((40, 100, 80, 200), (300, 100, 340, 200))
    seen = []

    def probability_of(crop):
        seen.append(crop.shape)
        return np.ones((16, 16), np.float32)

    looks = plan_looks(mask)
    merged = look_closer(np.zeros((300, 400), np.float32), looks, image, probability_of)
    assert len(looks) == 2 and len(seen) == 2
    assert all(shape[0] > 200 for shape in seen)  # crops come from the 600x800 image, not the 300x400 map
    assert merged[150, 60] == 1.0 and merged[150, 200] == 0.0


def stretching_model(view: np.ndarray) -> np.ndarray:
    """A stand-in model: the view stretched to a fixed 64x48 input, P = brightness (as a selfie model
    stretches any photo to its input)."""
    return cv2.resize(view[:, :, 0], (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def each(model):
    return lambda views: [model(view) for view in views]


def test_the_views_come_back_aligned_with_the_photo():
    # A subject off-centre and touching the right edge: a mirror or zoomed-out view mapped back in the
    # wrong place would widen or shift it in the maximum.
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[60:240, 250:400] = 255
    own = stretching_model(photo)
    merged = probability_over_views(each(stretching_model), photo)
    assert merged.shape == own.shape
    # The zoomed-out view sees the photo coarser: its edges spread by a pixel, evenly to both sides.
    assert np.array_equal(merged >= 0.5, own >= 0.5)
    assert np.abs(merged - own).mean() < 0.01


def test_the_views_keep_what_two_of_them_saw_and_not_what_one_alone_saw():
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[100:200, 20:120] = 255  # the left of the photo: only the mirror image sees it
    photo[100:200, 240:300] = 255  # right of the middle: the photo and its zoomed-out view see it

    def sees_the_right_half_only(view: np.ndarray) -> np.ndarray:
        probability = stretching_model(view)
        probability[:, : probability.shape[1] // 2] = 0
        return probability

    merged = probability_over_views(each(sees_the_right_half_only), photo)
    own = sees_the_right_half_only(photo)
    assert own[16:32, 5:15].max() == 0
    assert merged[16:32, 5:15].max() < 0.5  # one view alone: not kept (at the own pass's 64x48 grid)
    assert merged[18:30, 40:46].min() > 0.9  # two views: kept, as sure as the surer of them


def test_held_objects_by_the_person_models_foreground():
    subject = mask_with((100, 50, 200, 300))
    bottle = (190, 120, 230, 160)  # in the hand: the person-only model saw it as part of the person
    screen = (200, 20, 380, 100)  # behind the head: touching in the picture, not held
    objects = mask_with(bottle, screen)
    foreground = mask_with((100, 50, 200, 300), bottle)
    held = held_objects(objects, subject, reach=2, foreground=foreground)
    assert held[140, 210] and not held[60, 300]


def test_held_objects_by_nearness_without_a_person_model():
    subject = mask_with((100, 100, 200, 200))
    leash = (195, 120, 260, 126)  # a sixth of it within reach
    ball = (190, 150, 230, 190)  # over a third within reach
    held = held_objects(mask_with(leash, ball), subject, reach=5)
    assert held[170, 220] and not held[122, 250]


def test_trimap_band_and_certain_regions():
    probability = np.zeros((100, 100), np.float32)
    probability[:, :50] = 1.0
    probability[10:20, 80:90] = 0.3  # faint haze far from the subject
    subject, unknown = trimap(cv2.GaussianBlur(probability, (0, 0), 2), band=4)
    assert unknown[50, 47:53].all() and not unknown[50, 40] and not unknown[50, 60]
    assert subject[50, 30] == 1 and subject[15, 85] == 0 and not unknown[15, 85]


def test_haze_far_from_the_subject_becomes_exactly_zero_and_the_subject_exactly_one():
    image = np.full((400, 400, 3), 90, np.uint8)
    image[:, :200] = 200
    probability = np.zeros((100, 100), np.float32)
    probability[:, :50] = 1.0
    probability[20:40, 70:90] = 0.35  # the model's faint guess on a dark wall
    alpha = refine_alpha(cv2.GaussianBlur(probability, (0, 0), 1.5), image, image)
    assert alpha.full[100:150, 300:350].max() == 0
    assert alpha.full[:, :150].min() == 255
    assert alpha.full[200, 190] > 200 and alpha.full[200, 210] < 50  # the edge follows the photo
