"""The docs stay true: the settings table is the settings object, every route and error code is
documented, and the examples in the README and the docs run against a real local stack."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from api.errors import CODE_BY_HTTP_STATUS, STATUS_BY_CODE
from backdrop.settings import ENV_VARIABLES
from tests.conftest import encode_rgb
from tests.videos import write_video

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
DOCUMENTED_URL = "http://127.0.0.1:8080"
JOB_ID_PLACEHOLDER = "5f0c…"
# Codes raised where no request or job can see them: the abstract base, configuration errors that stop a
# process at start, and a storage miss the worker reports as input_missing.
NOT_ANSWERED_CODES = {"backdrop_error", "invalid_setting", "unknown_engine", "object_not_found"}


def read(name: str) -> str:
    return (ROOT / name).read_text()


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``header``, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_readme_fits_on_a_screen_and_links_every_docs_page():
    readme = read("README.md")
    assert len(readme.splitlines()) <= 200
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def test_settings_table_is_the_settings_object():
    documented = {name for row in table_rows(read("docs/settings.md"), "variable") for name in backticked(row[0])}
    variables = {variable for variable, _ in ENV_VARIABLES.values()}
    assert documented - variables == set(), "documented but not a setting"
    assert variables - documented == set(), "a setting missing from docs/settings.md"


def test_every_route_is_in_openapi_and_documented():
    from api import Services, create_app
    from api.openapi import openapi_document
    from backdrop.settings import Settings

    app = create_app(Settings(), services=Services(Settings(), None, None, None, None))  # type: ignore[arg-type]
    routes = {
        (method, re.sub(r"<(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    spec = openapi_document()["paths"]
    in_spec = {(method.upper(), path) for path, operations in spec.items() for method in operations}
    assert routes == in_spec
    api_doc = read("docs/api.md")
    for method, path in sorted(in_spec):
        assert f"`{method} {path}`" in api_doc, f"{method} {path} is not documented in docs/api.md"


def test_every_api_error_code_is_listed_with_its_status():
    rows = table_rows(read("docs/api.md"), "status")
    documented = {code: status for status, _, codes in rows for code in backticked(codes)}
    answered = set(STATUS_BY_CODE) | set(CODE_BY_HTTP_STATUS.values())
    assert set(documented) == answered
    for code, status in documented.items():
        if status != "other":
            assert STATUS_BY_CODE[code] == int(status), code
    for status, code in CODE_BY_HTTP_STATUS.items():
        assert STATUS_BY_CODE[code] == status


def test_every_error_code_in_the_code_is_documented():
    """Each code raised anywhere is an API answer or a documented job failure code."""
    pattern = re.compile(
        r'code\s*=\s*"([a-z_]+)"|"code":\s*"([a-z_]+)"|\bfail\(\s*record,\s*"([a-z_]+)"|_fail\(\s*record,\s*"([a-z_]+)"'
    )
    raised = set()
    for folder in ("backdrop", "api", "worker"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                raised.add(next(group for group in match.groups() if group))
    api_doc = read("docs/api.md")
    failure_codes = {backticked(row[0])[0] for row in table_rows(api_doc, "job failure code")}
    undocumented = raised - set(STATUS_BY_CODE) - failure_codes - NOT_ANSWERED_CODES
    assert undocumented == set()
    assert {"timeout", "worker_lost", "input_missing", "internal_error"} <= raised & failure_codes


# --- the examples, run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut, chelsea, coffee) -> Path:
    """A folder with the files the examples name."""
    folder = tmp_path_factory.mktemp("examples")
    for name, pixels in (("photo.jpg", astronaut), ("me.jpg", astronaut), ("cat.jpg", chelsea), ("beach.jpg", coffee)):
        (folder / name).write_bytes(encode_rgb(pixels))
    write_video(folder / "clip.mp4", frames=30, width=320, height=240, audio_seconds=1.0)
    for sub in ("holiday", "shots"):
        (folder / sub).mkdir()
        (folder / sub / "a.jpg").write_bytes(encode_rgb(astronaut))
        (folder / sub / "b.png").write_bytes(encode_rgb(chelsea, "PNG"))
    return folder


def shell_commands(text: str, program: str) -> list[str]:
    """The lines of the ``sh`` blocks that run ``program``, without their trailing comments."""
    commands = []
    for block in code_blocks(text, "sh"):
        for line in block.splitlines():
            command = re.split(r"\s{2,}#", line)[0].strip()  # the docs set comments off by two spaces
            words = shlex.split(command) if command else []
            if words and Path(words[0]).name == program:
                commands.append(command)
    return commands


def wait_until_finished(api_url: str, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while requests.get(f"{api_url}/v1/jobs/{job_id}", timeout=10).json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish"
        time.sleep(0.1)


def run_curl_examples(text: str, stack, cwd: Path) -> int:
    """Run every curl line of ``text`` against the stack; each must answer what the docs promise."""
    job_id = None
    ran = 0
    for command in shell_commands(text, "curl"):
        method = "POST" if " -F " in command else "DELETE" if "-X DELETE" in command else "GET"
        if JOB_ID_PLACEHOLDER in command:
            assert job_id is not None, f"no job submitted before: {command}"
            wait_until_finished(stack.api_url, job_id)
            command = command.replace(JOB_ID_PLACEHOLDER, job_id)
        command = command.replace(DOCUMENTED_URL, stack.api_url)
        result = subprocess.run(
            command + " -w '\\n%{http_code}'", shell=True, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        body, _, status = result.stdout.rpartition("\n")
        expected = {"POST": {"202"}, "GET": {"200"}, "DELETE": {"200", "409"}}[method]
        if "/v1.0/removebg" in command or "/api/remove" in command:  # the compatible routes answer at once
            expected = {"200"}
        elif "Prefer: wait" in command:
            expected = {"201"}
        assert result.returncode == 0 and status in expected, (command, status, body[-500:], result.stderr)
        if method == "POST" and "/v1/jobs" in command and '"id"' in body:
            job_id = re.search(r'"id":\s*"([0-9a-f]{32})"', body).group(1)
        ran += 1
    return ran


def run_python_examples(text: str, stack, cwd: Path) -> int:
    blocks = code_blocks(text, "python")
    for block in blocks:
        script = block.replace(DOCUMENTED_URL, stack.api_url).replace("url=...", f'url="{stack.api_url}"')
        result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0 and "failed:" not in result.stdout, (script, result.stdout, result.stderr)
    return len(blocks)


def run_cli_examples(text: str, stack, cwd: Path) -> int:
    commands = shell_commands(text, "backdrop")
    for command in commands:
        command = re.sub(r"^(\.venv/bin/)?backdrop ", f"{BIN / 'backdrop'} ", command)
        command = command.replace(DOCUMENTED_URL, stack.api_url)
        env = {**os.environ, "BACKDROP_URL": stack.api_url}  # what `backdrop submit` without --url uses
        result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    return len(commands)


@pytest.mark.integration
def test_readme_examples_run(stack, photos):
    readme = read("README.md")
    assert run_curl_examples(readme, stack, photos) == 3
    assert run_python_examples(readme, stack, photos) == 1
    assert run_cli_examples(readme, stack, photos) == 2
    assert (photos / "photo_blur.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert (photos / "cut.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_api_page_examples_run(stack, photos):
    api_doc = read("docs/api.md")
    assert run_curl_examples(api_doc, stack, photos) >= 12
    assert run_python_examples(api_doc, stack, photos) == 1
    assert run_cli_examples(api_doc, stack, photos) == 2


@pytest.mark.integration
def test_cli_page_examples_run(stack, photos):
    assert run_cli_examples(read("docs/cli.md"), stack, photos) >= 6
