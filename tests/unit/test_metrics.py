"""Metric helpers (core/metrics.py, service/metrics.py, worker/metrics.py): bounded labels,
what each helper records, the queue snapshot's exposition, and the worker's /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from core.contract import ErrorItem
from core.errors import (
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    TaskwireError,
    UpstreamError,
)
from core.metrics import OTHER, BoundedLabel, QueueSnapshot
from service import metrics as api_metrics
from worker import metrics as worker_metrics
from worker.probes import ProbeServer, WorkerHealth
from worker.providers.base import TextDelta


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_bounded_label_keeps_known_values_and_caps_the_rest() -> None:
    label = BoundedLabel(limit=2)
    assert label("queueFull") == "queueFull"
    assert label("serverBusy") == "serverBusy"
    assert label("somethingNew") == OTHER  # over the limit
    assert label("queueFull") == "queueFull"  # seen values stay
    assert label(None) == ""
    assert BoundedLabel()("has spaces and {braces}") == OTHER
    assert BoundedLabel()("x" * 200) == OTHER
    allowed = BoundedLabel(allowed=frozenset({"sync", "async"}))
    assert allowed("sync") == "sync"
    assert allowed("nonsense") == OTHER


def test_queue_snapshot_exposition_has_every_class_once() -> None:
    text = QueueSnapshot({"i": 3, "b": 7}, scheduled=2, leased=5).exposition().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples == {
        ("taskwire_queue_waiting", (("class", "interactive"),)): 3,
        ("taskwire_queue_waiting", (("class", "batch"),)): 7,
        ("taskwire_queue_waiting", (("class", "webhook"),)): 0,
        ("taskwire_queue_scheduled", ()): 2,
        ("taskwire_queue_leased", ()): 5,
    }


@dataclass
class FakeSlot:
    raw: Any
    task: Any = None
    errors: list[TaskwireError] = field(default_factory=list)
    pending_sync: bool = False


@dataclass
class FakeTask:
    taskType: str
    deliveryMethod: str | None = None


def test_request_answered_counts_each_task_with_its_own_status() -> None:
    ok = ("textInference", "sync", "200")
    pending = ("textInference", "sync", "202")
    refused = ("textInference", "async", "503")
    invalid = ("other", "none", "400")
    before = {
        key: value(
            "taskwire_api_requests_total", task_type=key[0], delivery_method=key[1], status=key[2]
        )
        for key in (ok, pending, refused, invalid)
    }
    full_before = value("taskwire_api_rejected_total", reason="queueFull")
    api_metrics.request_answered(
        [
            FakeSlot({}, FakeTask("textInference", "sync")),
            FakeSlot({}, FakeTask("textInference", "sync"), pending_sync=True),
            FakeSlot(
                {},
                FakeTask("textInference", "async"),
                [ServiceUnavailable("full", code="queueFull")],
            ),
            FakeSlot({"taskType": "made-up"}, None, [InvalidRequest("bad")]),
        ],
        200,
    )
    for key in (ok, pending, refused, invalid):
        after = value(
            "taskwire_api_requests_total", task_type=key[0], delivery_method=key[1], status=key[2]
        )
        assert after == before[key] + 1, key
    assert value("taskwire_api_rejected_total", reason="queueFull") == full_before + 1


def test_a_request_refused_as_a_whole_counts_once_with_its_code() -> None:
    error = RateLimited("slow down", code="rateLimitExceeded")
    labels = {"task_type": "none", "delivery_method": "none", "status": str(error.status)}
    before = value("taskwire_api_requests_total", **labels)
    rejected = value("taskwire_api_rejected_total", reason="rateLimitExceeded")
    api_metrics.request_refused(error, owner="abcd")
    assert value("taskwire_api_requests_total", **labels) == before + 1
    assert value("taskwire_api_rejected_total", reason="rateLimitExceeded") == rejected + 1
    # per-key series only when opted in
    assert value("taskwire_api_key_requests_total", key="abcd", status="429") == 0


@dataclass
class Answer:
    pending: bool


async def test_the_sync_wait_is_observed_by_outcome() -> None:
    @api_metrics.timed_sync_wait
    async def wait(pending: bool) -> Answer:
        return Answer(pending)

    complete = value("taskwire_api_sync_wait_seconds_count", outcome="complete")
    pending = value("taskwire_api_sync_wait_seconds_count", outcome="pending")
    assert (await wait(False)).pending is False
    await wait(True)
    assert value("taskwire_api_sync_wait_seconds_count", outcome="complete") == complete + 1
    assert value("taskwire_api_sync_wait_seconds_count", outcome="pending") == pending + 1


def test_streams_open_goes_up_and_down() -> None:
    before = value("taskwire_api_streams_open")
    api_metrics.stream_opened()
    assert value("taskwire_api_streams_open") == before + 1
    api_metrics.stream_closed()
    assert value("taskwire_api_streams_open") == before


async def test_an_upstream_attempt_is_timed_with_its_first_token() -> None:
    async def answer() -> AsyncIterator[object]:
        yield "usage"  # not a token
        yield TextDelta("hi")
        yield TextDelta("there")

    labels = {"model": "m:unit@1", "route": "r1"}
    events = [e async for e in worker_metrics.timed_attempt(answer(), **labels)]
    assert len(events) == 3
    assert value("taskwire_upstream_ttft_seconds_count", **labels) == 1
    assert value("taskwire_upstream_request_seconds_count", outcome="ok", **labels) == 1

    async def failing() -> AsyncIterator[object]:
        yield TextDelta("partial")
        raise UpstreamError("boom", code="providerError")

    with pytest.raises(UpstreamError):
        async for _ in worker_metrics.timed_attempt(failing(), **labels):
            pass
    assert value("taskwire_upstream_request_seconds_count", outcome="providerError", **labels) == 1
    assert value("taskwire_upstream_ttft_seconds_count", **labels) == 2


def test_results_retries_fallbacks_and_cooldowns() -> None:
    item = ErrorItem("00000000-0000-4000-8000-000000000000", 0, "timeoutProvider", "slow")
    worker_metrics.result("m:unit@2", "r2", item, ["r1", "r2"])
    worker_metrics.result("m:unit@2", None, item, [])
    assert (
        value(
            "taskwire_worker_results_total",
            model="m:unit@2",
            route="r2",
            status="error",
            error_code="timeoutProvider",
        )
        == 1
    )
    assert (
        value(
            "taskwire_worker_results_total",
            model="m:unit@2",
            route="none",
            status="error",
            error_code="timeoutProvider",
        )
        == 1
    )
    assert value("taskwire_upstream_fallbacks_total", model="m:unit@2") == 1
    worker_metrics.retry("m:unit@2", "r1", "rateLimited")
    assert (
        value("taskwire_upstream_retries_total", model="m:unit@2", route="r1", code="rateLimited")
        == 1
    )
    worker_metrics.cooldown("m:unit@2", "r1")
    assert value("taskwire_route_cooldowns_total", model="m:unit@2", route="r1") == 1


def test_webhook_attempts_by_outcome_and_lag() -> None:
    import time

    lag = value("taskwire_webhook_delivery_lag_seconds_count")
    delivered = value("taskwire_webhook_attempts_total", outcome="2xx", state="delivered")
    errored = value("taskwire_webhook_attempts_total", outcome="error", state="pending")
    worker_metrics.webhook_attempt(204, "delivered", time.time() - 2, time.monotonic())
    worker_metrics.webhook_attempt(None, "pending", None, time.monotonic())
    assert (
        value("taskwire_webhook_attempts_total", outcome="2xx", state="delivered") == delivered + 1
    )
    assert value("taskwire_webhook_attempts_total", outcome="error", state="pending") == errored + 1
    assert value("taskwire_webhook_delivery_lag_seconds_count") == lag + 1
    # about two seconds late: in the (1, 5] bucket, not below
    assert value("taskwire_webhook_delivery_lag_seconds_bucket", le="1.0") < value(
        "taskwire_webhook_delivery_lag_seconds_bucket", le="5.0"
    )


def test_jobs_running_and_held_back_claims() -> None:
    before = value("taskwire_worker_jobs_running", **{"class": "batch"})
    worker_metrics.job_started("b")
    assert value("taskwire_worker_jobs_running", **{"class": "batch"}) == before + 1
    worker_metrics.job_ended("b")
    assert value("taskwire_worker_jobs_running", **{"class": "batch"}) == before
    held = value("taskwire_worker_claims_held_back_total", reason="batch")
    worker_metrics.held_back("i")
    assert value("taskwire_worker_claims_held_back_total", reason="batch") == held + 1


def test_the_probe_server_serves_metrics() -> None:
    server = ProbeServer("127.0.0.1", 0, WorkerHealth()).start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"taskwire_worker_jobs_running", "taskwire_worker_results"} <= names
