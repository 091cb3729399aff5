"""Who the subject is: the rules of choice.py on made-up people (real photos: tests/test_quality.py)."""

from __future__ import annotations

import cv2
import numpy as np

from backdrop.params import Subjects
from backdrop.pipeline.choice import (
    Choice,
    choose_people,
    choose_regions,
    keep_subjects,
    settle_subjects,
    share_out,
    sharpness,
    with_a_body,
)
from backdrop.pipeline.people import Detection, Person

RNG = np.random.default_rng(7)
# A textured grey image: faces cut from it are sharp; blurred copies are not.
TEXTURE = cv2.resize(RNG.integers(0, 255, (60, 80), dtype=np.uint8), (400, 300), interpolation=cv2.INTER_NEAREST)


def face_at(x: float, y: float, width: float) -> Detection:
    return Detection((x - width / 2, y - width / 2, x + width / 2, y + width / 2), np.zeros((6, 2)), 0.9)


def person(x: float, y: float, width: float, *, was_subject: bool | None = None) -> Person:
    return Person(face=face_at(x, y, width), was_subject=was_subject)


def test_the_nearest_central_face_is_the_main_subject_and_people_at_its_depth_join_it():
    people = [person(200, 140, 40), person(100, 100, 36), person(330, 80, 15)]
    choice = choose_people(people, TEXTURE, Subjects.MAIN)
    assert choice.main == 0 and choice.subjects == (True, True, False)
    assert choose_people(people, TEXTURE, Subjects.ALL).subjects == (True, True, True)
    assert choose_people([], TEXTURE, Subjects.MAIN) == Choice((), None)


def test_a_blurred_face_falls_into_the_background_a_subject_stays_one_until_clearly_out():
    blurred = TEXTURE.copy()
    blurred[:, 250:] = cv2.GaussianBlur(TEXTURE, (0, 0), 6)[:, 250:]
    assert sharpness(blurred, face_at(300, 100, 40).box) < 0.25 * sharpness(blurred, face_at(100, 100, 40).box)
    people = [person(100, 100, 40), person(300, 100, 40)]
    assert choose_people(people, blurred, Subjects.MAIN).subjects == (True, False)
    # In a clip: someone who was a subject keeps a margin (here: a face at 0.55 of the main one's width).
    smaller = [person(100, 100, 40), person(200, 100, 22)]
    assert choose_people(smaller, TEXTURE, Subjects.MAIN).subjects == (True, False)
    smaller[1] = person(200, 100, 22, was_subject=True)
    assert choose_people(smaller, TEXTURE, Subjects.MAIN).subjects == (True, True)


def test_a_smaller_face_in_the_same_focus_is_as_sharp_as_the_main_one():
    """Faces are compared at the smaller one's size: a small face brought up to a larger size looked
    blurred by the resampling alone (a group a few metres away lost its smaller faces)."""
    template = cv2.resize(RNG.integers(0, 255, (96, 96), dtype=np.uint8), (200, 200), interpolation=cv2.INTER_CUBIC)
    image = np.full((300, 400), 128, np.uint8)
    people = []
    for x, width in ((100, 45), (300, 28)):  # the same face, the same blur (same depth), two sizes
        face = cv2.GaussianBlur(cv2.resize(template, (width, width), interpolation=cv2.INTER_AREA), (0, 0), 0.5)
        image[100 - width // 2 : 100 - width // 2 + width, x - width // 2 : x - width // 2 + width] = face
        people.append(person(x - width / 2 + width // 2, 100 - width / 2 + width // 2, width))
    boxes = [p.face.box for p in people]
    at_48 = sharpness(image, boxes[1]) / sharpness(image, boxes[0])
    at_28 = sharpness(image, boxes[1], 28) / sharpness(image, boxes[0], 28)
    assert at_48 < 0.7 and 0.7 < at_28 < 1.6, (at_48, at_28)
    assert choose_people(people, image, Subjects.MAIN).subjects == (True, True)
    # Out of focus at the same size it still goes.
    image[86:114, 286:314] = cv2.GaussianBlur(image[86:114, 286:314], (0, 0), 3)
    assert choose_people(people, image, Subjects.MAIN).subjects == (True, False)


def blob(probability: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    probability[y0:y1, x0:x1] = 1.0


def test_regions_of_people_let_go_are_dropped_and_a_shared_region_is_shared_out():
    probability = np.zeros((300, 400), np.float32)
    blob(probability, 60, 80, 140, 300)  # the subject
    blob(probability, 300, 150, 340, 300)  # someone far behind, on their own
    blob(probability, 140, 120, 200, 300)  # someone partly hidden behind the subject, touching them
    people = [person(100, 100, 40), person(320, 160, 12), person(175, 130, 16)]
    choice = Choice((True, False, False), 0)
    kept = keep_subjects(probability, people, choice, scale=1.0)
    assert kept[150:300, 70:130].min() == 1.0
    assert kept[150:300, 300:340].max() == 0.0
    assert kept[125:175, 165:200].max() == 0.0  # the part nearer the hidden person's head and torso
    assert kept[250:300, 141:146].min() == 1.0  # the subject's side of the shared region


def test_a_shared_region_parts_along_the_valley_between_two_people_not_at_their_seeds_midpoint():
    probability = np.ones((100, 300), np.float32)
    probability[:, 200:210] = 0.7  # where the two people's outlines meet, the model is less sure
    inside = np.ones_like(probability, bool)
    left, right = np.zeros_like(inside), np.zeros_like(inside)
    left[40:60, 0:20] = True  # seeds far apart: their straight midpoint (x 150) is on the left person
    right[40:60, 280:300] = True
    owners = share_out(probability, inside, [left, right])
    assert (owners[:, :200] == 0).all() and (owners[:, 210:] == 1).all()
    assert 0 < np.count_nonzero(owners[:, 200:210] == 0) < owners[:, 200:210].size  # the valley split
    # Without a valley, one plateau: the people meet halfway along it.
    owners = share_out(np.ones_like(probability), inside, [left, right])
    assert (owners[:, :140] == 0).all() and (owners[:, 160:] == 1).all()
    # A seed inside another's (a head-and-torso box on the outline of the person in front) keeps its part.
    box = np.zeros_like(inside)
    box[30:70, 240:260] = True
    owners = share_out(np.ones_like(probability), inside, [inside.copy(), box])
    assert (owners[30:70, 240:260] == 1).all() and (owners[:, :200] == 0).all()


def test_a_region_nobody_was_seen_in_goes_when_small_beside_the_subjects():
    probability = np.zeros((300, 400), np.float32)
    blob(probability, 60, 80, 160, 300)  # the subject: 100 x 220
    blob(probability, 360, 200, 400, 300)  # someone cut off by the frame: 40 x 100, under a quarter
    kept = keep_subjects(probability, [person(110, 100, 40)], Choice((True,), 0), scale=1.0)
    assert kept[200:300, 360:400].max() == 0.0 and kept[150:300, 70:150].min() == 1.0
    blob(probability, 200, 60, 300, 300)  # a large region nobody was seen in stays: too big to judge
    kept = keep_subjects(probability, [person(110, 100, 40)], Choice((True,), 0), scale=1.0)
    assert kept[100:300, 210:290].min() == 1.0


def test_a_face_with_no_body_under_it_is_not_a_person():
    probability = np.zeros((300, 400), np.float32)
    blob(probability, 60, 80, 160, 300)
    body = np.zeros_like(probability)
    body[80:300, 60:160] = 0.9
    with_pose = Person(face=face_at(110, 100, 40), segmentation=body)
    on_a_ball = person(300, 250, 30)  # no subject pixels around it
    on_a_hand = person(120, 200, 30)  # a "face" on the posed person's own body
    assert with_a_body([with_pose, on_a_ball, on_a_hand], probability, scale=1.0) == [with_pose]


def test_between_detector_runs_the_last_choice_holds():
    probability = np.zeros((300, 400), np.float32)
    blob(probability, 60, 80, 140, 300)
    blob(probability, 250, 80, 330, 300)
    people = [person(100, 100, 40, was_subject=True), person(290, 100, 16, was_subject=True)]
    _, _, fresh = settle_subjects(probability, people, TEXTURE, 1.0, Subjects.MAIN)
    assert fresh.subjects == (True, False)  # a face 0.4 as wide: not at the subject's depth
    kept, _, held = settle_subjects(probability, people, TEXTURE, 1.0, Subjects.MAIN, fresh=False)
    assert held.subjects == (True, True) and kept[150:300, 260:320].min() == 1.0


def test_other_targets_keep_the_largest_region_and_those_near_its_size():
    mask = np.zeros((100, 100), bool)
    mask[10:50, 10:50] = True  # 1600
    mask[60:90, 60:90] = True  # 900: over 0.36 of the largest
    mask[5:15, 80:90] = True  # 100
    kept = choose_regions(mask, Subjects.MAIN)
    assert kept[20, 20] and kept[70, 70] and not kept[10, 85]
    assert choose_regions(mask, Subjects.ALL) is mask
