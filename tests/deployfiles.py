"""Reading deploy/ the way the tools would: the Dockerfile's stages and ENV, and a kustomize
overlay resolved in Python (resources, namespace, images, strategic-merge patches), for
tests on a machine without a container daemon or kustomize."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import yaml

from core.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"


def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result = []
    for line in lines:
        instruction, _, arguments = line.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def dockerfile_stages(path: Path = DEPLOY / "Dockerfile") -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, arguments in dockerfile_instructions(path):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments))
    return stages


def dockerfile_env(path: Path = DEPLOY / "Dockerfile") -> dict[str, str]:
    """The final stage's ENV (KEY=VALUE form), with ${VAR} references left unexpanded."""
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_stages(path)[-1]:
        if instruction == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


# --- kustomize, the subset deploy/k8s uses


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for the fields deploy/k8s patches: maps merge,
    lists of named maps (containers, env) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        result = [
            merge(by_name[item["name"]], item) if item["name"] in by_name else item
            for item in patch
        ]
        patched = {item["name"] for item in patch}
        return [item for item in base if item["name"] not in patched] + result
    return copy.deepcopy(patch)


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Resolve a kustomization directory into its resources."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
    assert not unknown, f"the Python resolver does not implement {unknown}"
    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        resources += kustomize(target) if target.is_dir() else load_documents(target)
    for patch_entry in spec.get("patches", []):
        for patch in load_documents(directory / patch_entry["path"]):
            matches = [
                index
                for index, resource in enumerate(resources)
                if resource["kind"] == patch["kind"]
                and resource["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(matches) == 1, f"patch {patch_entry['path']} matches {len(matches)}"
            resources[matches[0]] = merge(resources[matches[0]], patch)
    for image in spec.get("images", []):
        for resource in resources:
            for container in containers(resource):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
    if "namespace" in spec:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    return resources


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    found: list[dict[str, Any]] = pod.get("containers", []) + pod.get("initContainers", [])
    return found


def by_kind_and_name(resources: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}
