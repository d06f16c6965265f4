"""Runs one result against the model's upstream routes, retrying with backoff, publishing deltas."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from core.catalog import Catalog, ModelSpec, Route
from core.errors import UpstreamError
from core.protocol import TextInferenceTask, error_item
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

log = structlog.get_logger("taskwire.inference")


@dataclass(slots=True)
class InferenceOutcome:
    item: dict[str, Any]
    route: str | None
    attempts: int
    usage: UsageReport | None = None
    usage_estimated: bool = False


class Inference:
    """Turns a validated task and a seed into one result item."""

    def __init__(
        self,
        catalog: Catalog,
        client: httpx.AsyncClient,
        adapters: Mapping[str, Adapter],
        policy: RetryPolicy,
        environ: Mapping[str, str] | None = None,
    ):
        self._catalog = catalog
        self._client = client
        self._adapters = adapters
        self._policy = policy
        self._environ = os.environ if environ is None else environ
        self._reported_skips: set[tuple[str, str]] = set()

    def usable_routes(self, model: ModelSpec) -> list[tuple[Route, str]]:
        """Routes with an adapter here and a key in the environment, in catalog order."""
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
            elif (model.air, route.name) not in self._reported_skips:
                self._reported_skips.add((model.air, route.name))
                log.info("route.skipped", model=model.air, route=route.name, reason=reason)
        return usable

    async def run(
        self, task: TextInferenceTask, index: int, seed: int, publisher: ResultPublisher
    ) -> InferenceOutcome:
        model = self._catalog.get(task.model)
        if model is None:
            return self._failed(
                task, index, None, 0, "unknownModel", f"Model {task.model!r} is no longer served."
            )
        routes = self.usable_routes(model)
        if not routes:
            return self._failed(
                task,
                index,
                None,
                0,
                "noAvailableServer",
                "No upstream route is configured for this model.",
            )
        route, key = routes[0]
        adapter = self._adapters[route.adapter]
        call = UpstreamCall(route=route, api_key=key, task=task, seed=seed)
        attempts = 0
        while True:
            attempts += 1
            assembler = ResultAssembler()
            publisher.restart()
            try:
                async for event in adapter.stream(self._client, call):
                    assembler.feed(event)
                    if isinstance(event, TextDelta):
                        publisher.add(text=event.text)
                    elif isinstance(event, ReasoningDelta):
                        publisher.add(reasoning=event.text)
                publisher.check_caught_up()
            except ResumeMismatch:
                return self._failed(
                    task,
                    index,
                    route.name,
                    attempts,
                    "inferenceError",
                    "The worker producing this result stopped mid-answer and the retry did not "
                    "reproduce the text already streamed; submit the task again.",
                )
            except UpstreamError as exc:
                delay = (
                    self._policy.delay(attempts, exc.retry_after)
                    if exc.retryable and not publisher.published
                    else None
                )
                log.info(
                    "upstream.attempt_failed",
                    route=route.name,
                    attempt=attempts,
                    code=exc.code,
                    http_status=exc.http_status,
                    retry_in_s=None if delay is None else round(delay, 3),
                    after_output=publisher.published,
                )
                if delay is None:
                    return self._failed(task, index, route.name, attempts, exc.code, exc.message)
                await asyncio.sleep(delay)
                continue
            usage, estimated = assembler.final_usage(task)
            return InferenceOutcome(
                item=assembler.item(task, index, seed, model.price),
                route=route.name,
                attempts=attempts,
                usage=usage,
                usage_estimated=estimated,
            )

    @staticmethod
    def _failed(
        task: TextInferenceTask,
        index: int,
        route: str | None,
        attempts: int,
        code: str,
        message: str,
    ) -> InferenceOutcome:
        return InferenceOutcome(
            item=error_item(task.taskUUID, index, code, message), route=route, attempts=attempts
        )
