"""OpenTelemetry tracing: off unless configured with the standard OTEL_* variables; when on,
one trace follows a task from its API request through the queue, each upstream attempt and
the final write to each webhook delivery attempt.

Off (the default), every helper here returns at once on a `None` check: no span object, no
context attached, nothing imported from the SDK. The hooks elsewhere are one line each:

* the API: `TracingMiddleware` (installed by create_app only when on) opens a server span per
  request, continuing a client's W3C `traceparent`; intake stores `current_carrier()` with
  the task (the task record's `tc` field, written by the submit script);
* the worker: `job_scope()` continues the stored context when the job starts (a backdated
  `task.queued` span from the submit to the start, then the job's span), `start_span` /
  `end_span` for each upstream or webhook attempt, `span` for the final write;
* logs: `add_trace_ids`, a structlog processor, adds trace_id and span_id while a span is
  current.

OTel keeps its tracer provider and current span in process-wide state; ours is the same: one
tracer per process, set by `setup_tracing` from the process's main (never at import) or by
`use_provider` in tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

Attributes = Mapping[str, str | int | float | bool]

_W3C = TraceContextTextMapPropagator()
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()
# Requests that are not worth a span: probes and scrapes, every few seconds.
_UNTRACED_PATHS = frozenset({"/livez", "/readyz", "/health", "/metrics"})


@dataclass(slots=True)
class _State:
    tracer: Tracer | None = None  # None: tracing is off
    provider: TracerProvider | None = None


_state = _State()


# --- setup


def exporters_from_env(
    environ: Mapping[str, str], trace_file: Path | None = None
) -> list[SpanExporter] | None:
    """The exporters the standard variables ask for; None: tracing stays off.

    On when OTEL_TRACES_EXPORTER names exporters (otlp, console, none: spans made but sent
    nowhere) or an OTLP endpoint is set (otlp implied), or when `trace_file` is given (JSON
    lines, for tests and debugging); OTEL_SDK_DISABLED=true always wins. OTLP is sent over
    HTTP/protobuf (the exporter reads its own OTEL_EXPORTER_OTLP_* variables)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names and endpoint:
        names = ["otlp"]
    if not names and trace_file is None:
        return None
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = (
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise ValueError(
                    f"OTLP protocol {protocol!r} is not bundled; taskwire exports traces "
                    "over http/protobuf (OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {name!r}; taskwire knows otlp, console and none"
            )
    if trace_file is not None:
        exporters.append(json_lines_exporter(trace_file))
    return exporters


def setup_tracing(
    process: str, trace_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Turn tracing on for this process if the environment asks for it (see
    `exporters_from_env`); sampling follows OTEL_TRACES_SAMPLER / _ARG (default: every
    trace, or as the caller's traceparent says). Returns whether tracing is on."""
    env = os.environ if environ is None else environ
    exporters = exporters_from_env(env, trace_file)
    if exporters is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"taskwire.process": process})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": f"taskwire-{process}"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # Not registered as OTel's global provider: framework instrumentation that switches on
    # when one is (FastAPI's native telemetry in recent versions) would add a second server
    # span and per-dependency spans to every request. The spans here are taskwire's own.
    use_provider(provider)
    return True


def use_provider(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: off). Tests install one with an in-memory
    exporter; the global provider is left alone."""
    _state.provider = provider
    _state.tracer = provider.get_tracer("taskwire") if provider is not None else None


def shutdown_tracing() -> None:
    """Export what is buffered and stop (at process exit)."""
    provider = _state.provider
    use_provider(None)
    if provider is not None:
        provider.shutdown()


def active() -> bool:
    return _state.tracer is not None


# --- the context that travels with a task


def current_carrier() -> str | None:
    """The current span's context as stored with a task: its W3C traceparent, then its
    tracestate after a space if it has one (None when off or no span is current)."""
    if _state.tracer is None:
        return None
    headers: dict[str, str] = {}
    _W3C.inject(headers)
    parent = headers.get("traceparent")
    if parent is None:
        return None
    state = headers.get("tracestate")
    return f"{parent} {state}" if state else parent


def context_from(carrier: str | bytes | None) -> otel_context.Context | None:
    """The context a stored carrier names (None: nothing stored, or not a traceparent)."""
    if not carrier:
        return None
    text = carrier.decode() if isinstance(carrier, bytes) else carrier
    parent, _, state = text.partition(" ")
    headers = {"traceparent": parent}
    if state:
        headers["tracestate"] = state
    found = _W3C.extract(headers)
    if not trace.get_current_span(found).get_span_context().is_valid:
        return None
    return found


# --- spans


def span(name: str, attributes: Attributes | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span for the duration of a `with` block (nothing when off)."""
    tracer = _state.tracer
    if tracer is None:
        return _NULL
    return tracer.start_as_current_span(name, attributes=attributes)


def start_span(
    name: str, attributes: Attributes | None = None, carrier: str | bytes | None = None
) -> Span | None:
    """A span started now, not made current: a child of the current span, or of the stored
    context `carrier` when one is given. End it with `end_span` (None when off)."""
    tracer = _state.tracer
    if tracer is None:
        return None
    parent = context_from(carrier) if carrier is not None else None
    return tracer.start_span(name, context=parent, attributes=attributes)


def end_span(
    span: Span | None, attributes: Attributes | None = None, error: str | None = None
) -> None:
    """Set the outcome's attributes (and an error status, with `error` as its description)
    and end the span, once: a second call does nothing."""
    if span is None or not span.is_recording():
        return
    if attributes:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def event(name: str, attributes: Attributes | None = None) -> None:
    """An event on the current span (a route fallback, say)."""
    if _state.tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, attributes=attributes)


class JobScope:
    """A job's span: `start` it once the job knows its task's stored context (the `with`
    block around the job ends it, recording an exception that escaped)."""

    __slots__ = ("_span", "_token")

    def __init__(self) -> None:
        self._span: Span | None = None
        self._token: object | None = None

    def __enter__(self) -> JobScope:
        return self

    def start(
        self,
        name: str,
        carrier: str | bytes | None,
        queued_since_ms: float | None,
        attributes: Attributes,
    ) -> None:
        """Continue the stored context: a `task.queued` span from `queued_since_ms` (the
        submit) to now, then `name`, current until the scope ends."""
        tracer = _state.tracer
        if tracer is None or self._span is not None:
            return
        parent = context_from(carrier)
        if queued_since_ms is not None:
            queued = tracer.start_span(
                "task.queued",
                context=parent,
                start_time=int(queued_since_ms * 1_000_000),
                attributes=attributes,
            )
            queued.end()
        self._span = tracer.start_span(name, context=parent, attributes=attributes)
        self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def set(self, attributes: Attributes, error: str | None = None) -> None:
        """The job's outcome on its span (an error status with `error` as description)."""
        if self._span is not None and self._span.is_recording():
            self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})
            if error is not None:
                self._span.set_status(Status(StatusCode.ERROR, error))

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        span, token = self._span, self._token
        if span is None:
            return
        self._span = self._token = None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        if exc is not None and span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


class _NullScope:
    __slots__ = ()

    def __enter__(self) -> _NullScope:
        return self

    def start(self, *_args: Any) -> None:
        return None

    def set(self, _attributes: Attributes, error: str | None = None) -> None:
        return None

    def __exit__(self, *_exc: Any) -> None:
        return None


_NULL_SCOPE = _NullScope()


def job_scope() -> JobScope | _NullScope:
    return JobScope() if _state.tracer is not None else _NULL_SCOPE


# --- logs


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the current span's trace_id and span_id (hex), if one is."""
    if _state.tracer is None:
        return event_dict
    found = trace.get_current_span().get_span_context()
    if found.is_valid:
        event_dict.setdefault("trace_id", format(found.trace_id, "032x"))
        event_dict.setdefault("span_id", format(found.span_id, "016x"))
    return event_dict


# --- the API's server spans


class TracingMiddleware:
    """ASGI middleware: a server span per HTTP request (probes excepted), continuing the
    client's traceparent (W3C trace context, or OTEL_PROPAGATORS), named by its route."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        tracer = _state.tracer
        if tracer is None or scope["type"] != "http" or scope["path"] in _UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as server:

            async def traced_send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    server.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        server.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    server.update_name(f"{method} {route}")
                    server.set_attribute("http.route", route)


# --- a test and debugging exporter


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as a plain dict (ids in hex)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "status": span.status.status_code.name,
        "service": span.resource.attributes.get("service.name"),
    }


def json_lines_exporter(path: Path) -> SpanExporter:
    """An exporter appending each finished span as one JSON line to a file
    (TASKWIRE_TRACE_FILE: for tests and debugging, where processes cannot share an
    in-memory exporter). Built on demand: the SDK is imported only when tracing is on."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            # one write per line on an O_APPEND descriptor: processes sharing the file
            # never interleave inside a line
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                for span in spans:
                    os.write(fd, (json.dumps(span_record(span), default=str) + "\n").encode())
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    return JsonLinesExporter()
