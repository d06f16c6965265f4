"""Tracing end to end: the real API and worker processes export spans (the test-only JSON
lines exporter, TASKWIRE_TRACE_FILE), and one trace, under the client's traceparent, shows
the API request, the time queued, each upstream attempt, the final write and the webhook
delivery."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv.stack import Stack, StackConfig
from tests.conftest import KEY_A, TEST_SETTINGS, Api, text_task, write_catalog
from tests.receiver import Receiver, running_receiver, wait_for

CLIENT_TRACE = uuid.uuid4().hex
CLIENT_SPAN = uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("traced")
    stack = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A],
            catalog_path=write_catalog(root),
            env={
                **TEST_SETTINGS,
                "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
                "TASKWIRE_WEBHOOK_JITTER": "0",
                "TASKWIRE_TRACE_FILE": str(root / "spans.jsonl"),
                "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms
            },
        )
    ).start()
    yield stack
    stack.stop()


def spans_of(path: Path, trace_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [span for span in found if span["trace_id"] == trace_id]


def test_one_trace_from_request_to_webhook(traced: Stack, receiver: Receiver) -> None:
    path = traced.root / "spans.jsonl"
    url = receiver.answer("/traced")
    # the first upstream call fails (retryable), the second answers
    prompt = f"[[sim:status=503,fail=1,tokens=5]] {uuid.uuid4()}"
    task = text_task(prompt, deliveryMethod="async", webhookURL=url)
    api = Api(traced)
    try:
        answer = api.post([task], headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        assert answer.status_code == 200, answer.text
        wait_for(lambda: bool(receiver.requests("/traced")), 30, "the webhook")
    finally:
        api.close()
    spans: list[dict[str, Any]] = []

    def exported() -> bool:
        nonlocal spans
        spans = spans_of(path, CLIENT_TRACE)
        return any(span["name"] == "webhook.attempt" for span in spans)

    wait_for(exported, 20, "the webhook attempt's span")
    named: dict[str, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        named.setdefault(span["name"], []).append(span)

    [request] = named["POST /v1"]
    assert request["parent_id"] == CLIENT_SPAN  # the client's traceparent is the parent
    assert request["kind"] == "SERVER" and request["service"] == "taskwire-api"
    assert request["attributes"]["http.response.status_code"] == 200
    [submit] = named["tasks.submit"]
    assert submit["parent_id"] == request["span_id"]

    [queued] = named["task.queued"]
    [run] = named["result.run"]
    assert queued["parent_id"] == run["parent_id"] == request["span_id"]
    assert queued["service"] == run["service"] == "taskwire-worker"
    # queued from the submit (backdated, inside the request) until the job started
    assert request["start_ns"] <= queued["start_ns"] <= request["end_ns"]
    assert queued["end_ns"] <= run["start_ns"] + 1_000_000
    assert run["attributes"]["taskwire.status"] == "success"
    assert run["attributes"]["taskwire.attempts"] == 2

    first, second = named["upstream.attempt"]
    assert first["parent_id"] == second["parent_id"] == run["span_id"]
    assert first["attributes"]["taskwire.attempt"] == 1
    assert first["attributes"]["http.response.status_code"] == 503
    assert first["status"] == "ERROR" and "taskwire.error_code" in first["attributes"]
    assert second["attributes"]["taskwire.attempt"] == 2 and second["status"] == "UNSET"
    assert second["attributes"]["taskwire.route"] == "simulator"

    [write] = named["result.write"]
    assert write["parent_id"] == run["span_id"]

    [delivery] = named["webhook.attempt"]
    assert delivery["parent_id"] == request["span_id"]
    assert delivery["attributes"]["http.response.status_code"] == 200
    assert delivery["attributes"]["taskwire.delivery_state"] == "delivered"

    # the worker's log lines for this result carry the trace id
    worker_log = traced.workers[0].log_path
    assert worker_log is not None
    lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line]
    ours = [line for line in lines if line.get("task_uuid") == task["taskUUID"]]
    events = {line["event"]: line for line in ours}
    for event in ("upstream.attempt_failed", "result.finished"):
        assert events[event]["trace_id"] == CLIENT_TRACE
        assert events[event]["span_id"] == run["span_id"]
    # and the API's names no span of FastAPI's own (the provider is not registered globally)
    assert not [span for span in spans if span["name"].startswith("fastapi.")]
