"""The API's Prometheus metrics, and `GET /metrics`.

One registry per API process (prometheus_client's default): `python -m service` runs
uvicorn as one process, and each API process (several per host, or one per pod) is its own
scrape target. Recording is a counter or histogram increment in memory, never a Redis
round trip; the only Redis read is the queue's depth at scrape time, and only in the one
process that exports it (core/metrics.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from core.errors import TaskwireError
from core.metrics import BoundedLabel, QueueExporter, scrape_allowed

REQUESTS = Counter(
    "taskwire_api_requests",
    "Tasks of POST /v1 requests answered, by task type, delivery method (textInference) and "
    "the HTTP status of their answer (an error's own status; 202 for a sync task still "
    "processing). A request refused as a whole counts once, with task_type none.",
    ["task_type", "delivery_method", "status"],
)
REJECTED = Counter(
    "taskwire_api_rejected",
    "Tasks or requests refused, by the error code answered (rateLimitExceeded, "
    "queueLimitExceeded, tokenLimitExceeded, serverBusy, queueFull, validation codes...).",
    ["reason"],
)
SYNC_WAIT = Histogram(
    "taskwire_api_sync_wait_seconds",
    "How long a sync task's answer waited for its results after submitting; outcome "
    "complete (every result final) or pending (a 202 at the sync timeout).",
    ["outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)
STREAMS_OPEN = Gauge(
    "taskwire_api_streams_open",
    "Server-sent event streams open now (stream tasks and re-attached event streams).",
)

WS_SOCKETS_OPEN = Gauge(
    "taskwire_api_ws_sockets_open",
    "Task WebSockets (GET /v1 upgraded) open now, authenticated or not yet.",
)
WS_FRAMES = Counter(
    "taskwire_api_ws_frames_received",
    "Frames received on task WebSockets, by the task type they carry: the type when every "
    "task of the frame has it (authentication for the first frame), mixed for several, "
    "none for a frame that is not a JSON array of tasks.",
    ["task_type"],
)
WS_CLOSED = Counter(
    "taskwire_api_ws_sockets_closed",
    "Task WebSockets closed, by close code: the server's (1001 shutting down, 1008 "
    "authentication failed or the client read too slowly, 1009 a frame over the limit) or "
    "the client's (1000, 1005 none given, 1006 dropped without a close); other for the rest.",
    ["code"],
)

TASK_TYPES = frozenset(
    {"textInference", "getResponse", "taskCancel", "ping", "imageUpload", "authentication"}
)
_task_type = BoundedLabel(allowed=TASK_TYPES)
_delivery = BoundedLabel(allowed=frozenset({"sync", "async", "stream"}))
_reason = BoundedLabel(limit=100)


def task_answered(task_type: object, delivery_method: object, status: int) -> None:
    """One task answered (any front door may call this)."""
    REQUESTS.labels(
        _task_type(task_type) or "none", _delivery(delivery_method) or "none", str(status)
    ).inc()


def rejected(error: TaskwireError) -> None:
    rejected_code(error.code)


def rejected_code(code: str) -> None:
    """A task or request refused with this error code (camelCase, as the native door's)."""
    REJECTED.labels(_reason(code) or "unknown").inc()


class _Slot(Protocol):
    raw: Any
    task: Any
    errors: list[TaskwireError]
    pending_sync: bool


def request_answered(slots: Iterable[_Slot], status: int, owner: str | None = None) -> None:
    """The tasks of one POST /v1 answered with HTTP `status`: each task counted with its own
    status (its first error's, 202 while processing, else the response's), errors by code."""
    if owner is not None and _key_labels:
        key_requests().labels(owner, str(status)).inc()
    for slot in slots:
        task = slot.task
        raw = slot.raw if isinstance(slot.raw, dict) else {}
        task_type = getattr(task, "taskType", None) or raw.get("taskType")
        delivery = getattr(task, "deliveryMethod", None)
        if slot.errors:
            for error in slot.errors:
                rejected(error)
            task_answered(task_type, delivery, slot.errors[0].status)
        else:
            task_answered(task_type, delivery, 202 if slot.pending_sync else status)


def request_refused(error: TaskwireError, owner: str | None = None) -> None:
    """A request refused as a whole (body, authentication, read limit, storage)."""
    if owner is not None and _key_labels:
        key_requests().labels(owner, str(error.status)).inc()
    rejected(error)
    task_answered(None, None, error.status)


_close_code = BoundedLabel(
    allowed=frozenset({"1000", "1001", "1005", "1006", "1008", "1009", "1011", "1012"})
)


def socket_opened() -> None:
    WS_SOCKETS_OPEN.inc()


def socket_closed(code: int | None) -> None:
    """A task socket closed with `code` (None: dropped without a close frame, 1006)."""
    WS_SOCKETS_OPEN.dec()
    WS_CLOSED.labels(_close_code(1006 if code is None else code) or "other").inc()


def socket_frame(tasks: object) -> None:
    """A frame received on a task socket: its parsed tasks (None if it was not an array)."""
    types = (
        {task.get("taskType") if isinstance(task, dict) else None for task in tasks}
        if isinstance(tasks, list)
        else set()
    )
    if not types:
        label = "none"
    elif len(types) > 1:
        label = "mixed"
    else:
        label = _task_type(types.pop()) or "none"
    WS_FRAMES.labels(label).inc()


def stream_opened() -> None:
    STREAMS_OPEN.inc()


def stream_closed() -> None:
    STREAMS_OPEN.dec()


class _Pending(Protocol):
    pending: bool


P = ParamSpec("P")
A = TypeVar("A", bound=_Pending)


def timed_sync_wait(function: Callable[P, Awaitable[A]]) -> Callable[P, Awaitable[A]]:
    """Decorates the sync answerer: its wait observed in taskwire_api_sync_wait_seconds."""

    @functools.wraps(function)
    async def timed(*args: P.args, **kwargs: P.kwargs) -> A:
        started = time.monotonic()
        answer = await function(*args, **kwargs)
        SYNC_WAIT.labels("pending" if answer.pending else "complete").observe(
            time.monotonic() - started
        )
        return answer

    return timed


_KEY_REQUESTS: Counter | None = None
_key_labels = False


def configure(key_labels: bool) -> None:
    """Whether requests are also counted per API key owner (TASKWIRE_METRICS_KEY_LABELS)."""
    global _key_labels
    _key_labels = key_labels


def key_requests() -> Counter:
    """taskwire_api_key_requests_total{key,status}: only with TASKWIRE_METRICS_KEY_LABELS
    (registered on first use, so it does not exist otherwise)."""
    global _KEY_REQUESTS
    if _KEY_REQUESTS is None:
        _KEY_REQUESTS = Counter(
            "taskwire_api_key_requests",
            "POST /v1 requests by API key owner id and HTTP status "
            "(opt-in: TASKWIRE_METRICS_KEY_LABELS).",
            ["key", "status"],
        )
    return _KEY_REQUESTS


router = APIRouter()
UNAUTHORIZED = Response(
    b"a metrics token is required: Authorization: Bearer <TASKWIRE_METRICS_TOKEN>\n",
    status_code=401,
    media_type="text/plain",
    headers={"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"},
)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """This process's metrics, and the queue's depth if this process exports it (behind
    TASKWIRE_METRICS_TOKEN when that is set)."""
    token = request.app.state.taskwire.settings.metrics_token
    if not scrape_allowed(token, request.headers.get("authorization")):
        return UNAUTHORIZED
    exporter: QueueExporter | None = getattr(request.app.state, "queue_exporter", None)
    queue = await exporter.exposition() if exporter is not None else b""
    return Response(generate_latest(REGISTRY) + queue, media_type=CONTENT_TYPE_LATEST)
