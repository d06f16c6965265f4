"""The worker's Prometheus metrics, served on its probe port (worker/probes.py: `/metrics`).

Each worker process has its own registry (prometheus_client's default) and is scraped on
its own; `sum()` over workers is the fleet's. Recording is an in-memory increment on the
worker's event loop; the probe thread renders the registry when scraped (prometheus_client
is thread-safe). Labels are bounded: models and routes come from the catalog, error codes
from taskwire's error tree (and are capped anyway), job classes are three.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from core.contract import ErrorItem, ResultItem
from core.metrics import CLASS_NAMES, BoundedLabel
from worker.providers.base import ReasoningDelta, TextDelta

RESULTS = Counter(
    "taskwire_worker_results",
    "Results recorded, by model, the route that answered (or was tried last; none if no "
    "route was tried), status (success | error) and error code (empty on success).",
    ["model", "route", "status", "error_code"],
)
UPSTREAM_SECONDS = Histogram(
    "taskwire_upstream_request_seconds",
    "One upstream attempt, from the request to its last event, by model, route and outcome "
    "(ok, or the upstream error's code).",
    ["model", "route", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
TTFT_SECONDS = Histogram(
    "taskwire_upstream_ttft_seconds",
    "Time to first token of an upstream attempt (first text or reasoning delta).",
    ["model", "route"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
RETRIES = Counter(
    "taskwire_upstream_retries",
    "Upstream attempts retried on the same route after a retryable error, by its code.",
    ["model", "route", "code"],
)
FALLBACKS = Counter(
    "taskwire_upstream_fallbacks",
    "Results that moved on to another route after one failed (counted per route change).",
    ["model"],
)
COOLDOWNS = Counter(
    "taskwire_route_cooldowns",
    "Route cool-downs started (a route failed its threshold of results in a row); each is "
    "counted once, by the worker whose failure started it.",
    ["model", "route"],
)
WEBHOOK_ATTEMPTS = Counter(
    "taskwire_webhook_attempts",
    "Webhook delivery attempts, by outcome (2xx, 3xx, 4xx, 5xx, or error: no answer, "
    "refused, timed out) and the delivery's state after it (delivered | pending | failed).",
    ["outcome", "state"],
)
WEBHOOK_LAG = Histogram(
    "taskwire_webhook_delivery_lag_seconds",
    "How late a delivery attempt started after it was due (queueing, busy hosts).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 7200),
)
JOBS_RUNNING = Gauge(
    "taskwire_worker_jobs_running",
    "Jobs running in this worker, by class (interactive, batch, webhook).",
    ["class"],
)
HELD_BACK = Counter(
    "taskwire_worker_claims_held_back",
    "Claims (poll iterations with free slots) that left work queued because the worker's "
    "event loop lagged: reason batch (interactive only taken) or all (nothing new taken).",
    ["reason"],
)

_running = {code: JOBS_RUNNING.labels(name) for code, name in CLASS_NAMES.items()}
_code = BoundedLabel(limit=100)
_name = BoundedLabel(limit=500)  # models and routes: the catalog's


def result(model: str, route: str | None, item: ResultItem, routes_tried: list[str]) -> None:
    """A result recorded (by this run): its outcome, and the route changes it took."""
    code = item.code if isinstance(item, ErrorItem) else None
    RESULTS.labels(_name(model), _name(route) or "none", item.status, _code(code)).inc()
    if len(routes_tried) > 1:
        FALLBACKS.labels(_name(model)).inc(len(routes_tried) - 1)


def retry(model: str, route: str, code: str) -> None:
    RETRIES.labels(_name(model), _name(route), _code(code)).inc()


def cooldown(model: str, route: str) -> None:
    COOLDOWNS.labels(_name(model), _name(route)).inc()


E = TypeVar("E")


async def timed_attempt(events: AsyncIterator[E], model: str, route: str) -> AsyncIterator[E]:
    """`events` (an upstream attempt's stream) passed through, timing its first token (text
    or reasoning) and the attempt's end: observed when the stream ends or fails, not when
    the attempt is cancelled or abandoned."""
    started = time.monotonic()
    model, route = _name(model), _name(route)
    first = True
    try:
        async for event in events:
            if first and isinstance(event, (TextDelta, ReasoningDelta)):
                first = False
                TTFT_SECONDS.labels(model, route).observe(time.monotonic() - started)
            yield event
    except Exception as exc:
        outcome = _code(getattr(exc, "code", None)) or "error"
        UPSTREAM_SECONDS.labels(model, route, outcome).observe(time.monotonic() - started)
        raise
    UPSTREAM_SECONDS.labels(model, route, "ok").observe(time.monotonic() - started)


def webhook_attempt(status: int | None, state: str, due_at: float | None, started: float) -> None:
    """One delivery attempt, made at the monotonic time `started`, due at the epoch second
    `due_at`; `state` is the delivery's state after it."""
    outcome = f"{status // 100}xx" if status is not None and 100 <= status < 600 else "error"
    WEBHOOK_ATTEMPTS.labels(outcome, state).inc()
    if due_at is not None:
        began = time.time() - (time.monotonic() - started)
        WEBHOOK_LAG.observe(max(0.0, began - due_at))


def job_started(job_class: str) -> None:
    gauge = _running.get(job_class)
    if gauge is not None:
        gauge.inc()


def job_ended(job_class: str) -> None:
    gauge = _running.get(job_class)
    if gauge is not None:
        gauge.dec()


def held_back(classes: str) -> None:
    """A claim left classes out because the loop lags: `classes` is what it may take."""
    HELD_BACK.labels("batch" if classes else "all").inc()
