"""A Runware-compatible upstream (another Runware or taskwire): `textInference` streamed."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.errors import (
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from worker.providers.base import (
    Finished,
    ReasoningDelta,
    SSEAdapter,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UpstreamEvent,
    UsageReport,
    parse_model,
)


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


class _Item(_Loose):
    text: str | None = None
    reasoningContent: str | None = None
    finishReason: str | None = None
    usage: _Usage | None = None
    toolCalls: list[_ToolCall] | None = None


class _Answer(_Loose):
    data: list[_Item] = []
    errors: list[_Error] | None = None


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


def events_of_data(data: str) -> list[UpstreamEvent]:
    return events_of(parse_model(_Chunk, data, "stream event"))


def events_of_answer(raw: bytes) -> list[UpstreamEvent]:
    """A sync answer (`{"data": [item]}`), from an upstream that did not stream."""
    answer = parse_model(_Answer, raw, "answer")
    if answer.errors:
        _raise_for(answer.errors)
    if not answer.data:
        raise UpstreamStreamBroken("The model provider sent an empty answer.")
    item = answer.data[0]
    events: list[UpstreamEvent] = []
    if item.reasoningContent:
        events.append(ReasoningDelta(item.reasoningContent))
    if item.text:
        events.append(TextDelta(item.text))
    return events + events_of(
        _Chunk(
            finishReason=item.finishReason or "unknown", usage=item.usage, toolCalls=item.toolCalls
        )
    )


def runware_adapter(connect_timeout_s: float = 5.0) -> SSEAdapter:
    """The route's base URL is the task endpoint itself (as https://api.runware.ai/v1)."""
    return SSEAdapter(
        "runware",
        "",
        lambda call: [build_task(call)],
        events_of_data,
        events_of_answer,
        connect_timeout_s,
    )
