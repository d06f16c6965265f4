"""The Chat Completions adapter: request mapping and stream parsing, at the network edge
(httpx.MockTransport), including every error class."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from core.catalog import Route
from core.errors import (
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from core.protocol import TextInferenceTask
from worker.providers.base import (
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamCall,
    UsageReport,
)
from worker.providers.openai_chat import build_body, chat_adapter

ROUTE = Route(
    name="r",
    adapter="openai-chat",
    base_url="http://upstream.test/v1",
    model="gpt-5.4-mini",
    api_key_env="K",
    headers={"X-Title": "taskwire"},
)


def make_task(**fields) -> TextInferenceTask:
    raw = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw.update(fields)
    return TextInferenceTask.model_validate(raw)


def sse(*events: dict | str) -> bytes:
    out = []
    for event in events:
        out.append("data: " + (event if isinstance(event, str) else json.dumps(event)) + "\n\n")
    return "".join(out).encode()


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    body: dict = {"object": "chat.completion.chunk", "choices": []}
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body


async def collect(handler: Callable[[httpx.Request], httpx.Response], task=None, route=ROUTE):
    seen: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(recording)) as client:
        call = UpstreamCall(
            route=route, api_key="upstream-secret", task=task or make_task(), seed=7
        )
        events = [event async for event in chat_adapter().stream(client, call)]
    return events, seen


def stream_response(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _request: httpx.Response(
        status, content=body, headers={"content-type": "text/event-stream"}
    )


async def test_stream_events_in_order_with_usage() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "think"}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        chunk(
            usage={
                "prompt_tokens": 5,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 1},
            }
        ),
        "[DONE]",
    )
    events, [request] = await collect(stream_response(body))
    assert events == [
        ReasoningDelta("think"),
        TextDelta("Hel"),
        TextDelta("lo"),
        Finished("stop"),
        UsageReport(prompt_tokens=5, completion_tokens=3, cached_tokens=2, reasoning_tokens=1),
    ]
    assert request.url == "http://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer upstream-secret"
    assert request.headers["x-title"] == "taskwire"


async def test_tool_call_fragments() -> None:
    body = sse(
        chunk(
            {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        chunk({}, "tool_calls"),
        "[DONE]",
    )
    events, _ = await collect(stream_response(body))
    assert events == [
        ToolCallDelta(0, "c1", "f", ""),
        ToolCallDelta(0, None, None, '{"a":'),
        ToolCallDelta(0, None, None, "1}"),
        Finished("tool_calls"),
    ]


async def test_request_body_maps_every_setting() -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "d",
        "schema": {"type": "object"},
    }
    task = make_task(
        messages=[
            {"role": "system", "content": "sys2"},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "tools": [{"id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}],
            },
            {"role": "tool", "id": "c1", "content": "sunny"},
        ],
        settings={
            "systemPrompt": "sys1",
            "temperature": 0.2,
            "topP": 0.5,
            "maxTokens": 99,
            "stopSequences": ["END"],
            "frequencyPenalty": 0.1,
            "presencePenalty": -0.1,
        },
        tools=[tool],
        toolChoice={"type": "tool", "name": "get_weather"},
        outputFormat="JSON",
        jsonSchema={"type": "object"},
        providerSettings={"top_k": 3, "stream": False, "model": "evil"},
    )
    body = build_body(UpstreamCall(route=ROUTE, api_key="k", task=task, seed=11))
    assert body["model"] == "gpt-5.4-mini"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["top_k"] == 3  # passed through
    assert body["seed"] == 11 and body["n"] == 1
    assert body["max_completion_tokens"] == 99
    assert body["temperature"] == 0.2 and body["top_p"] == 0.5
    assert body["stop"] == ["END"]
    assert body["frequency_penalty"] == 0.1 and body["presence_penalty"] == -0.1
    assert body["messages"] == [
        {"role": "system", "content": "sys1\n\nsys2"},
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "d",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}},
    }
    max_tokens_route = ROUTE.model_copy(update={"max_tokens_param": "max_tokens"})
    body = build_body(UpstreamCall(route=max_tokens_route, api_key="k", task=make_task(), seed=1))
    assert body["max_tokens"] == 4096 and "max_completion_tokens" not in body


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"retry-after": "3"}, UpstreamRateLimited, 3.0),
        (503, {"retry-after": "1"}, UpstreamServerError, 1.0),
        (500, {}, UpstreamServerError, None),
        (504, {}, UpstreamTimeout, None),
        (401, {}, UpstreamRejected, None),
        (400, {}, UpstreamRejected, None),
    ],
)
async def test_error_statuses(status, headers, error, retry_after) -> None:
    secret_body = b'{"error":{"message":"org-SECRET-123 sk-live-abc"}}'
    handler = lambda _r: httpx.Response(status, content=secret_body, headers=headers)  # noqa: E731
    with pytest.raises(error) as caught:
        await collect(handler)
    assert caught.value.http_status == status
    assert caught.value.retry_after == retry_after
    assert "SECRET" not in caught.value.message and "sk-live" not in caught.value.message


async def test_stream_without_done_or_finish_is_broken() -> None:
    with pytest.raises(UpstreamStreamBroken):
        await collect(stream_response(sse(chunk({"content": "partial"}))))
    with pytest.raises(UpstreamStreamBroken):
        await collect(stream_response(sse(chunk({"content": "partial"}), "[DONE]")))


async def test_garbled_event_is_broken() -> None:
    with pytest.raises(UpstreamStreamBroken):
        await collect(stream_response(b"data: {not json\n\n"))


async def test_mid_stream_error_event() -> None:
    body = sse(chunk({"content": "a"}), {"error": {"message": "overloaded"}})
    with pytest.raises(UpstreamStreamBroken):
        await collect(stream_response(body))


async def test_whole_json_answer_is_accepted() -> None:
    completion = {
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    handler = lambda _r: httpx.Response(200, json=completion)  # noqa: E731
    events, _ = await collect(handler)
    assert events == [TextDelta("Hi"), Finished("stop"), UsageReport(1, 1)]


async def test_transport_failures() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamTimeout):
        await collect(timeout)
    with pytest.raises(UpstreamUnreachable):
        await collect(refused)
