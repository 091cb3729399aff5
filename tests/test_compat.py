"""What people already call, through the real stack: remove.bg's route (curl-style requests and the real
``remove.bg`` npm client), rembg's route, answers that wait (Prefer: wait), and signed webhooks delivered
to a real receiver that verifies them with the standardwebhooks package."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from standardwebhooks.webhooks import Webhook

from tests.conftest import WEBHOOK_SECRET, encode_rgb
from tests.waiting import wait_for
from worker.faults import marker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def removebg(stack, files=None, data=None, json_body=None, headers=None) -> requests.Response:
    return requests.post(
        f"{stack.api_url}/v1.0/removebg", files=files, data=data, json=json_body, headers=headers, timeout=60
    )


def errors_of(response: requests.Response) -> list[dict]:
    body = response.json()
    assert set(body) == {"errors"} and body["errors"] and "title" in body["errors"][0], body
    return body["errors"]


def picture(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_removebg_file_upload_answers_the_image_with_removebg_headers(stack, astronaut_jpeg):
    response = removebg(stack, files={"image_file": ("me.jpg", astronaut_jpeg)}, data={"size": "preview"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    image = picture(response.content)
    assert image.mode == "RGBA" and image.size[0] * image.size[1] <= 250_000
    headers = response.headers
    assert headers["X-Type"] == "person" and headers["X-Credits-Charged"] == "0"
    assert (int(headers["X-Width"]), int(headers["X-Height"])) == image.size
    alpha = np.asarray(image)[..., 3]
    ys, xs = np.nonzero(alpha)
    assert (int(headers["X-Foreground-Top"]), int(headers["X-Foreground-Left"])) == (ys.min(), xs.min())
    assert int(headers["X-Foreground-Width"]) == xs.max() + 1 - xs.min()
    assert int(headers["X-Foreground-Height"]) == ys.max() + 1 - ys.min()


def test_removebg_json_base64_crop_zip_and_colours(stack, astronaut_jpeg):
    encoded = base64.b64encode(astronaut_jpeg).decode()
    # JSON in, JSON out: a cropped ZIP (colours and matte), the foreground where remove.bg puts it.
    response = removebg(
        stack,
        json_body={"image_file_b64": encoded, "format": "zip", "crop": True, "size": "full"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    data = response.json()["data"]
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(data["result_b64"])))
    assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
    assert (data["foreground_top"], data["foreground_left"]) == (0, 0)
    assert picture(archive.read("alpha.png")).size == (data["foreground_width"], data["foreground_height"])
    # A form with base64, a background colour by name: auto format is JPEG (nothing transparent left).
    green = removebg(stack, data={"image_file_b64": encoded, "bg_color": "green", "size": "medium"})
    assert green.status_code == 200 and green.headers["Content-Type"] == "image/jpeg"
    assert picture(green.content).getpixel((5, 200))[1] > 100  # the background, green
    # The matte alone, and a translucent colour (PNG, half see-through around the person).
    alpha = removebg(stack, files={"image_file": ("me.jpg", astronaut_jpeg)}, data={"channels": "alpha"})
    assert alpha.status_code == 200 and picture(alpha.content).mode == "L"
    half = removebg(stack, files={"image_file": ("me.jpg", astronaut_jpeg)}, data={"bg_color": "0000ff80"})
    assert picture(half.content).getpixel((5, 200))[3] == pytest.approx(128, abs=2)


def test_removebg_with_a_background_image_scaled_and_placed(stack, astronaut_jpeg, coffee):
    response = removebg(
        stack,
        files={"image_file": ("me.jpg", astronaut_jpeg), "bg_image_file": ("bg.jpg", encode_rgb(coffee))},
        data={"scale": "50%", "position": "0% 100%", "size": "full"},
    )
    assert response.status_code == 200
    top, left = int(response.headers["X-Foreground-Top"]), int(response.headers["X-Foreground-Left"])
    assert left == 0 and top + int(response.headers["X-Foreground-Height"]) == 512
    assert int(response.headers["X-Foreground-Height"]) <= 257


@pytest.mark.parametrize(
    ("files", "data", "code"),
    [
        ({}, {"size": "preview"}, "missing_source"),
        ({"image_file": ("a.jpg", b"x")}, {"image_file_b64": "eA=="}, "multiple_sources"),
        ({}, {"image_file_b64": "@@not base64@@"}, "invalid_base64"),
        ({}, {"image_url": "http://169.254.169.254/latest/"}, "unsupported_source"),
        ("photo", {"size": "gigantic"}, "invalid_parameter"),
        ("photo", {"format": "gif"}, "invalid_parameter"),
        ("photo", {"type": "graphic"}, "unsupported_parameter"),
        ("photo", {"add_shadow": "true"}, "unsupported_parameter"),
        ("photo", {"bg_image_url": "http://example.com/bg.jpg"}, "unsupported_source"),
        ("photo", {"crop_margin": "80%", "crop": "true"}, "invalid_parameter"),
        ("photo", {"channels": "alpha", "bg_color": "fff"}, "invalid_parameter"),
        ("photo", {"format": "jpg", "bg_color": "00000080"}, "unsupported_output"),
        ("photo", {"colour": "red"}, "unknown_parameter"),
        ({"image_file": ("a.jpg", b"\xff\xd8\xff\xe0garbage")}, {}, "corrupt_image"),
    ],
)
def test_removebg_refuses_bad_requests_as_removebg_does(stack, astronaut_jpeg, files, data, code):
    if files == "photo":
        files = {"image_file": ("me.jpg", astronaut_jpeg)}
    response = removebg(stack, files=files or None, data=data)
    assert response.status_code == 400, response.text
    assert errors_of(response)[0]["code"] == code


def test_removebg_without_a_subject_is_unknown_foreground(stack, coffee):
    response = removebg(stack, files={"image_file": ("cup.jpg", encode_rgb(coffee))}, data={"type": "person"})
    assert response.status_code == 400 and errors_of(response)[0]["code"] == "unknown_foreground"


@pytest.fixture(scope="module")
def npm_client(tmp_path_factory) -> Path:
    """The real ``remove.bg`` npm package (and its dependencies) from the npm registry, its request code
    unchanged: only its endpoint constant is pointed at the test server later."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("BACKDROP_REQUIRE_NPM") == "1":
            pytest.fail("node and npm are required for the remove.bg client test")
        pytest.skip("node and npm are not installed")
    folder = tmp_path_factory.mktemp("npm")
    (folder / "package.json").write_text('{"name": "backdrop-compat-test", "private": true}')
    result = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "remove.bg@1.3.0"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        if os.environ.get("BACKDROP_REQUIRE_NPM") == "1":
            pytest.fail(f"npm install remove.bg failed: {result.stderr[-2000:]}")
        pytest.skip(f"npm install remove.bg failed: {result.stderr[-300:]}")
    return folder


NODE_SCRIPT = """
const rb = require('remove.bg');
const fs = require('fs');
const args = JSON.parse(process.argv[2]);
const results = {};
(async () => {
  const record = async (name, call) => {
    try { const r = await call(); results[name] = {ok: true, width: r.resultWidth, height: r.resultHeight,
      type: r.detectedType, credits: r.creditsCharged, bytes: r.base64img.length}; }
    catch (e) { results[name] = {ok: false, errors: e}; }
  };
  await record('file', () => rb.removeBackgroundFromImageFile({path: args.photo, apiKey: 'any', size: 'regular',
    type: 'person', crop: true, outputFile: args.out}));
  await record('base64', () => rb.removeBackgroundFromImageBase64({base64img: fs.readFileSync(args.b64, 'utf8'),
    apiKey: 'any', size: 'medium', bg_color: '81d4fa'}));
  await record('url', () => rb.removeBackgroundFromImageUrl({url: 'http://example.com/x.jpg', apiKey: 'any'}));
  await record('bad', () => rb.removeBackgroundFromImageBase64({base64img: '%%%', apiKey: 'any'}));
  console.log(JSON.stringify(results));
})();
"""


def test_the_removebg_npm_client_works_unchanged_but_for_its_endpoint(stack, npm_client, tmp_path, astronaut_jpeg):
    package = npm_client / "node_modules" / "remove.bg" / "dist" / "index.js"
    source = package.read_text()
    original = 'const API_ENDPOINT = "https://api.remove.bg/v1.0/removebg";'
    assert original in source or "const API_ENDPOINT = " in source
    lines = [
        f'const API_ENDPOINT = "{stack.api_url}/v1.0/removebg";' if line.startswith("const API_ENDPOINT = ") else line
        for line in source.splitlines()
    ]
    package.write_text("\n".join(lines) + "\n")
    photo, encoded, out = tmp_path / "me.jpg", tmp_path / "me.b64", tmp_path / "out.png"
    photo.write_bytes(astronaut_jpeg)
    encoded.write_text(base64.b64encode(astronaut_jpeg).decode())
    script = tmp_path / "client.js"
    script.write_text(NODE_SCRIPT)
    arguments = json.dumps({"photo": str(photo), "b64": str(encoded), "out": str(out)})
    result = subprocess.run(
        ["node", str(script), arguments],
        cwd=npm_client,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "NODE_PATH": str(npm_client / "node_modules")},
    )
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["file"]["ok"] and results["file"]["type"] == "person" and results["file"]["credits"] == "0"
    written = picture(out.read_bytes())
    assert written.mode == "RGBA" and written.size == (int(results["file"]["width"]), int(results["file"]["height"]))
    assert results["base64"]["ok"] and results["base64"]["width"] == "512"
    assert not results["url"]["ok"] and results["url"]["errors"][0]["code"] == "unsupported_source"
    assert not results["bad"]["ok"] and results["bad"]["errors"][0]["code"] == "invalid_base64"


def test_rembg_route(stack, astronaut_jpeg):
    url = f"{stack.api_url}/api/remove"
    cut = requests.post(url, files={"file": ("me.jpg", astronaut_jpeg)}, timeout=60)
    assert cut.status_code == 200 and cut.headers["Content-Type"] == "image/png"
    assert picture(cut.content).mode == "RGBA"
    mask = requests.post(url, files={"file": ("me.jpg", astronaut_jpeg)}, data={"om": "true"}, timeout=60)
    assert picture(mask.content).mode == "L"
    coloured = requests.post(url + "?bgc=255,0,0,255", files={"file": ("me.jpg", astronaut_jpeg)}, timeout=60)
    assert picture(coloured.content).convert("RGBA").getpixel((5, 200)) == (255, 0, 0, 255)
    for files, query, data in (
        ({}, "", {}),
        ({"file": ("me.jpg", astronaut_jpeg)}, "?bgc=1,2,3", {}),
        ({"file": ("me.jpg", astronaut_jpeg)}, "", {"model": "no-such-model"}),
        ({"file": ("me.jpg", astronaut_jpeg)}, "", {"om": "perhaps"}),
        ({"file": ("x.jpg", b"not an image")}, "", {}),
    ):
        refused = requests.post(url + query, files=files or None, data=data, timeout=60)
        assert refused.status_code == 422 and "detail" in refused.json(), refused.text


def submit_preferring(stack, photo: bytes, prefer: str) -> requests.Response:
    return requests.post(
        f"{stack.api_url}/v1/jobs", files={"image": ("me.jpg", photo)}, headers={"Prefer": prefer}, timeout=90
    )


def test_prefer_wait_answers_with_the_finished_job(stack, astronaut_jpeg):
    started = time.perf_counter()
    response = submit_preferring(stack, astronaut_jpeg, "wait=30")
    assert response.status_code == 201 and response.headers["Preference-Applied"] == "wait=30"
    job = response.json()
    assert job["status"] == "succeeded" and job["result"]["url"] and response.headers["Location"].endswith(job["id"])
    assert time.perf_counter() - started < 30
    # Over the maximum: clamped, and said so; other preferences beside it are fine.
    clamped = submit_preferring(stack, astronaut_jpeg, "respond-async, wait=999")
    assert clamped.status_code == 201 and clamped.headers["Preference-Applied"] == "wait=60"


def test_prefer_wait_gives_up_on_time_and_answers_as_without_it(stack, astronaut_jpeg):
    started = time.perf_counter()
    response = submit_preferring(stack, astronaut_jpeg + marker("slow", 4), "wait=1")
    assert response.status_code == 202 and "Preference-Applied" not in response.headers
    assert 0.9 < time.perf_counter() - started < 3.5
    assert response.json()["status"] in ("queued", "running")


class Receiver:
    """A webhook receiver: verifies every delivery with the standardwebhooks package, answers 503 to its
    first ``failures`` ones, then 204; records what it saw."""

    def __init__(self, failures: int, status_after: int = 204) -> None:
        self.failures, self.status_after = failures, status_after
        self.seen: list[tuple[float, str, dict | None, int]] = []
        verifier = Webhook(WEBHOOK_SECRET)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = verifier.verify(body, {k.lower(): v for k, v in self.headers.items()})
                except Exception:
                    payload = None
                status = 503 if receiver.failures > 0 else receiver.status_after
                receiver.failures -= 1
                receiver.seen.append((time.time(), self.headers["webhook-id"], payload, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/backdrop"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_signed_webhooks_are_retried_and_delivered_once(stack, astronaut_jpeg):
    receiver = Receiver(failures=2)
    try:
        job = requests.post(
            f"{stack.api_url}/v1/jobs",
            files={"image": ("me.jpg", astronaut_jpeg)},
            data={"callback_url": receiver.url},
            timeout=30,
        ).json()
        wait_for(lambda: any(status == 204 for *_, status in receiver.seen), 20, "a delivery answered 204")
        time.sleep(3)  # long enough for a stray second delivery to show
        assert [status for *_, status in receiver.seen] == [503, 503, 204]
        assert all(payload is not None for _, _, payload, _ in receiver.seen)  # every attempt verified
        assert {message for _, message, _, _ in receiver.seen} == {f"msg_{job['id']}"}
        delivered = receiver.seen[-1][2]
        assert delivered["id"] == job["id"] and delivered["status"] == "succeeded" and delivered["result"]["url"]
        gaps = [b[0] - a[0] for a, b in zip(receiver.seen, receiver.seen[1:], strict=False)]
        assert 0.7 < gaps[0] < 1.6 and 1.4 < gaps[1] < 3.0  # 1 s, then 2 s, each within its jitter
        record = requests.get(f"{stack.api_url}/v1/jobs/{job['id']}", timeout=10).json()
        assert record["callback_url"] == receiver.url
        webhook = record["webhook"]
        assert webhook["state"] == "delivered" and webhook["attempts"] == 3 and webhook["last_status"] == 204
        assert webhook["delivered_at"] >= receiver.seen[-1][0] - 1
    finally:
        receiver.close()


def damaged_png() -> bytes:
    """A PNG whose header and end pass the API's checks, with its pixel data damaged: it fails in the worker."""
    data = bytearray(encode_rgb((np.random.default_rng(3).random((300, 300, 3)) * 255).astype(np.uint8), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    return bytes(data)


def test_a_failed_job_is_delivered_too_and_a_client_error_stops_retries(stack):
    receiver = Receiver(failures=0, status_after=410)
    try:
        job = requests.post(
            f"{stack.api_url}/v1/jobs",
            files={"image": ("x.png", damaged_png())},
            data={"callback_url": receiver.url},
            timeout=30,
        ).json()
        wait_for(lambda: bool(receiver.seen), 20, "a delivery")
        time.sleep(2)  # a 410 is not retried: nothing more comes
        assert len(receiver.seen) == 1
        payload = receiver.seen[0][2]
        assert payload["id"] == job["id"] and payload["status"] == "failed"
        assert payload["error"]["code"] == "corrupt_image"
        state = requests.get(f"{stack.api_url}/v1/jobs/{job['id']}", timeout=10).json()["webhook"]
        assert state["state"] == "failed" and state["last_status"] == 410 and state["attempts"] == 1
        # Refused at the API: no job, no webhook.
        refused = requests.post(
            f"{stack.api_url}/v1/jobs",
            files={"image": ("x.jpg", b"\xff\xd8\xff\xe0" + b"broken" * 20)},
            data={"callback_url": receiver.url},
            timeout=30,
        )
        assert refused.status_code == 415
        time.sleep(1)
        assert len(receiver.seen) == 1
    finally:
        receiver.close()


def test_bad_callback_urls_are_refused_before_anything_is_stored(stack, astronaut_jpeg):
    # The stack allows receivers on loopback (BACKDROP_WEBHOOK_ALLOWED_NETWORKS) and nothing else private:
    # the cloud metadata service and a private network stay refused.
    refused = ("http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook", "http://[fe80::1]/hook")
    for url in ("ftp://example.com/x", "http://", "http://user:pw@127.0.0.1/x", "not a url", *refused):
        response = requests.post(
            f"{stack.api_url}/v1/jobs",
            files={"image": ("me.jpg", astronaut_jpeg)},
            data={"callback_url": url},
            timeout=30,
        )
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_callback_url", url
