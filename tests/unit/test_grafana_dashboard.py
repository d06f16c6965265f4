"""deploy/grafana/taskwire.json: valid JSON, and every query names a metric taskwire exports
(the API's and the worker's registries, and the queue series of core/metrics.py)."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import REGISTRY

import service.metrics
import service.openai_common
import worker.metrics
from core.metrics import QUEUE_METRICS
from core.settings import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "taskwire.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exported() -> set[str]:
    assert service.metrics.REQUESTS is not None and worker.metrics.RESULTS is not None
    assert service.openai_common.OPENAI_REQUESTS is not None  # the OpenAI door's, registered
    names = set(QUEUE_METRICS)
    for family in REGISTRY.collect():
        if family.name.startswith("taskwire_"):
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_parses_and_queries_only_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "taskwire" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = exported()
    used = set()
    for expr in expressions(dashboard):
        found = re.findall(r"\btaskwire_[a-z_]+", expr)
        assert found, expr
        for name in found:
            assert name in names, f"{name} (in {expr}) is not a metric taskwire exports"
            used.add(name)
    # what the dashboard promises to show
    for wanted in (
        "taskwire_api_requests_total",
        "taskwire_api_rejected_total",
        "taskwire_api_sync_wait_seconds_bucket",
        "taskwire_queue_waiting",
        "taskwire_worker_results_total",
        "taskwire_upstream_request_seconds_bucket",
        "taskwire_upstream_ttft_seconds_bucket",
        "taskwire_webhook_attempts_total",
        "taskwire_worker_jobs_running",
        "taskwire_route_cooldowns_total",
    ):
        assert wanted in used, wanted


def test_the_keda_query_names_an_exported_metric() -> None:
    scaled = (PROJECT_ROOT / "deploy" / "k8s" / "base" / "worker-scaledobject.yaml").read_text()
    queries = re.findall(r"query: (.*)", scaled)
    assert queries
    for query in queries:
        for name in re.findall(r"\btaskwire_[a-z_]+", query):
            assert name in exported()
