"""What can be checked here of the deployment files (no Docker engine or cluster on this machine)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from backdrop.settings import ENV_VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KNOWN_VARIABLES = {variable for variable, _ in ENV_VARIABLES.values()}


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


def test_compose_files_match_the_compose_spec():
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                 "docker-compose.yml", "deploy/docker-compose.gpu.yml")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate():
    manifests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy" / "k8s").glob("*.yaml"))
    result = run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 5


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_keda_scales_the_worker_on_the_celery_queue():
    (scaled,) = load_all(ROOT / "deploy/k8s/keda-scaledobject.yaml")
    worker, beat = load_all(ROOT / "deploy/k8s/worker.yaml")
    assert beat["spec"]["replicas"] == 1
    (config,) = load_all(ROOT / "deploy/k8s/configmap.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == config["data"]["BACKDROP_QUEUE"] == Settings().queue
    redis_host = re.match(r"redis://([^/]+)/", config["data"]["BACKDROP_REDIS_URL"]).group(1)
    assert trigger["metadata"]["address"] == redis_host
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--queues") + 1] == "backdrop"


def test_every_configured_variable_is_a_real_setting():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = yaml.safe_load((ROOT / "deploy/docker-compose.gpu.yml").read_text())
    names = set(compose["x-backdrop-env"]) | set(compose["services"]["worker"]["environment"])
    assert compose["services"]["beat"]["command"][3] == "beat"
    names |= set(gpu["services"]["worker-gpu"]["environment"]) | set(gpu["services"]["api"]["environment"])
    (config,) = load_all(ROOT / "deploy/k8s/configmap.yaml")
    names |= set(config["data"])
    names.discard("<<")
    assert names <= KNOWN_VARIABLES, names - KNOWN_VARIABLES
    assert "BACKDROP_S3_SECRET_KEY" not in config["data"]  # secrets come from a Secret


def test_api_image_has_no_ml_stack_and_dockerfiles_copy_what_exists():
    api_requirements = (ROOT / "deploy/requirements-api.txt").read_text().lower()
    for heavy in ("opencv", "litert", "numpy", "tensorflow"):
        assert heavy not in api_requirements
    for dockerfile in ("deploy/api.Dockerfile", "deploy/worker.Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert "USER backdrop" in text
        for line in text.splitlines():
            if line.startswith("COPY"):
                for source in line.split()[1:-1]:
                    assert list(ROOT.glob(source)), f"{dockerfile}: {source} does not exist"
