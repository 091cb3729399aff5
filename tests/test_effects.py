"""Compositing on synthetic images with known masks: no model involved."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from backdrop.params import Bokeh, Effect, JobParams
from backdrop.pipeline.effects import apply_effect, blurred_background, composite, cover, disc_kernel
from backdrop.pipeline.geometry import make_preview

RNG = np.random.default_rng(3)


def textured(height: int = 480, width: int = 640) -> np.ndarray:
    noise = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 0.7)


def disc_alpha(height: int = 480, width: int = 640) -> np.ndarray:
    alpha = np.zeros((height, width), np.uint8)
    cv2.circle(alpha, (width // 2, height // 2), min(height, width) // 4, 255, -1)
    return alpha


def render(image, alpha, **params):
    preview = make_preview(image, 256)
    alpha_preview = cv2.resize(alpha, preview.shape[1::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    background = params.pop("background", None)
    return apply_effect(image, preview, alpha, alpha_preview, JobParams.parse(params), background=background)


def high_frequency_energy(image: np.ndarray, region: np.ndarray) -> float:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(np.var(cv2.Laplacian(gray, cv2.CV_32F)[region]))


@pytest.mark.parametrize("effect", ["blur", "gray", "color", "replace"])
def test_subject_pixels_unchanged(effect):
    image, alpha = textured(), disc_alpha()
    out = render(image, alpha, effect=effect, background=textured(300, 300), bokeh="lens")
    inside = alpha == 255
    assert np.array_equal(out[inside], image[inside])
    assert not np.array_equal(out[~inside], image[~inside])


def test_background_energy_falls_with_strength():
    image, alpha = textured(), disc_alpha()
    far_background = cv2.erode((alpha == 0).astype(np.uint8), np.ones((3, 3)), iterations=60) > 0
    for bokeh in ("gaussian", "lens"):
        energies = [high_frequency_energy(image, far_background)]
        for strength in (1, 10, 40, 100):
            energies.append(
                high_frequency_energy(render(image, alpha, strength=str(strength), bokeh=bokeh), far_background)
            )
        assert all(a > b for a, b in itertools.pairwise(energies)), (bokeh, energies)
        assert energies[-1] < 0.01 * energies[0]


def test_no_halo_next_to_the_subject():
    """A red subject on a dark-blue background: the blurred background beside it must stay blue."""
    height, width = 400, 600
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (120, 20, 10)  # BGR dark blue background
    image += RNG.integers(0, 12, image.shape, dtype=np.uint8)
    alpha = np.zeros((height, width), np.uint8)
    alpha[:, :250] = 255
    image[:, :250] = (20, 20, 230)  # red subject
    out = render(image, alpha, strength="100")
    ring = out[:, 252:280]  # background pixels right next to the subject
    assert ring[..., 2].mean() < 25, ring[..., 2].mean()
    # What a naive whole-image blur does there, for scale.
    naive = cv2.GaussianBlur(image, (0, 0), 36)[:, 252:280]
    assert naive[..., 2].mean() > 80


def test_cutout_alpha_is_the_mask_and_mask_effect_is_the_mask():
    image, alpha = textured(), disc_alpha()
    alpha = cv2.GaussianBlur(alpha, (0, 0), 3)  # soft edges survive untouched
    cut = render(image, alpha, effect="cutout")
    assert cut.shape == (*alpha.shape, 4)
    assert np.array_equal(cut[..., 3], alpha)
    certain = (alpha == 0) | (alpha == 255)  # colours change only where the matte is partly transparent
    assert np.array_equal(cut[..., :3][certain], image[certain])
    assert np.array_equal(render(image, alpha, effect="mask"), alpha)


def soft_edged_subject(height: int = 480, width: int = 640) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red subject with a textured, soft edge photographed against a white wall: (photo, alpha, the
    subject's own colours). Every edge pixel mixes the two as a camera would."""
    alpha = cv2.GaussianBlur(disc_alpha(height, width), (0, 0), 4)
    texture = RNG.integers(-25, 26, (height, width, 1))
    subject = np.clip(np.array([40, 40, 200]) + texture, 0, 255).astype(np.float32)  # BGR red
    a = alpha[..., None].astype(np.float32) / 255
    photo = np.clip(subject * a + 245.0 * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    return photo, alpha, subject


@pytest.mark.parametrize("effect", ["color", "replace", "cutout"])
def test_soft_edges_on_a_new_background_carry_no_glow_of_the_old_one(effect):
    photo, alpha, subject = soft_edged_subject()
    new_background = np.zeros_like(photo)
    new_background[:] = (255, 144, 30)
    out = render(photo, alpha, effect=effect, color="#1E90FF", background=new_background)
    a = alpha[..., None].astype(np.float32) / 255
    ideal = subject * a + new_background.astype(np.float32) * (1 - a)  # the subject as if shot on blue
    if effect == "cutout":  # composited over blue by the viewer
        ideal_colours = out[..., :3].astype(np.float32) * a + new_background * (1 - a)
        out = np.clip(ideal_colours + 0.5, 0, 255).astype(np.uint8)
    edge = (alpha > 25) & (alpha < 230)
    plain = photo.astype(np.float32) * a + new_background.astype(np.float32) * (1 - a)  # the old composite
    error = np.abs(out.astype(np.float32) - ideal)[edge].mean()
    old_error = np.abs(plain - ideal)[edge].mean()
    assert old_error > 20, old_error  # white wall blended into the edge: a light glow on blue
    assert error < old_error / 4, (error, old_error)


def test_input_alpha_carries_into_cutout():
    image, alpha = textured(100, 100), np.full((100, 100), 255, np.uint8)
    input_alpha = np.zeros((100, 100), np.uint8)
    input_alpha[:, 50:] = 255
    preview_alpha = alpha.astype(np.float32) / 255
    cut = apply_effect(
        image, image, alpha, preview_alpha, JobParams.parse({"effect": "cutout"}), input_alpha=input_alpha
    )
    assert cut[0, 0, 3] == 0 and cut[0, 99, 3] == 255


def test_color_and_gray_backgrounds():
    image, alpha = textured(), disc_alpha()
    out = render(image, alpha, effect="color", color="#1E90FF")
    assert tuple(out[0, 0]) == (255, 144, 30)
    gray = render(image, alpha, effect="gray")
    background = gray[alpha == 0].astype(int)
    assert (
        np.abs(background[:, 0] - background[:, 1]).max() == 0
        and np.abs(background[:, 1] - background[:, 2]).max() == 0
    )


def test_replace_scales_to_cover():
    tall = np.zeros((400, 100, 3), np.uint8)
    tall[:, :, 1] = np.linspace(0, 255, 400, dtype=np.uint8)[:, None]
    covered = cover(tall, 640, 480)
    assert covered.shape == (480, 640, 3)
    # The middle of the tall image fills the frame: top row is mid-gradient, not the black top.
    assert 70 < covered[0, 0, 1] < 130 and 125 < covered[-1, 0, 1] < 185
    image, alpha = textured(), disc_alpha()
    out = render(image, alpha, effect="replace", background=tall)
    assert np.array_equal(out[alpha == 0], covered[alpha == 0])


def test_composite_is_exact_at_the_ends_and_blends_between():
    fg, bg = np.full((2, 3, 3), 200, np.uint8), np.full((2, 3, 3), 100, np.uint8)
    alpha = np.array([[0, 128, 255], [255, 64, 0]], np.uint8)
    out = composite(fg, bg, alpha)
    assert out[0, 0, 0] == 100 and out[0, 2, 0] == 200 and abs(int(out[0, 1, 0]) - 150) <= 1


def test_lens_blur_turns_highlights_into_flat_discs():
    """A small bright light becomes a disc of even brightness (bokeh), not a Gaussian peak."""
    image = np.full((400, 400, 3), 15, np.uint8)
    image[196:204, 196:204] = 255
    alpha = np.zeros((400, 400), np.uint8)
    alpha_preview = np.zeros((400, 400), np.float32)

    def profile(bokeh: Bokeh) -> np.ndarray:
        out = blurred_background(image, image, alpha_preview, 60, bokeh)
        return out[200, 200:260, 1].astype(float)

    lens, gauss = profile(Bokeh.LENS), profile(Bokeh.GAUSSIAN)
    assert alpha.sum() == 0
    assert lens[0] > 60  # the highlight blooms: still bright after spreading over a disc
    half = 8
    assert lens[half] > 0.8 * lens[0], lens[: half + 1]  # flat top
    assert gauss[half] < 0.8 * gauss[0]
    assert disc_kernel(5.0).sum() == pytest.approx(1.0, abs=1e-5)


def test_effect_enum_is_fully_rendered():
    image, alpha = textured(60, 80), disc_alpha(60, 80)
    for effect in Effect:
        out = render(image, alpha, effect=effect.value, background=textured(10, 10))
        assert out.shape[:2] == (60, 80)
