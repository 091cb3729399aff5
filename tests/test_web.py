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
def playwright():
    """One Playwright for the module (a second one in the same thread is refused)."""
    if CHROMIUM is None:
        if os.environ.get("BACKDROP_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright):
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


def fake_camera_clip(path: Path, frames: int = 90) -> Path:
    """A .y4m file (what Chromium's fake camera plays, looping) made from a real clip at 640x360."""
    import av
    import cv2

    from backdrop.video.media import VideoSource

    clips = ROOT.parent / "shared" / "eval" / "videos"
    source = clips / "standing-720p-silent-audio.mp4"
    if not source.is_file():
        pytest.skip(f"no evaluation clips at {clips}")
    with av.open(str(path), mode="w", format="yuv4mpegpipe") as out, VideoSource(source) as clip:
        stream = out.add_stream("rawvideo", rate=24)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for index, frame in zip(range(frames), clip.frames(2.0), strict=False):
            image = cv2.resize(frame.image, (640, 360), interpolation=cv2.INTER_AREA)
            encoded = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            encoded.pts = index
            for packet in stream.encode(encoded):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_live_tab_with_a_fake_camera(stack, playwright, tmp_path):
    clip = fake_camera_clip(tmp_path / "camera.y4m")
    camera_args = [
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]  # fmt: skip
    corner = "(() => { const c = document.getElementById('live-canvas'); " \
             "return Array.from(c.getContext('2d').getImageData(8, 8, 1, 1).data.slice(0, 3)); })()"  # fmt: skip
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS + camera_args)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(stack.api_url + "/")
        page.click("#tab-live")
        page.check("input[name=live-effect][value=color]")
        page.fill("#live-color", "#00ff00")
        page.click("#live-start")
        # Processed frames arrive, at a real rate.
        page.wait_for_function("Number(document.getElementById('live-fps').textContent) >= 5", timeout=60_000)
        assert page.inner_text("#live-status") == "Live."
        # The background is the colour asked for ...
        page.wait_for_function(f"{corner}[1] > 200 && {corner}[0] < 60", timeout=20_000)
        page.screenshot(path=str(SHOTS / "live-color.png"), full_page=True)
        # ... and switching the effect changes the picture: grey background, the same in every channel.
        page.check("input[name=live-effect][value=gray]")
        page.wait_for_function(
            f"(() => {{ const p = {corner}; return Math.max(...p) - Math.min(...p) < 12 && p[1] < 200; }})()",
            timeout=20_000,
        )
        fps = int(page.inner_text("#live-fps"))
        assert fps >= 5
        page.screenshot(path=str(SHOTS / "live-gray.png"), full_page=True)
        page.click("#live-start")  # stop
        assert page.inner_text("#live-start") == "Start the camera"
    finally:
        browser.close()


def test_live_tab_says_when_there_is_no_camera(stack, browser):
    page = browser.new_page()
    page.goto(stack.api_url + "/")
    page.click("#tab-live")
    page.click("#live-start")
    page.wait_for_selector("#live-status.bad", timeout=30_000)
    assert "camera" in page.inner_text("#live-status").lower()
    page.close()
