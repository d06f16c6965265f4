"""OpenAI Responses API upstream (OurToken, OpenAI), streamed."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.errors import UpstreamRateLimited, UpstreamServerError
from core.protocol import Message, TextInferenceTask
from worker.providers.base import (
    Finished,
    ReasoningDelta,
    SSEAdapter,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UpstreamEvent,
    UsageReport,
    last_user_index,
    parse_model,
    system_text,
)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TokenDetails(_Loose):
    cached_tokens: int | None = 0
    reasoning_tokens: int | None = 0


class _Usage(_Loose):
    """Official names (input_tokens…) and the chat-style names some hosts report."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens_details: _TokenDetails | None = None
    output_tokens_details: _TokenDetails | None = None
    prompt_tokens_details: _TokenDetails | None = None
    completion_tokens_details: _TokenDetails | None = None

    def report(self) -> UsageReport:
        inputs = self.input_tokens_details or self.prompt_tokens_details or _TokenDetails()
        outputs = self.output_tokens_details or self.completion_tokens_details or _TokenDetails()
        return UsageReport(
            prompt_tokens=self.input_tokens or self.prompt_tokens or 0,
            completion_tokens=self.output_tokens or self.completion_tokens or 0,
            cached_tokens=inputs.cached_tokens or 0,
            reasoning_tokens=outputs.reasoning_tokens or 0,
        )


class _Content(_Loose):
    type: str = ""
    text: str | None = None


class _Summary(_Loose):
    text: str | None = None


class _Item(_Loose):
    type: str = ""
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    content: list[_Content] = []
    summary: list[_Summary] = []


class _Incomplete(_Loose):
    reason: str | None = None


class _Response(_Loose):
    status: str | None = None
    output: list[_Item] = []
    usage: _Usage | None = None
    incomplete_details: _Incomplete | None = None


class _Event(_Loose):
    type: str
    delta: str | None = None
    output_index: int = 0
    item: _Item | None = None
    response: _Response | None = None
    code: str | None = None


def _input_items(task: TextInferenceTask, images: tuple[str, ...]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    with_images = last_user_index(task) if images else -1
    for index, message in enumerate(task.messages):
        if message.role == "system":
            continue
        items.extend(_items_of(message, images if index == with_images else ()))
    return items


def _items_of(message: Message, images: tuple[str, ...]) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "function_call_output", "call_id": message.id, "output": message.content}]
    if message.role == "assistant":
        items: list[dict[str, Any]] = []
        if message.content:
            items.append({"role": "assistant", "content": message.content})
        items += [
            {
                "type": "function_call",
                "call_id": call.id,
                "name": call.name,
                "arguments": json.dumps(call.input),
            }
            for call in message.tools or ()
        ]
        return items
    content: list[dict[str, Any]] = [{"type": "input_text", "text": message.content}]
    content += [{"type": "input_image", "image_url": url} for url in images]
    return [{"role": "user", "content": content}]


def build_body(call: UpstreamCall) -> dict[str, Any]:
    task, settings = call.task, call.task.settings
    body: dict[str, Any] = dict(task.providerSettings or {})
    body.update(
        {
            "model": call.route.model,
            "input": _input_items(task, call.images),
            "stream": True,
            "max_output_tokens": settings.maxTokens,
            "temperature": settings.temperature,
            "top_p": settings.topP,
        }
    )
    instructions = system_text(task)
    if instructions:
        body["instructions"] = instructions
    if settings.thinkingLevel is not None:
        effort = "none" if settings.thinkingLevel == "off" else settings.thinkingLevel
        body["reasoning"] = {"effort": effort}
    tools = task.effective_tools
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
            }
            for t in tools
        ]
    choice = task.effective_tool_choice
    if choice is not None:
        body["tool_choice"] = (
            {"type": "function", "name": choice.name}
            if choice.type == "tool"
            else {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        )
    if task.outputFormat == "JSON":
        body["text"] = {
            "format": (
                {"type": "json_schema", "name": "output", "schema": task.jsonSchema}
                if task.jsonSchema is not None
                else {"type": "json_object"}
            )
        }
    return body


def _finish(response: _Response) -> Finished:
    if response.status == "incomplete":
        reason = (response.incomplete_details or _Incomplete()).reason
        return Finished("length" if reason == "max_output_tokens" else reason or "unknown")
    if any(item.type == "function_call" for item in response.output):
        return Finished("tool_calls")
    return Finished("stop")


def events_of(event: _Event) -> list[UpstreamEvent]:
    kind = event.type
    if kind == "response.output_text.delta" and event.delta:
        return [TextDelta(event.delta)]
    if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta") and (
        event.delta
    ):
        return [ReasoningDelta(event.delta)]
    if kind == "response.output_item.added" and event.item and event.item.type == "function_call":
        return [ToolCallDelta(event.output_index, event.item.call_id, event.item.name, "")]
    if kind == "response.function_call_arguments.delta" and event.delta:
        return [ToolCallDelta(event.output_index, arguments=event.delta)]
    if kind in ("response.completed", "response.incomplete") and event.response is not None:
        found: list[UpstreamEvent] = [_finish(event.response)]
        if event.response.usage is not None:
            found.append(event.response.usage.report())
        return found
    if kind in ("response.failed", "error"):
        if event.code in ("rate_limit_exceeded", "rate_limit_error"):
            raise UpstreamRateLimited("The model provider is rate limiting requests.")
        raise UpstreamServerError("The model provider failed while answering.")
    return []


def events_of_response(raw: bytes) -> list[UpstreamEvent]:
    """Events of a whole (non-streamed) Responses API answer."""
    response = parse_model(_Response, raw, "answer")
    found: list[UpstreamEvent] = []
    for index, item in enumerate(response.output):
        if item.type == "reasoning":
            found += [ReasoningDelta(s.text) for s in item.summary if s.text]
        elif item.type == "message":
            found += [TextDelta(c.text) for c in item.content if c.type == "output_text" and c.text]
        elif item.type == "function_call":
            found.append(ToolCallDelta(index, item.call_id, item.name, item.arguments or ""))
    found.append(_finish(response))
    if response.usage is not None:
        found.append(response.usage.report())
    return found


def events_of_data(data: str) -> list[UpstreamEvent]:
    return events_of(parse_model(_Event, data, "stream event"))


def responses_adapter(connect_timeout_s: float = 5.0) -> SSEAdapter:
    return SSEAdapter(
        "openai-responses",
        "/responses",
        build_body,
        events_of_data,
        events_of_response,
        connect_timeout_s,
    )
