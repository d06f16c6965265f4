"""deploy/ checked as far as a machine without a container daemon or a cluster allows: the
Kubernetes manifests rendered (kubectl kustomize when installed, and always the Python
resolver in tests/deployfiles.py, which must agree with it) and validated offline against
the Kubernetes schemas (kubernetes-validate bundles them), the KEDA ScaledObject against the
schema in tests/unit/schemas, the compose file and the Dockerfile read for what they run.
The image's entry points themselves run in tests/e2e/test_probes.py."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from core.settings import PROJECT_ROOT, Settings
from tests.deployfiles import (
    DEPLOY,
    by_kind_and_name,
    containers,
    dockerfile_env,
    dockerfile_stages,
    kustomize,
)

K8S = DEPLOY / "k8s"
OVERLAYS = [K8S / "base", K8S / "overlays" / "production"]
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests promise to work on
SCALED_OBJECT_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject.json"
SETTINGS = {f"TASKWIRE_{name.upper()}" for name in Settings.model_fields}
# variables the shipped catalog reads (route base URLs and keys)
CATALOG_VARS = set(
    re.findall(r'\$\{(\w+)|api_key_env = "(\w+)"', (DEPLOY / "models.toml").read_text())
)
CATALOG_VARS = {name for pair in CATALOG_VARS for name in pair if name}


def is_setting(name: str) -> bool:
    """A TASKWIRE_ variable a process reads (a typo would be ignored silently)."""
    return not name.startswith("TASKWIRE_") or name in SETTINGS | CATALOG_VARS


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt fails the test: validation must work offline."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- Kubernetes


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda path: path.name)
def test_the_python_resolver_agrees_with_kubectl_kustomize(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python resolver alone is used")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    theirs = by_kind_and_name([doc for doc in yaml.safe_load_all(rendered) if doc])
    assert by_kind_and_name(kustomize(directory)) == theirs


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda path: path.name)
def test_every_manifest_is_valid_offline(directory: Path) -> None:
    resources = kustomize(directory)
    schema = json.loads(SCALED_OBJECT_SCHEMA.read_text())
    kinds = set()
    for resource in resources:
        kinds.add(resource["kind"])
        if resource["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(resource, schema)  # a CRD: our schema of its fields
        else:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    assert {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
    } <= kinds


def test_an_invalid_manifest_is_caught(no_network: None) -> None:
    """The validators do refuse things (a typo'd field, a ScaledObject without a query)."""
    resources = by_kind_and_name(kustomize(K8S / "base"))
    api = resources["Deployment", "taskwire-api"]
    api["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)
    scaled = resources["ScaledObject", "taskwire-worker"]
    del scaled["spec"]["triggers"][0]["metadata"]["query"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, json.loads(SCALED_OBJECT_SCHEMA.read_text()))


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda path: path.name)
def test_the_workloads_are_wired_to_the_probes_settings_and_each_other(directory: Path) -> None:
    resources = by_kind_and_name(kustomize(directory))
    config = resources["ConfigMap", "taskwire-config"]["data"]
    assert all(is_setting(name) for name in config), "a ConfigMap key is not a setting"
    api = resources["Deployment", "taskwire-api"]
    worker = resources["Deployment", "taskwire-worker"]

    def probes(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        (container,) = containers(deployment)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        found = {}
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = container[kind]["httpGet"]
            found[kind] = (get["path"], ports[get["port"]])
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"taskwire-config", "taskwire-secrets"}
        return found, container

    api_probes, api_container = probes(api)
    assert api_probes == {
        "livenessProbe": ("/livez", 8000),
        "readinessProbe": ("/readyz", 8000),
        "startupProbe": ("/livez", 8000),
    }
    assert api_container["args"] == ["api"]
    for deployment, port_name in ((api, "http"), (worker, "probes")):
        (container,) = containers(deployment)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        scrape = deployment["spec"]["template"]["metadata"]["annotations"]
        assert scrape["prometheus.io/scrape"] == "true"
        assert int(scrape["prometheus.io/port"]) == ports[port_name]
        assert scrape["prometheus.io/path"] == "/metrics"
    worker_probes, worker_container = probes(worker)
    port = int(config["TASKWIRE_WORKER_HTTP_PORT"])
    assert worker_probes == {
        "livenessProbe": ("/livez", port),
        "readinessProbe": ("/readyz", port),
        "startupProbe": ("/livez", port),
    }
    assert config["TASKWIRE_WORKER_HTTP_HOST"] == "0.0.0.0"  # the kubelet probes the pod IP
    assert worker_container["args"] == ["worker"]

    # SIGKILL must never come before the drain ends (plus a margin for closing)
    drain = int(config["TASKWIRE_WORKER_SHUTDOWN_GRACE_S"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= drain + 10
    api_stop = float(config["TASKWIRE_API_SHUTDOWN_DELAY_S"]) + float(
        config["TASKWIRE_API_SHUTDOWN_GRACE_S"]
    )
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= api_stop + 5
    assert float(config["TASKWIRE_API_SHUTDOWN_GRACE_S"]) >= Settings().sync_timeout_s

    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        resource = resources[kind, "taskwire-api"]
        selector = resource["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= pod_labels.items(), kind
    assert api["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = resources["HorizontalPodAutoscaler", "taskwire-api"]["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", "taskwire-api")
    scaled = resources["ScaledObject", "taskwire-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "taskwire-worker"
    queries = [trigger["metadata"]["query"] for trigger in scaled["triggers"]]
    assert all("taskwire_queue_waiting" in query for query in queries)
    assert scaled["minReplicaCount"] >= 1  # never zero: a sync task must find a worker


def test_the_production_overlay_names_its_image_and_namespace() -> None:
    resources = kustomize(K8S / "overlays" / "production")
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "taskwire", resource["kind"]
        for container in containers(resource):
            assert container["image"] == "registry.example.com/taskwire:0.1.0"


# --- compose


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_runs_redis_two_apis_two_workers_and_a_demo_simulator() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"redis", "api-1", "api-2", "worker", "sim"}
    assert {name for name, s in services.items() if "profiles" in s} == {"sim"}
    assert services["sim"]["profiles"] == ["demo"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert [services[name]["command"] for name in ("api-1", "api-2", "worker", "sim")] == [
        ["api"],
        ["api"],
        ["worker"],
        ["sim"],
    ]
    published = [services[name]["ports"][0].split(":") for name in ("api-1", "api-2")]
    assert published == [["8000", "8000"], ["8001", "8000"]]
    redis = services["redis"]
    assert redis["command"][0] == "redis-server"
    config_mount, data_mount = redis["volumes"]
    source, target, _mode = config_mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "redis.conf"
    assert redis["command"][1] == target
    assert data_mount.split(":")[0] in spec["volumes"]
    for name in ("api-1", "api-2", "worker", "sim"):
        service = services[name]
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert all(is_setting(key) for key in service["environment"]), name
    assert services["worker"]["environment"]["TASKWIRE_REDIS_URL"] == "redis://redis:6379/0"
    # healthchecks probe the endpoints the processes serve
    assert "8000/readyz" in " ".join(services["api-1"]["healthcheck"]["test"])
    port = dockerfile_env()["TASKWIRE_WORKER_HTTP_PORT"]
    assert f"{port}/readyz" in " ".join(services["worker"]["healthcheck"]["test"])
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > int(
        Settings().worker_shutdown_grace_s
    )


# --- the Dockerfile and its entrypoint


def test_the_dockerfile_builds_in_two_stages_and_runs_unprivileged() -> None:
    build, runtime = dockerfile_stages()
    assert build[0][1].startswith("python:") and build[0][1].endswith(" AS build")
    assert "-slim" in runtime[0][1]
    instructions = dict(runtime)
    user = instructions["USER"].split(":")[0]
    assert user.isdigit() and int(user) > 0
    assert json.loads(instructions["ENTRYPOINT"]) == ["taskwire-entrypoint"]
    assert json.loads(instructions["CMD"]) == ["api"]
    runs = " ".join(args for instruction, args in build + runtime if instruction == "RUN")
    assert "pip install ." in runs and "[dev]" not in runs
    # every COPY from the build context names something that exists and is not ignored
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for instruction, args in build + runtime:
        if instruction == "COPY" and "--from=" not in args:
            sources = [part for part in args.split()[:-1] if not part.startswith("--")]
            for source in sources:
                assert (PROJECT_ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}/" in ignore or f"!{source}" in ignore, source
    env = dockerfile_env()
    assert env["PORT"] == "8000" and env["HOST"] == "0.0.0.0"
    assert all(is_setting(name) for name in env)
    catalog = env["TASKWIRE_CATALOG_PATH"]
    assert ("COPY", f"deploy/models.toml {catalog}") in runtime


def test_the_entrypoint_runs_the_real_entry_points() -> None:
    script = DEPLOY / "docker-entrypoint.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    assert "api) exec python -m service" in text
    assert "worker) exec python -m worker" in text
    assert "sim) exec python -m sim" in text
    procfile = (PROJECT_ROOT / "Procfile").read_text().splitlines()
    assert procfile == ["web: python -m service", "worker: python -m worker"]
