"""OpenAI Chat Completions upstream (OpenAI, Vivgrid, OpenRouter, compatible servers), streamed."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.errors import UpstreamStreamBroken
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


class _Function(_Loose):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(_Loose):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _ReasoningDetail(_Loose):
    type: str = ""
    text: str | None = None
    summary: str | None = None


class _Delta(_Loose):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    reasoning_details: list[_ReasoningDetail] | None = None  # OpenRouter
    tool_calls: list[_ToolCall] | None = None

    def reasoning_text(self) -> str | None:
        if self.reasoning or self.reasoning_content:
            return self.reasoning or self.reasoning_content
        pieces = [
            d.text or d.summary or ""
            for d in self.reasoning_details or ()
            if d.type in ("reasoning.text", "reasoning.summary")
        ]
        return "".join(pieces) or None


class _Choice(_Loose):
    index: int = 0
    delta: _Delta | None = None
    message: _Delta | None = None
    finish_reason: str | None = None


class _PromptDetails(_Loose):
    cached_tokens: int | None = 0


class _CompletionDetails(_Loose):
    reasoning_tokens: int | None = 0


class _Usage(_Loose):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Chunk(_Loose):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


def build_messages(task: TextInferenceTask, images: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Runware messages as Chat Completions messages: system text folded into one message,
    images as `image_url` parts of the last user message."""
    system = system_text(task)
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    with_images = last_user_index(task) if images else -1
    for index, message in enumerate(task.messages):
        if message.role == "system":
            continue
        converted = _message(message)
        if index == with_images:
            converted["content"] = [
                {"type": "text", "text": message.content},
                *({"type": "image_url", "image_url": {"url": url}} for url in images),
            ]
        out.append(converted)
    return out


def reasoning_fields(call: UpstreamCall) -> dict[str, Any]:
    """thinkingLevel in the route's dialect (none when the client did not set it)."""
    level = call.task.settings.thinkingLevel
    style = call.route.reasoning_style
    if level is None or style == "none":
        return {}
    if style == "openrouter":
        return {"reasoning": {"enabled": False} if level == "off" else {"effort": level}}
    return {"reasoning_effort": "none" if level == "off" else level}


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.id, "content": message.content}
    if message.role == "assistant" and message.tools:
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.input)},
                }
                for call in message.tools
            ],
        }
    return {"role": message.role, "content": message.content}


def build_body(call: UpstreamCall) -> dict[str, Any]:
    task, settings = call.task, call.task.settings
    # providerSettings pass through, but the fields taskwire sets (how it streams, the model,
    # the mapped settings) are ours.
    body: dict[str, Any] = dict(task.providerSettings or {})
    body.update(
        {
            "model": call.route.model,
            "messages": build_messages(task, call.images),
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "seed": call.seed,
            call.route.max_tokens_param: settings.maxTokens,
            "temperature": settings.temperature,
            "top_p": settings.topP,
        }
    )
    body.update(reasoning_fields(call))
    if settings.stopSequences:
        body["stop"] = list(settings.stopSequences)
    if settings.frequencyPenalty is not None:
        body["frequency_penalty"] = settings.frequencyPenalty
    if settings.presencePenalty is not None:
        body["presence_penalty"] = settings.presencePenalty
    tools = task.effective_tools
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in tools
        ]
    choice = task.effective_tool_choice
    if choice is not None:
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}}
            if choice.type == "tool"
            else {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        )
    if task.outputFormat == "JSON":
        body["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "output", "schema": task.jsonSchema}}
            if task.jsonSchema is not None
            else {"type": "json_object"}
        )
    return body


def events_of_chunk(chunk: _Chunk) -> list[UpstreamEvent]:
    events: list[UpstreamEvent] = []
    for choice in chunk.choices:
        if choice.index != 0:
            continue
        delta = choice.delta or choice.message
        if delta is not None:
            reasoning = delta.reasoning_text()
            if reasoning:
                events.append(ReasoningDelta(reasoning))
            if delta.content:
                events.append(TextDelta(delta.content))
            for tool in delta.tool_calls or ():
                function = tool.function or _Function()
                events.append(
                    ToolCallDelta(tool.index, tool.id, function.name, function.arguments or "")
                )
        if choice.finish_reason is not None:
            events.append(Finished(choice.finish_reason))
    if chunk.usage is not None:
        usage = chunk.usage
        events.append(
            UsageReport(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=(usage.prompt_tokens_details or _PromptDetails()).cached_tokens or 0,
                reasoning_tokens=(
                    usage.completion_tokens_details or _CompletionDetails()
                ).reasoning_tokens
                or 0,
            )
        )
    return events


def parse_completion(raw: bytes) -> list[UpstreamEvent]:
    """Events of a whole (non-streamed) chat completion body."""
    return events_of_chunk(parse_model(_Chunk, raw, "answer"))


def events_of_data(data: str) -> list[UpstreamEvent]:
    chunk = parse_model(_Chunk, data, "stream event")
    if chunk.error is not None:
        raise UpstreamStreamBroken("The model provider failed mid-stream.")
    return events_of_chunk(chunk)


def chat_adapter(connect_timeout_s: float = 5.0) -> SSEAdapter:
    return SSEAdapter(
        "openai-chat",
        "/chat/completions",
        build_body,
        events_of_data,
        parse_completion,
        connect_timeout_s,
    )
