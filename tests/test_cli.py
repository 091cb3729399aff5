"""The `backdrop` command as a shell user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from backdrop.settings import Settings
from tests.conftest import encode_rgb


def backdrop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backdrop.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_folder_in_folder_out_with_reports(tmp_path, astronaut, chelsea):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.jpg").write_bytes(encode_rgb(astronaut))
    (photos / "chelsea.png").write_bytes(encode_rgb(chelsea, "PNG"))
    (photos / "notes.txt").write_text("not a photo, skipped by suffix")
    result = backdrop("process", str(photos), "-o", str(tmp_path / "out"), "--effect", "gray", "--json")
    assert result.returncode == 0, result.stderr
    reports = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert reports["astronaut.jpg"]["found"] and not reports["chelsea.png"]["found"]
    assert Image.open(tmp_path / "out" / "astronaut.jpg").size == (512, 512)
    assert Image.open(tmp_path / "out" / "chelsea.png").size == chelsea.shape[1::-1]


def test_single_file_default_output_and_format_from_suffix(tmp_path, astronaut):
    photo = tmp_path / "me.jpg"
    photo.write_bytes(encode_rgb(astronaut))
    assert backdrop("process", str(photo), "--strength", "low").returncode == 0
    assert Image.open(tmp_path / "me_backdrop.jpg").format == "JPEG"
    result = backdrop("process", str(photo), "-o", str(tmp_path / "cut.webp"), "--effect", "cutout")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "cut.webp").mode == "RGBA"
    assert "person" in result.stdout


def test_bad_inputs_named_and_exit_1(tmp_path, astronaut):
    (tmp_path / "good.jpg").write_bytes(encode_rgb(astronaut))
    (tmp_path / "bad.jpg").write_bytes(b"<html>renamed</html>")
    result = backdrop("process", str(tmp_path / "good.jpg"), str(tmp_path / "bad.jpg"), "-o", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "bad.jpg: unsupported_format" in result.stderr
    assert (tmp_path / "o" / "good.jpg").exists()


def test_usage_errors_exit_2(tmp_path):
    photo = tmp_path / "x.png"
    photo.write_bytes(encode_rgb(np.zeros((4, 4, 3), np.uint8), "PNG"))
    cases = [
        (["process", str(photo), "--targets", "unicorn"], "unknown_target"),
        (["process", str(photo), "--targets", "cat", "--model", "selfie"], "can segment: person"),
        (["process", str(photo), "--strength", "500"], "strength"),
        (["process", str(photo), "--effect", "replace"], "--background"),
        (["process", str(tmp_path / "missing.jpg")], "no such file"),
    ]
    for args, message in cases:
        result = backdrop(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_models_list_and_fetch(tmp_path):
    listing = backdrop("models", "list", "--json")
    assert listing.returncode == 0
    report = json.loads(listing.stdout)
    assert report["cache"] == str(Settings.from_env().model_dir)
    models = {m["name"]: m for m in report["models"]}
    assert "cat" in models["deeplab"]["classes"] and models["selfie"]["classes"] == ["person"]
    assert backdrop("models", "fetch", "deeplab").returncode == 0


def test_model_unavailable_exit_3_names_every_source(tmp_path):
    env = {
        "BACKDROP_MODEL_DIR": str(tmp_path / "empty"),
        "BACKDROP_MODEL_MIRRORS": str(tmp_path / "nothing-here"),
        "BACKDROP_MODEL_PIP_ARGS": "--no-index",
        "HTTPS_PROXY": "http://127.0.0.1:9",  # make the official URL fail the same way everywhere
        "https_proxy": "http://127.0.0.1:9",
    }
    result = backdrop("models", "fetch", "selfie", env=env)
    assert result.returncode == 3
    assert "mirror" in result.stderr and "storage.googleapis.com" in result.stderr
    assert "pip wheel mediapipe==0.10.21" in result.stderr
