"""A Runware-compatible upstream (another Runware or taskwire): `textInference` streamed."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import (
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from worker.providers.base import (
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UpstreamEvent,
    UsageReport,
    error_for_status,
    error_for_transport,
    request_timeout,
)
from worker.providers.sse import aiter_sse


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Delta(_Loose):
    text: str | None = None
    reasoningContent: str | None = None


class _Usage(_Loose):
    promptTokens: int = 0
    completionTokens: int = 0
    thinkingTokens: int = 0
    cachedTokens: int = 0


class _ToolCall(_Loose):
    id: str = ""
    name: str = ""
    input: dict[str, Any] = {}


class _Error(_Loose):
    code: str = ""
    message: str = ""


class _Chunk(_Loose):
    delta: _Delta | None = None
    finishReason: str | None = None
    usage: _Usage | None = None
    toolCalls: list[_ToolCall] | None = None
    errors: list[_Error] | None = None


def build_task(call: UpstreamCall) -> dict[str, Any]:
    """The client's task, re-addressed: one result, streamed, under a new taskUUID."""
    task = call.task.model_dump(mode="json", by_alias=True, exclude_none=True)
    for field in ("taskUUID", "webhookURL", "deliveryMethod", "numberResults", "inputs"):
        task.pop(field, None)
    task.update(
        {
            "taskUUID": str(uuid.uuid4()),
            "model": call.route.model,
            "deliveryMethod": "stream",
            "numberResults": 1,
            "seed": call.seed,
            "includeUsage": True,
        }
    )
    if call.images:
        task["inputs"] = {"images": list(call.images)}
    return task


def _raise_for(errors: list[_Error]) -> None:
    code = errors[0].code if errors else ""
    if code in ("providerRateLimit", "rateLimitExceeded"):
        raise UpstreamRateLimited("The model provider is rate limiting requests.")
    if code == "timeoutProvider":
        raise UpstreamTimeout("The model provider timed out.")
    raise UpstreamServerError("The model provider failed while answering.")


def events_of(chunk: _Chunk) -> list[UpstreamEvent]:
    if chunk.errors:
        _raise_for(chunk.errors)
    found: list[UpstreamEvent] = []
    if chunk.delta is not None:
        if chunk.delta.reasoningContent:
            found.append(ReasoningDelta(chunk.delta.reasoningContent))
        if chunk.delta.text:
            found.append(TextDelta(chunk.delta.text))
    for index, tool in enumerate(chunk.toolCalls or ()):
        found.append(ToolCallDelta(index, tool.id, tool.name, json.dumps(tool.input)))
    if chunk.finishReason is not None:
        found.append(Finished(chunk.finishReason))
    if chunk.usage is not None:
        u = chunk.usage
        found.append(
            UsageReport(u.promptTokens, u.completionTokens, u.cachedTokens, u.thinkingTokens)
        )
    return found


class RunwareAdapter:
    name = "runware"

    def __init__(self, connect_timeout_s: float = 5.0):
        self._connect_timeout_s = connect_timeout_s

    async def stream(
        self, client: httpx.AsyncClient, call: UpstreamCall
    ) -> AsyncIterator[UpstreamEvent]:
        headers = {
            "Authorization": f"Bearer {call.api_key}",
            "Accept": "text/event-stream",
            **call.route.headers,
        }
        try:
            async with client.stream(
                "POST",
                call.route.base_url,
                json=[build_task(call)],
                headers=headers,
                timeout=request_timeout(call.route, self._connect_timeout_s),
            ) as response:
                if response.status_code >= 400:
                    await response.aclose()
                    raise error_for_status(response)
                finished = False
                async for sse in aiter_sse(response):
                    if sse.data == "[DONE]":
                        if not finished:
                            raise UpstreamStreamBroken("The model provider's stream ended early.")
                        return
                    try:
                        chunk = _Chunk.model_validate_json(sse.data)
                    except ValidationError as exc:
                        raise UpstreamStreamBroken(
                            "The model provider sent an unreadable stream event."
                        ) from exc
                    for event in events_of(chunk):
                        finished = finished or isinstance(event, Finished)
                        yield event
                raise UpstreamStreamBroken("The model provider's stream ended early.")
        except httpx.HTTPError as exc:
            raise error_for_transport(exc, streaming=True) from exc
