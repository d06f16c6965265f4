"""core/tracing.py: turning tracing on from OTEL_*, the stored context, the job's spans, the
API's server spans and the log processor, against the SDK's in-memory exporter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import tracing
from core.jobs import JOB_INPUT_FIELDS, job_input_from

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = format(span.parent.span_id, "016x") if span.parent else None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), parent


# --- on or off, from the environment


def test_off_unless_configured(tmp_path: Path) -> None:
    assert tracing.exporters_from_env({}) is None
    assert tracing.exporters_from_env({"OTEL_TRACES_SAMPLER": "traceidratio"}) is None
    assert tracing.setup_tracing("api", environ={}) is False
    assert not tracing.active()
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    assert tracing.exporters_from_env(disabled, tmp_path / "spans.jsonl") is None


def test_exporters_named_by_the_standard_variables(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    [otlp] = tracing.exporters_from_env(endpoint) or []
    assert isinstance(otlp, OTLPSpanExporter)
    assert tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "none"}) == []  # on, sent nowhere
    found = tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "console"}, tmp_path / "t")
    assert found is not None and isinstance(found[0], ConsoleSpanExporter) and len(found) == 2
    [only_file] = tracing.exporters_from_env({}, tmp_path / "t") or []
    assert type(only_file).__name__ == "JsonLinesExporter"
    with pytest.raises(ValueError, match="zipkin"):
        tracing.exporters_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="http/protobuf"):
        tracing.exporters_from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_helpers_do_nothing_when_off() -> None:
    assert not tracing.active()
    with tracing.span("x") as current:
        assert current is None
        assert tracing.current_carrier() is None
    assert tracing.start_span("x") is None
    tracing.end_span(None, {"a": 1}, error="e")
    tracing.event("x")
    with tracing.job_scope() as scope:
        scope.start("result.run", TRACEPARENT, time.time() * 1000, {})
        scope.set({"a": 1}, error="e")
    assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


# --- the stored context


def test_carrier_round_trip(spans: InMemorySpanExporter) -> None:
    with tracing.span("request") as request:
        carrier = tracing.current_carrier()
    assert carrier is not None
    ctx = request.get_span_context()
    # flags: sampled (and, from SDKs that set it, W3C level 2's random trace id bit)
    assert carrier.rsplit("-", 1)[0] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}"
    restored = tracing.context_from(carrier.encode())
    assert restored is not None
    with tracing.span("later", None) as _later:
        pass
    child = tracing.start_span("child", carrier=carrier)
    tracing.end_span(child)
    found = by_name(spans)
    assert hex_ids(found["child"])[0] == f"{ctx.trace_id:032x}"
    assert hex_ids(found["child"])[2] == f"{ctx.span_id:016x}"
    assert tracing.context_from("not a traceparent") is None
    assert tracing.context_from(None) is None
    with_state = tracing.context_from(f"{TRACEPARENT} vendor=abc,other=1")
    assert with_state is not None


def test_job_scope_continues_the_stored_context(spans: InMemorySpanExporter) -> None:
    submitted_ms = time.time() * 1000 - 1500
    with tracing.job_scope() as scope:
        scope.start("result.run", TRACEPARENT, submitted_ms, {"taskwire.result_index": 0})
        attempt = tracing.start_span("upstream.attempt", {"taskwire.attempt": 1})
        tracing.end_span(attempt, {"taskwire.error_code": "providerError"}, error="x")
        tracing.end_span(attempt, {"late": 1})  # ended once only
        tracing.event("upstream.fallback", {"taskwire.to_route": "b"})
        with tracing.span("result.write"):
            pass
        logged = tracing.add_trace_ids(None, "info", {})
        scope.set({"taskwire.status": "error", "none": None}, error="providerError")  # type: ignore[dict-item]
    found = by_name(spans)
    queued, run = found["task.queued"], found["result.run"]
    assert hex_ids(queued)[0] == hex_ids(run)[0] == CLIENT_TRACE
    assert hex_ids(queued)[2] == hex_ids(run)[2] == CLIENT_SPAN
    assert queued.start_time is not None and queued.end_time is not None
    assert abs(queued.start_time / 1e6 - submitted_ms) < 1  # backdated to the submit
    assert (queued.end_time - queued.start_time) / 1e9 >= 1.4
    for child in ("upstream.attempt", "result.write"):
        assert hex_ids(found[child])[2] == hex_ids(run)[1]
    assert found["upstream.attempt"].attributes == {
        "taskwire.attempt": 1,
        "taskwire.error_code": "providerError",
    }
    assert found["upstream.attempt"].status.status_code.name == "ERROR"
    assert [e.name for e in run.events] == ["upstream.fallback"]
    assert run.attributes is not None and run.attributes["taskwire.status"] == "error"
    assert "none" not in run.attributes
    assert logged == {"trace_id": CLIENT_TRACE, "span_id": hex_ids(run)[1]}
    assert tracing.add_trace_ids(None, "info", {}) == {}  # the scope is over


def test_job_scope_without_stored_context_starts_a_trace(spans: InMemorySpanExporter) -> None:
    def failing_job() -> None:
        with tracing.job_scope() as scope:
            scope.start("result.run", None, None, {})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing_job()
    [run] = spans.get_finished_spans()
    assert run.parent is None and run.status.status_code.name == "ERROR"
    assert [e.name for e in run.events] == ["exception"]


def test_job_input_reads_the_stored_context() -> None:
    assert JOB_INPUT_FIELDS[-1] == "tc"
    fields: list[Any] = [b'{"x":1}', b"[7]", b"12.5", None, TRACEPARENT.encode(), None]
    job = job_input_from(fields, 0)
    assert job is not None and job.trace == TRACEPARENT
    fields[4] = None
    job = job_input_from(fields, 0)
    assert job is not None and job.trace is None


# --- the API's server spans


async def test_middleware_continues_the_clients_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    app = FastAPI()
    carriers: list[str | None] = []

    @app.post("/v1/things/{thing}")
    async def thing(thing: str) -> dict[str, str]:
        carriers.append(tracing.current_carrier())
        return {"thing": thing}

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {}

    app.add_middleware(tracing.TracingMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.post("/v1/things/a", headers={"traceparent": TRACEPARENT})
        assert answer.status_code == 200
        assert (await client.get("/livez")).status_code == 200
        assert (await client.post("/v1/nothing")).status_code == 404
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["POST /v1/things/{thing}", "POST"]
    server = finished[0]
    trace_id, span_id, parent = hex_ids(server)
    assert (trace_id, parent) == (CLIENT_TRACE, CLIENT_SPAN)
    assert server.kind.name == "SERVER"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/things/{thing}"
    assert [c.rsplit("-", 1)[0] for c in carriers if c] == [f"00-{CLIENT_TRACE}-{span_id}"]
    assert finished[1].parent is None  # no traceparent: a trace of its own


def test_json_lines_exporter(tmp_path: Path) -> None:
    import json

    path = tmp_path / "spans.jsonl"
    [exporter] = tracing.exporters_from_env({}, path) or []
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        with tracing.span("one", {"k": "v"}), tracing.span("two"):
            pass
    finally:
        tracing.use_provider(None)
        provider.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["two", "one"]
    assert lines[0]["parent_id"] == lines[1]["span_id"]
    assert lines[1]["attributes"] == {"k": "v"} and lines[1]["parent_id"] is None
