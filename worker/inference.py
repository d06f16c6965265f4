"""Runs one result: choose routes by policy and health, try each with retries and backoff,
fall back to the next while nothing has been published, and publish deltas as they come."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import httpx
import structlog

from core import tracing
from core.cancel import stop_message
from core.catalog import Catalog, ModelSpec, Route
from core.contract import ErrorItem, ResultItem
from core.errors import UpstreamError
from core.images import ImageError
from core.protocol import TextInferenceTask
from worker import metrics as worker_metrics
from worker.images import ImageResolver
from worker.providers.base import (
    Adapter,
    ReasoningDelta,
    TextDelta,
    UpstreamCall,
    UsageReport,
)
from worker.publisher import ResultPublisher, ResumeMismatch
from worker.result import ResultAssembler
from worker.retry import RetryPolicy
from worker.routing import RouteHealth, counts_against_route, order_routes

log = structlog.get_logger("taskwire.inference")

# Asked before each upstream attempt: the error code to stop with (cancelled, expired), or None.
StopCheck = Callable[[], Awaitable[str | None]]


@dataclass(slots=True)
class InferenceOutcome:
    item: ResultItem
    route: str | None
    attempts: int
    usage: UsageReport | None = None
    usage_estimated: bool = False
    routes_tried: list[str] = field(default_factory=list)
    # The route that answered, for its health to be reset once the result is recorded.
    answered_by: tuple[ModelSpec, Route] | None = None


class _Stop(Exception):
    """Ends a result early with a protocol error code and message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Inference:
    """Turns a validated task and a seed into one result item."""

    def __init__(
        self,
        catalog: Catalog,
        client: httpx.AsyncClient,
        adapters: Mapping[str, Adapter],
        policy: RetryPolicy,
        health: RouteHealth,
        images: ImageResolver,
        environ: Mapping[str, str] | None = None,
    ):
        self._catalog = catalog
        self._client = client
        self._adapters = adapters
        self._policy = policy
        self._health = health
        self._images = images
        self._environ = os.environ if environ is None else environ
        self._usable: dict[str, list[tuple[Route, str]]] = {}

    def usable_routes(self, model: ModelSpec) -> list[tuple[Route, str]]:
        """Routes with an adapter here and a key in the environment, in catalog order
        (worked out once per model: neither changes while the process runs)."""
        cached = self._usable.get(model.air)
        if cached is not None:
            return cached
        usable = []
        for route in model.routes:
            key = route.api_key(self._environ)
            reason = None
            if route.adapter not in self._adapters:
                reason = f"adapter {route.adapter!r} is not available"
            elif key is None:
                reason = f"{route.api_key_env} is not set"
            if reason is None and key is not None:
                usable.append((route, key))
            else:
                log.info("route.skipped", model=model.air, route=route.name, reason=reason)
        self._usable[model.air] = usable
        return usable

    async def candidates(
        self, model: ModelSpec, *, prefill: bool = False
    ) -> list[tuple[Route, str]]:
        """Usable routes that are not cooling down, in the model's policy order; with
        `prefill`, only those that continue a conversation ending with an assistant message."""
        usable = self.usable_routes(model)
        if prefill:
            usable = [(route, key) for route, key in usable if route.allows_prefill]
        if not usable:
            raise _Stop("noAvailableServer", "No upstream route is configured for this model.")
        cooling = await self._health.cooling(model)
        ready = [(route, key) for route, key in usable if route.name not in cooling]
        if not ready:
            wait = max(1, round(min(cooling.values()) - time.time()))
            raise _Stop(
                "noAvailableServer",
                "Every provider of this model is failing right now and resting; "
                f"retry in a little while (about {wait} s).",
            )
        return order_routes(model, ready)

    async def run(
        self,
        task: TextInferenceTask,
        index: int,
        seed: int,
        publisher: ResultPublisher,
        owner: str = "",
        should_stop: StopCheck | None = None,
    ) -> InferenceOutcome:
        tried: list[str] = []
        attempts = 0
        try:
            model = self._catalog.get(task.model)
            if model is None:
                raise _Stop("unknownModel", f"Model {task.model!r} is no longer served.")
            last: UpstreamError | None = None
            memo: dict[str, str] = {}
            for route, key in await self.candidates(model, prefill=task.ends_with_prefill):
                if tried and last is not None:
                    tracing.event("upstream.fallback", _fallback(tried[-1], route.name, last))
                tried.append(route.name)
                images = await self._images.for_route(
                    owner, list(task.inputs.images) if task.inputs else [], route, memo
                )
                call = UpstreamCall(route=route, api_key=key, task=task, seed=seed, images=images)
                outcome, last, used = await self._on_route(
                    model, call, index, publisher, should_stop
                )
                attempts += used
                if outcome is not None:
                    outcome.attempts, outcome.routes_tried = attempts, tried
                    return outcome
                if publisher.published:
                    break  # output is out: another route would answer differently
            assert last is not None
            raise _Stop(last.code, last.message)
        except ImageError as exc:
            return self._failed(task, index, tried, attempts, "invalidImages", str(exc))
        except ResumeMismatch:
            return self._failed(
                task,
                index,
                tried,
                attempts,
                "inferenceError",
                "The worker producing this result stopped mid-answer and the retry did not "
                "reproduce the text already streamed; submit the task again.",
            )
        except _Stop as stop:
            return self._failed(task, index, tried, attempts, stop.code, stop.message)

    async def _on_route(
        self,
        model: ModelSpec,
        call: UpstreamCall,
        index: int,
        publisher: ResultPublisher,
        should_stop: StopCheck | None = None,
    ) -> tuple[InferenceOutcome | None, UpstreamError | None, int]:
        """Attempts on one route: (the outcome, or None and the last error; attempts made).
        Before each, `should_stop` may end the result (a cancelled or expired task never
        starts another upstream call)."""
        adapter = self._adapters[call.route.adapter]
        attempts = 0
        while True:
            code = await should_stop() if should_stop is not None else None
            if code is not None:
                raise _Stop(code, stop_message(code, call.task.cancelAfter))
            attempts += 1
            assembler = ResultAssembler()
            publisher.restart()
            span = tracing.start_span("upstream.attempt", _attempt(call.route.name, attempts))
            try:
                upstream = adapter.stream(self._client, call)
                async for event in worker_metrics.timed_attempt(
                    upstream, model.air, call.route.name
                ):
                    assembler.feed(event)
                    if isinstance(event, TextDelta):
                        publisher.add(text=event.text)
                    elif isinstance(event, ReasoningDelta):
                        publisher.add(reasoning=event.text)
                publisher.check_caught_up()
            except UpstreamError as exc:
                delay = None
                if exc.retryable and not publisher.published:
                    delay = self._policy.delay(attempts, exc.retry_after)
                tracing.end_span(span, _attempt_failure(exc, delay), error=exc.code)
                log.info(
                    "upstream.attempt_failed",
                    route=call.route.name,
                    attempt=attempts,
                    code=exc.code,
                    http_status=exc.http_status,
                    retry_in_s=None if delay is None else round(delay, 3),
                    after_output=publisher.published,
                )
                if delay is None:
                    # The route failed this result: one strike towards its cool-down.
                    if counts_against_route(exc):
                        await self._health.failed(model, call.route)
                    return None, exc, attempts
                worker_metrics.retry(model.air, call.route.name, exc.code)
                await asyncio.sleep(delay)
                continue
            except BaseException as exc:  # cancelled, or a re-run's text differs
                tracing.end_span(span, error=type(exc).__name__)
                raise
            tracing.end_span(span)
            usage, estimated = assembler.final_usage(call.task)
            outcome = InferenceOutcome(
                item=assembler.item(call.task, index, call.seed, model.price),
                route=call.route.name,
                attempts=attempts,
                usage=usage,
                usage_estimated=estimated,
                answered_by=(model, call.route),
            )
            return outcome, None, attempts

    async def recorded(self, outcome: InferenceOutcome) -> None:
        """Bookkeeping once the result is stored: the route that answered is healthy
        (best-effort, so it can never cost the answer itself)."""
        if outcome.answered_by is not None:
            await self._health.succeeded(*outcome.answered_by)

    @staticmethod
    def _failed(
        task: TextInferenceTask,
        index: int,
        tried: list[str],
        attempts: int,
        code: str,
        message: str,
    ) -> InferenceOutcome:
        return InferenceOutcome(
            item=ErrorItem(task.taskUUID, index, code, message),
            route=tried[-1] if tried else None,
            attempts=attempts,
            routes_tried=tried,
        )


def _attempt(route: str, attempt: int) -> dict[str, str | int]:
    return {"taskwire.route": route, "taskwire.attempt": attempt}


def _attempt_failure(exc: UpstreamError, retry_in_s: float | None) -> dict[str, str | int | float]:
    found: dict[str, str | int | float] = {"taskwire.error_code": exc.code}
    if exc.http_status is not None:
        found["http.response.status_code"] = exc.http_status
    if retry_in_s is not None:
        found["taskwire.retry_in_s"] = round(retry_in_s, 3)
    return found


def _fallback(from_route: str, to_route: str, error: UpstreamError) -> dict[str, str]:
    return {
        "taskwire.from_route": from_route,
        "taskwire.to_route": to_route,
        "taskwire.reason": error.code,
    }
