"""The web page in a real browser: Debian's Chromium driven by Playwright (no browser download).

Screenshots are kept under var/screenshots/ (CI artifacts). Without Chromium the test is skipped, unless
BACKDROP_REQUIRE_BROWSER=1 (CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import encode_rgb

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "var" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("BACKDROP_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield instance
        instance.close()


@pytest.mark.parametrize(
    ("viewport", "label"), [({"width": 1280, "height": 900}, "desktop"), ({"width": 390, "height": 844}, "phone")]
)
def test_blur_a_photo_in_the_browser(stack, browser, tmp_path, astronaut, viewport, label):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(encode_rgb(astronaut, "PNG"))
    page = browser.new_page(viewport=viewport)
    page.goto(stack.api_url + "/")
    page.wait_for_selector("#targets input[value=cat]")  # targets loaded from /v1/models
    page.set_input_files("#image-input", str(photo))
    page.check("input[name=effect][value=blur]")
    page.fill("#strength", "80")
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    page.wait_for_function(
        "document.getElementById('after').complete && document.getElementById('after').naturalWidth > 0"
    )
    size = page.evaluate(
        "[document.getElementById('after').naturalWidth, document.getElementById('after').naturalHeight]"
    )
    assert size == [512, 512]
    assert "person" in page.inner_text("#detected")
    assert "Done" in page.inner_text("#status-text")
    href = page.get_attribute("#download", "href")
    assert href and "response-content-disposition=attachment" in href
    page.fill("#divider", "30")
    page.screenshot(path=str(SHOTS / f"result-{label}.png"), full_page=True)
    if label == "phone":
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.close()


def test_invalid_file_shows_an_error_in_plain_words(stack, browser, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("these are my notes, not a photo")
    page = browser.new_page()
    page.goto(stack.api_url + "/")
    page.set_input_files("#image-input", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "isn't a photo we can read" in page.inner_text("#error")
    page.screenshot(path=str(SHOTS / "invalid-file.png"), full_page=True)
    page.close()


def test_a_video_with_progress_and_before_after(stack, browser, tmp_path):
    from tests.videos import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=60, width=320, height=240, audio_seconds=2.0)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.api_url + "/")
    page.wait_for_selector("#targets input[value=cat]")
    page.set_input_files("#image-input", str(clip))
    assert page.is_visible("#preview-video") and page.input_value("#format") == "mp4"
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    assert page.evaluate("document.getElementById('video-progress').value") == 100
    assert "100%" in page.inner_text("#video-progress-text")
    page.wait_for_function("document.getElementById('after-video').readyState >= 1", timeout=30_000)
    duration = page.evaluate("document.getElementById('after-video').duration")
    assert abs(duration - 2.0) < 0.2
    size = page.evaluate(
        "[document.getElementById('after-video').videoWidth, document.getElementById('after-video').videoHeight]"
    )
    assert size == [320, 240]
    assert "60 frames" in page.inner_text("#detected") and "with its sound" in page.inner_text("#detected")
    page.screenshot(path=str(SHOTS / "video-result.png"), full_page=True)
    page.close()
