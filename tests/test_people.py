"""People as instances: detector decoding, regions and their geometry, the full-body view, and the real
detectors and landmark model on real photos."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from backdrop.models.registry import PEOPLE_MODELS
from backdrop.pipeline.people import (
    Detection,
    Letterbox,
    Person,
    Pose,
    Region,
    aligned_region,
    anchor_centers,
    detector_input,
    face_of,
    find_people,
    needs_poses,
    paste,
    pose_input,
    read_detections,
    read_pose,
    region_transform,
    weighted_nms,
    worth_a_pose,
)
from backdrop.pipeline.regions import full_body_view, merge_upright_looks, separate_people, turned_from_upright

POSE_DETECTOR = PEOPLE_MODELS["pose-detector"]
FACE_DETECTOR = PEOPLE_MODELS["face-detector"]
POSE = PEOPLE_MODELS["pose-landmarks"]
EVAL = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "person-masks"


def test_anchors_match_the_detectors_outputs():
    pose = anchor_centers(POSE_DETECTOR.anchors)
    face = anchor_centers(FACE_DETECTOR.anchors)
    assert pose.shape == (2254, 2) and face.shape == (2304, 2)  # the models' own output lengths
    # Stride 8 on 224: a 28x28 grid, two anchors per cell, row by row; the last grid is 7x7 with six.
    assert np.allclose(pose[0], pose[1]) and np.allclose(pose[0], [0.5 / 28, 0.5 / 28])
    assert np.allclose(pose[2], [1.5 / 28, 0.5 / 28])
    assert np.allclose(pose[-1], [6.5 / 7, 6.5 / 7]) and np.allclose(pose[-6], pose[-1])
    assert np.allclose(face[48], [0.5 / 48, 1.5 / 48])


def test_detections_decode_through_anchor_offsets_and_the_letterbox():
    """A face 40 input pixels wide at input (100, 120), in a 400x200 photo letterboxed into 192x192."""
    image = np.zeros((200, 400, 3), np.uint8)
    tensor, letterbox = detector_input(image, FACE_DETECTOR)
    assert tensor.shape == (192, 192, 3) and letterbox == Letterbox(0.48, 0.0, 48.0)
    assert tensor[0, 0, 0] == 0.0 and tensor[100, 100, 0] == pytest.approx(-1.0)  # padding is 0, black is -1
    anchors = anchor_centers(FACE_DETECTOR.anchors)
    boxes = np.zeros((2304, 16), np.float32)
    scores = np.full((2304, 1), -20.0, np.float32)
    index = 30 * 48 + 25  # cell (25, 30): centre (25.5 * 4, 30.5 * 4) = (102, 122) input pixels
    boxes[index, :4] = [-2.0, -2.0, 40.0, 40.0]
    boxes[index, 4:6] = [-10.0, -8.0]  # the first keypoint: an eye
    scores[index] = 3.0
    found = read_detections(boxes, scores, FACE_DETECTOR, anchors, letterbox)
    assert len(found) == 1
    face = found[0]
    assert face.score == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert face.box == pytest.approx(((80 - 0) / 0.48, (100 - 48) / 0.48, (120 - 0) / 0.48, (140 - 48) / 0.48))
    assert face.keypoints[0] == pytest.approx([92 / 0.48, (114 - 48) / 0.48])


def test_weighted_nms_merges_overlaps_by_score_and_keeps_the_rest_apart():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    points = np.zeros((3, 1, 2), np.float32)
    points[:, 0, 0] = [0, 3, 50]
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    merged = weighted_nms(boxes, points, scores, overlap=0.3)
    assert [score for _, _, score in merged] == pytest.approx([0.9, 0.8])
    assert merged[0][0] == pytest.approx([0.25, 0, 10.25, 10])  # (0 * 0.9 + 1 * 0.3) / 1.2
    assert merged[0][1][0, 0] == pytest.approx(0.75)
    assert merged[1][0] == pytest.approx([50, 50, 60, 60])


def test_regions_turn_the_body_upright():
    upright = aligned_region((100.0, 200.0), (100.0, 120.0), 1.25)
    assert upright.rotation == pytest.approx(0.0) and upright.size == pytest.approx(200.0)
    lying = aligned_region((100.0, 200.0), (180.0, 200.0), 1.0)  # head to the right
    assert lying.rotation == pytest.approx(math.pi / 2)
    # The input's top centre maps onto the scale point's side of the region.
    top = region_transform(lying, 256) @ np.array([128.0, 0.0, 1.0])
    assert top == pytest.approx([180.0, 200.0], abs=1e-3)


def test_a_region_cut_out_and_pasted_back_lands_where_it_came_from():
    image = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(image, (250, 120), 6, (255, 255, 255), -1)
    region = Region(220.0, 150.0, 160.0, math.radians(30))
    crop = pose_input(image, region, POSE)
    assert crop.shape == (256, 256, 3) and crop.max() == pytest.approx(1.0)
    # What the model would segment (the bright dot) goes back to the same place in the photo.
    back = paste((crop[..., 0] > 0.5).astype(np.float32), region, 400, 300)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(xs.mean() - 250) < 1.5 and abs(ys.mean() - 120) < 1.5
    assert back[5, 5] == 0.0  # outside the region: nothing


def pose_in(region: Region) -> Pose:
    return Pose(region, np.zeros((33, 2)), np.zeros(33), 1.0, np.zeros((256, 256), np.float32), region)


def test_people_lying_down_get_an_upright_look_and_it_lands_on_them():
    standing = Region(100.0, 100.0, 80.0, math.radians(20))
    lying = Region(100.0, 100.0, 80.0, math.radians(-100))
    turned_over = Region(100.0, 100.0, 80.0, math.radians(350))  # 10 degrees the other way
    people = [Person(pose=pose_in(standing)), Person(pose=pose_in(lying)), Person(pose=pose_in(turned_over))]
    assert turned_from_upright([*people, Person(region=lying)]) == [lying]  # no body seen: no look
    # What the model sees upright (a bar down the middle of the crop) lies across the photo, on the grid.
    seen = np.zeros((64, 64), np.float32)
    seen[8:56, 28:36] = 1.0
    base = np.full((100, 100), 0.2, np.float32)
    merged = merge_upright_looks(base, [(lying, seen)], scale=0.5)
    ys, xs = np.nonzero(merged > 0.5)
    assert np.ptp(xs) > 3 * np.ptp(ys)  # lying: wider than tall
    assert abs(xs.mean() - 50) < 1.5 and abs(ys.mean() - 50) < 1.5
    assert merged[50, 40] > 0.9 and merged[0, 0] == pytest.approx(0.2, abs=1e-6)  # outside the region: as it was
    assert np.array_equal(merge_upright_looks(base, [], scale=0.5), base)


def test_pose_outputs_are_read_in_image_pixels():
    region = Region(200.0, 100.0, 128.0, 0.0)
    landmarks = np.zeros((39, 5), np.float32)
    landmarks[0, :2] = [128, 64]  # the nose, a quarter down the input's middle
    landmarks[33, :2] = [128, 128]  # the next region's centre and scale point
    landmarks[34, :2] = [128, 28]
    pose = read_pose(landmarks.reshape(-1), np.array([0.9]), np.full((256, 256, 1), 4.0), region, POSE)
    assert pose.nose == pytest.approx((200.0, 68.0))
    assert pose.presence == pytest.approx(0.9)
    assert pose.segmentation.min() == pytest.approx(1 / (1 + math.exp(-4.0)))
    assert pose.next_region.cx == pytest.approx(200.0) and pose.next_region.size == pytest.approx(2 * 50 * 1.25)


def test_close_ups_skip_the_pose_detector_and_small_people_need_it():
    big_face = Detection((100, 50, 250, 200), np.zeros((6, 2)), 0.9)
    small_face = Detection((10, 10, 30, 30), np.zeros((6, 2)), 0.9)
    assert not needs_poses([big_face], 600, 400)
    assert needs_poses([big_face, small_face], 600, 400)
    assert needs_poses([], 600, 400)  # nobody's face: maybe someone seen from behind
    assert worth_a_pose(Region(0, 0, 900, 0), 600, 400) and not worth_a_pose(Region(0, 0, 1300, 0), 600, 400)


def test_a_face_belongs_to_the_pose_whose_head_it_is():
    detection = Detection((0, 0, 1, 1), np.array([[100, 300], [100, 40], [100, 120], [140, 120]], np.float32), 0.9)
    own = Detection((85, 65, 115, 95), np.zeros((6, 2)), 0.8)
    other = Detection((300, 65, 330, 95), np.zeros((6, 2)), 0.9)
    assert face_of([other, own], detection) is own
    assert face_of([other], detection) is None


def test_the_full_body_view_adds_limbs_but_does_not_fill_a_gap_the_subject_encloses():
    probability = np.zeros((100, 100), np.float32)
    probability[20:80, 20:40] = 1.0  # two people, background between them ...
    probability[20:80, 60:80] = 1.0
    probability[20:30, 40:60] = 1.0  # ... enclosed by their arms above and their feet below
    probability[70:80, 40:60] = 1.0
    body = np.zeros((100, 100), np.float32)
    body[20:95, 20:80] = 0.9  # a landmark pass that painted both, the gap, and legs below them
    result = full_body_view(probability, [Person(segmentation=body)])
    assert result[85:95, 25:35].min() == pytest.approx(0.9)  # the legs the first pass missed
    assert result[40:60, 45:55].max() == 0.0  # the gap between them stays background
    assert full_body_view(probability, [Person()]) is probability


def test_background_between_two_people_is_taken_out():
    """The whole-photo pass filled the grass between two people; both their own segmentations say
    background there, so it goes; their own edges (within the margin) and a third person with only a
    face in between are left alone."""
    probability = np.zeros((100, 120), np.float32)
    probability[30:90, 10:110] = 0.9  # one blob over two people and the grass between them
    left, right = np.zeros_like(probability), np.zeros_like(probability)
    left[30:90, 10:40] = 0.95
    right[30:90, 80:110] = 0.95
    people = [Person(segmentation=left), Person(segmentation=right)]
    result = separate_people(probability, people, scale=1.0, margin=3)
    assert result[50:80, 50:70].max() < 0.1  # the grass
    assert result[50:80, 10:40].min() == pytest.approx(0.9) and result[50:80, 41:43].min() == pytest.approx(0.9)
    # A face between them, its body not segmented: that part of the blob is someone.
    face = Detection((55.0, 30.0, 65.0, 40.0), np.zeros((6, 2)), 0.9)
    kept = separate_people(probability, [*people, Person(face=face)], scale=1.0, margin=3)
    assert kept[45:60, 52:68].min() == pytest.approx(0.9)
    assert separate_people(probability, people[:1], scale=1.0, margin=3) is probability
    # DeepLab sees someone nobody detected walking between them (as large as a body): not a gap. Where it
    # only spills a little into the gap (its coarse outline), the gap still goes.
    walker = np.zeros(probability.shape, bool)
    walker[30:90, 48:72] = True
    kept = separate_people(probability, people, scale=1.0, margin=3, others_seen=walker)
    assert kept[35:85, 50:70].min() == pytest.approx(0.9)
    spill = np.zeros(probability.shape, bool)
    spill[50:60, 40:48] = True  # 80 pixels, under a fifth of a body (1800)
    cut = separate_people(probability, people, scale=1.0, margin=3, others_seen=spill)
    assert cut[50:60, 44:48].max() < 0.1 and cut[50:80, 50:70].max() < 0.1


@pytest.fixture(scope="module")
def full_body_photo() -> np.ndarray:
    path = EVAL / "images" / "48.jpg"
    if not path.is_file():
        pytest.skip(f"no evaluation photo at {path}")
    return cv2.imread(str(path))


def test_the_real_models_find_a_whole_person(pipeline, full_body_photo):
    """A man on a bike, full length: the face detector finds his face, the pose detector his body, and
    the landmark model's nose lies on that face; the segmentation covers him, not the path beside him."""
    people, fresh = pipeline.finder.find_people(full_body_photo)
    assert fresh and len(people) == 1
    person = people[0]
    assert person.face is not None and person.pose is not None and person.pose.presence > 0.5
    x0, y0, x1, y1 = person.face.box
    nose_x, nose_y = person.pose.nose
    assert x0 <= nose_x <= x1 and y0 <= nose_y <= y1
    height, width = full_body_photo.shape[:2]
    body = paste(person.pose.segmentation, person.pose.region, width, height)
    reference = cv2.imread(str(EVAL / "masks" / "48.png"), cv2.IMREAD_GRAYSCALE) > 127
    seen = body >= 0.5
    assert np.count_nonzero(seen & reference) / np.count_nonzero(seen | reference) > 0.8


def test_people_are_followed_between_detector_runs(pipeline, full_body_photo):
    calls = {"faces": 0, "poses": 0, "looks": 0}

    def counted(name, function):
        def run(*args):
            calls[name] += 1
            return function(*args)

        return run

    detect_faces = counted("faces", lambda image: pipeline.models.detect(FACE_DETECTOR, image))
    detect_poses = counted("poses", lambda image: pipeline.models.detect(POSE_DETECTOR, image))
    look_at = counted("looks", pipeline.models.look_at)
    people, detections = find_people(full_body_photo, POSE, detect_faces, detect_poses, look_at)
    followed, same = find_people(
        full_body_photo, POSE, detect_faces, detect_poses, look_at, tracked=people, detections=detections
    )
    assert calls == {"faces": 1, "poses": 1, "looks": 2} and same is detections
    assert isinstance(followed[0].pose, Pose) and followed[0].region == people[0].pose.next_region
