"""A newcomer's first hour: `make models` fills the one model cache, and the CLI run right after works
offline, from any folder, and prints only what its user asked for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backdrop.models.registry import catalog
from backdrop.settings import Settings
from tests.conftest import encode_rgb

ROOT = Path(__file__).resolve().parent.parent
BACKDROP = Path(sys.executable).parent / "backdrop"
# Every remote source fails at once: the official URLs through a dead proxy, the PyPI wheel with no index.
OFFLINE = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "PIP_NO_INDEX": "1",
}


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell: their own cache folder, no Backdrop variables (make's exports are not there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKDROP_")}
    env.update({"XDG_CACHE_HOME": str(home / ".cache"), **extra})
    return env


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make models` (the last step of `make install`) into an empty user cache. The mirror is the
    suite's own verified cache, so nothing is downloaded twice."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    home = tmp_path_factory.mktemp("home")
    mirror = str(Settings.from_env().model_dir)
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "models"],
        env=user_env(home, BACKDROP_MODEL_MIRRORS=mirror),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return home


def test_make_install_fills_the_cache_the_cli_reads(fresh_install):
    cache = fresh_install / ".cache" / "backdrop" / "models"
    expected = {entry.file.file_name for entry in catalog()}
    assert {p.name for p in cache.iterdir()} >= expected
    listing = subprocess.run(
        [str(BACKDROP), "models", "list"], env=user_env(fresh_install), capture_output=True, text=True, check=False
    )
    assert listing.returncode == 0
    assert f"model cache: {cache}" in listing.stdout
    assert "not cached" not in listing.stdout


def test_cli_right_after_install_works_offline_and_quietly(fresh_install, tmp_path, astronaut, chelsea):
    (tmp_path / "photo.jpg").write_bytes(encode_rgb(astronaut))
    (tmp_path / "cat.jpg").write_bytes(encode_rgb(chelsea))
    env = user_env(fresh_install, **OFFLINE)
    for args in (["photo.jpg"], ["cat.jpg", "--targets", "cat", "--effect", "cutout", "-o", "cat.png"]):
        result = subprocess.run(
            [str(BACKDROP), "process", *args], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # no runtime chatter (XNNPACK, TensorFlow) unless asked for
    assert (tmp_path / "photo_backdrop.jpg").stat().st_size > 0 and (tmp_path / "cat.png").stat().st_size > 0

    verbose = subprocess.run(
        [str(BACKDROP), "process", "photo.jpg", "--verbose", "-o", "v.jpg"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verbose.returncode == 0 and "XNNPACK" in verbose.stderr


def test_first_run_without_models_says_what_is_missing_and_the_fix(tmp_path, astronaut):
    (tmp_path / "photo.jpg").write_bytes(encode_rgb(astronaut))
    result = subprocess.run(
        [str(BACKDROP), "process", "photo.jpg"],
        cwd=tmp_path,
        env=user_env(tmp_path, **OFFLINE),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    cache = tmp_path / ".cache" / "backdrop" / "models"
    assert f"not in the model cache {cache}" in result.stderr
    assert "backdrop models fetch --all" in result.stderr and "BACKDROP_MODEL_MIRRORS=" in result.stderr
