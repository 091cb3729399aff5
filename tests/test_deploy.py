"""What can be checked here of the deployment files (there is no Docker engine or cluster on this
machine; docs/deploy.md says what was and was not run)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backdrop.settings import ENV_VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KNOWN_VARIABLES = {variable for variable, _ in ENV_VARIABLES.values()}
# The Secret the manifests read S3 keys from (created by the operator, never committed).
SECRET_KEYS = {"BACKDROP_S3_ACCESS_KEY", "BACKDROP_S3_SECRET_KEY"}
# Settings whose values must differ between a laptop (compose) and a cluster: where things are, and
# whether the service may create its bucket (compose's MinIO starts empty; real S3 buckets are made once).
PER_DEPLOYMENT = {
    "BACKDROP_REDIS_URL", "BACKDROP_S3_ENDPOINT_URL", "BACKDROP_S3_PUBLIC_URL", "BACKDROP_S3_CREATE_BUCKET",
    "BACKDROP_LIVE_URL",
}  # fmt: skip
# Compose service -> (Kubernetes workload, container).
WORKLOADS = {
    "api": ("backdrop-api", "api"),
    "worker": ("backdrop-worker", "worker"),
    "beat": ("backdrop-beat", "beat"),
    "redis": ("backdrop-redis", "redis"),
    "live": ("backdrop-live", "live"),
}


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[str, dict]:
    """Every object of the manifests by ``name/Kind`` (the kustomization, which has no name, as ``/Kustomization``)."""
    return {
        doc.get("metadata", {}).get("name", "") + "/" + doc["kind"]: doc
        for path in K8S.glob("*.yaml")
        for doc in load_all(path)
    }


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile_stages() -> dict[str, list[str]]:
    """Each build stage's instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM \S+ AS (\S+)", line):
            current = stages[match.group(1)] = [line]
        else:
            current.append(line)
    return stages


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = run(str(BIN / "hadolint"), "--failure-threshold", "info", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_match_the_compose_spec():
    files = ["docker-compose.yml", "deploy/docker-compose.gpu.yml", "deploy/docker-compose.sentinel.yml"]
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sentinel_option_replaces_redis_everywhere():
    """Compose's and Kubernetes' Sentinel options: every service that talks to Redis connects through the
    sentinels (the same three), with the password, and the single Redis is gone from Kubernetes."""
    sentinel = yaml.safe_load((ROOT / "deploy/docker-compose.sentinel.yml").read_text())["services"]
    for service in ("api", "worker", "beat", "live"):
        env = sentinel[service]["environment"]
        assert env["BACKDROP_REDIS_SENTINELS"] == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"
        assert set(env) <= KNOWN_VARIABLES
    assert {"sentinel-1", "sentinel-2", "sentinel-3", "redis-replica"} <= set(sentinel)
    assert "--replicaof" in sentinel["redis-replica"]["command"]
    overlay = ROOT / "deploy" / "k8s-sentinel"
    manifests = sorted(str(p.relative_to(ROOT)) for p in overlay.glob("redis-*.yaml"))
    result = run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    assert result.returncode == 0 and result.stdout.count("passed") == 4, result.stdout + result.stderr
    if shutil.which("kubectl"):  # kustomize, offline: the overlay as it would be applied
        built = run("kubectl", "kustomize", str(overlay))
        assert built.returncode == 0, built.stderr
        objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(built.stdout) if doc}
        assert ("StatefulSet", "backdrop-redis") not in objects and ("Service", "backdrop-redis") not in objects
        assert objects[("ConfigMap", "backdrop")]["data"]["BACKDROP_REDIS_SENTINEL_MASTER"] == "backdrop"
        for kind, name in objects:
            if kind == "Deployment":
                env_from = objects[(kind, name)]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
                assert env_from[-1] == {"secretRef": {"name": "backdrop-redis"}}, name


def test_kubernetes_manifests_validate():
    manifests = sorted(str(p.relative_to(ROOT)) for p in K8S.glob("*.yaml"))
    result = run(str(BIN / "kubernetes-validate"), "--strict", *manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every built-in kind is checked against the 1.37 schemas; KEDA's and kustomize's have no schema here.
    built_in = [o for o in k8s_objects().values() if o["kind"] not in ("ScaledObject", "Kustomization")]
    assert result.stdout.count("passed") == len(built_in) >= 7


def test_kustomization_lists_every_manifest():
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests


def test_every_copied_file_and_entry_point_exists():
    stages = dockerfile_stages()
    assert {"base", "api", "pipeline", "worker", "live"} <= set(stages)
    for name, instructions in stages.items():
        for instruction in instructions:
            if instruction.startswith("COPY"):
                for source in instruction.split()[1:-1]:
                    assert list(ROOT.glob(source)), f"stage {name}: {source} does not exist"
    entrypoint = next(i for i in stages["base"] if i.startswith("ENTRYPOINT"))
    script = next(i for i in stages["base"] if i.startswith("COPY deploy/entrypoint.sh"))
    assert json.loads(entrypoint.split(None, 1)[1]) == [script.split()[-1].rsplit("/", 1)[-1]]
    assert (ROOT / "deploy/entrypoint.sh").stat().st_mode & 0o111
    for target in ("api", "worker", "live"):
        assert "USER 10001" in stages[target]
        cmd = json.loads(next(i for i in stages[target] if i.startswith("CMD")).split(None, 1)[1])
        assert_command_runs_our_code(cmd)


def assert_command_runs_our_code(command: list[str]) -> None:
    """The module a gunicorn or celery command names exists and defines what it names."""
    if command[0] == "gunicorn":
        module, attribute = command[1].split(":")
    elif command[0] == "celery":
        module, attribute = command[command.index("-A") + 1], "app"
    elif command[:2] == ["python", "-m"]:
        module, attribute = command[2] + ".__main__", "main"
    elif command[0] == "valkey-server":
        return
    else:
        raise AssertionError(f"unknown command {command}")
    source = ROOT / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{command}: no {source}"
    defined = rf"^({attribute}\s*=|def {attribute}\()"
    assert re.search(defined, source.read_text(), re.MULTILINE), f"{source} defines no {attribute}"


def test_api_image_has_no_ml_stack():
    api_requirements = (ROOT / "deploy/requirements-api.txt").read_text().lower()
    for heavy in ("opencv", "litert", "numpy", "tensorflow"):
        assert heavy not in api_requirements
    assert not any('pip install -c requirements.lock ".[' in i for i in dockerfile_stages()["api"])


def env_of(service: str) -> dict[str, str]:
    spec = compose()["services"][service]
    env = dict(spec.get("environment") or {})
    env.pop("<<", None)  # merged by yaml already
    return {k: str(v) for k, v in env.items()}


def k8s_env(workload: str, container_name: str) -> dict[str, str]:
    """The container's environment: its ConfigMap, its Secret's keys (values unknown) and its own."""
    objects = k8s_objects()
    container = k8s_container(workload, container_name)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update({k: str(v) for k, v in objects[source["configMapRef"]["name"] + "/ConfigMap"]["data"].items()})
        if "secretRef" in source:
            assert source["secretRef"]["name"] == "backdrop-s3"
            env.update(dict.fromkeys(SECRET_KEYS, "(secret)"))
    env.update({item["name"]: str(item["value"]) for item in container.get("env", [])})
    return env


def k8s_container(workload: str, container_name: str) -> dict:
    objects = k8s_objects()
    kind = "StatefulSet" if workload == "backdrop-redis" else "Deployment"
    pod = objects[f"{workload}/{kind}"]["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == container_name)


@pytest.mark.parametrize("service", sorted(WORKLOADS))
def test_kubernetes_runs_what_compose_runs(service):
    spec = compose()["services"][service]
    workload, container_name = WORKLOADS[service]
    container = k8s_container(workload, container_name)
    # The same program with the same arguments (or both the image's default command).
    assert container.get("args") == spec.get("command"), service
    if "build" in spec:
        assert container["image"].split(":")[0] == spec["image"]
        assert spec["build"]["dockerfile"] == "deploy/Dockerfile" and spec["build"]["target"] in dockerfile_stages()
    else:
        assert container["image"] == spec["image"]
    # The same settings: the same variables, the same values but for where things are.
    ours, theirs = env_of(service), k8s_env(workload, container_name)
    assert set(ours) == set(theirs), service
    for name in set(ours) - PER_DEPLOYMENT - SECRET_KEYS:
        assert ours[name] == theirs[name], (service, name)
    for name in ours:
        assert name in KNOWN_VARIABLES, f"{service}: {name} is not a setting"
    if spec.get("command"):
        assert_command_runs_our_code(spec["command"])


def test_the_gpu_override_sets_only_real_settings():
    gpu = yaml.safe_load((ROOT / "deploy/docker-compose.gpu.yml").read_text())
    names = set(gpu["services"]["worker-gpu"]["environment"]) | set(gpu["services"]["api"]["environment"])
    assert names <= KNOWN_VARIABLES, names - KNOWN_VARIABLES
    assert_command_runs_our_code(gpu["services"]["worker-gpu"]["command"])
    (config,) = [o for o in k8s_objects().values() if o["kind"] == "ConfigMap"]
    assert not SECRET_KEYS & set(config["data"])  # secrets come from a Secret


def test_keda_scales_the_worker_on_the_celery_queue():
    objects = k8s_objects()
    scaled = objects["backdrop-worker/ScaledObject"]
    config = objects["backdrop/ConfigMap"]["data"]
    assert objects["backdrop-beat/Deployment"]["spec"]["replicas"] == 1
    assert scaled["spec"]["scaleTargetRef"]["name"] == "backdrop-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == config["BACKDROP_QUEUE"] == Settings().queue
    redis_host = re.match(r"redis://([^/]+)/", config["BACKDROP_REDIS_URL"]).group(1)
    assert trigger["metadata"]["address"] == redis_host
    service = objects["backdrop-redis/Service"]
    assert redis_host == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    args = k8s_container("backdrop-worker", "worker")["args"]
    assert args[args.index("--queues") + 1] == config["BACKDROP_QUEUE"]
