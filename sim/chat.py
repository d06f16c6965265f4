"""OpenAI Chat Completions as the simulator speaks it (OpenRouter's reasoning fields too)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sim.generation import (
    BadRequest,
    Generation,
    SimRequest,
    Usage,
    usage_of,
)
from sim.inputs import read_content
from sim.scenario import Scenario
from sim.timing import Pacer, _Flush


def parse_request(body: dict[str, Any]) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array", "messages")
    texts: list[str] = []
    images: list[Any] = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest("each message needs a role", "messages")
        read_content(message.get("content"), texts, images)
    last = messages[-1]
    prefill = last.get("content") if last["role"] == "assistant" else None
    tools = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            raise BadRequest("tools must be function tools with a name", "tools")
        tools.append({"name": function["name"], "parameters": function.get("parameters") or {}})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"name": (choice.get("function") or {}).get("name")}
    response_format = body.get("response_format") or {}
    json_mode = {"json_object": "object", "json_schema": "schema"}.get(
        response_format.get("type", "")
    )
    schema = (response_format.get("json_schema") or {}).get("schema")
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):  # OpenRouter's reasoning object
        effort = "none" if reasoning.get("enabled") is False else reasoning.get("effort", "medium")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise BadRequest("seed must be an integer", "seed")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and not isinstance(limit, int):
        raise BadRequest("max_completion_tokens must be an integer", "max_completion_tokens")
    stop = body.get("stop") or []
    n = body.get("n", 1)
    if not isinstance(n, int):
        raise BadRequest("n must be an integer", "n")
    return SimRequest(
        texts=texts,
        images=images,
        tools=tools,
        tool_choice=choice,
        json_mode=json_mode,
        json_schema=schema,
        reasoning_effort=effort,
        seed=seed,
        n=n,
        max_tokens=limit,
        stop=[stop] if isinstance(stop, str) else list(stop),
        prefill=prefill if isinstance(prefill, str) and texts else None,
    )


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_calls(g: Generation) -> list[dict[str, Any]]:
    assert g.tool_call is not None
    return [
        {
            "id": g.tool_call.id,
            "type": "function",
            "function": {"name": g.tool_call.name, "arguments": g.tool_call.arguments},
        }
    ]


def completion_body(
    model: str, request: SimRequest, generations: list[Generation], scenario: Scenario
) -> dict[str, Any]:
    choices = []
    for g in generations:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(g.tokens) if not g.tool_call else None,
            "refusal": None,
        }
        if g.tool_call:
            message["tool_calls"] = _tool_calls(g)
        if g.reasoning:
            message["reasoning"] = "".join(g.reasoning)
        choices.append(
            {
                "index": g.index,
                "message": message,
                "logprobs": None,
                "finish_reason": g.finish_reason,
            }
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_taskwire_sim",
        "choices": choices,
        "usage": usage_body(usage_of(request, generations, scenario)),
    }


async def completion_chunks(
    model: str,
    request: SimRequest,
    generations: list[Generation],
    scenario: Scenario,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any] | str | _Flush]:
    """The streamed form: `chat.completion.chunk` objects, then "[DONE]"."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_taskwire_sim",
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            **base,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if include_usage:
            body["usage"] = None
        return body

    # Each generation as a list of deltas, interleaved across choices step by step.
    steps: list[list[dict[str, Any]]] = []
    for g in generations:
        deltas: list[dict[str, Any]] = [
            {"reasoning": r, "reasoning_details": [{"type": "reasoning.text", "text": r}]}
            for r in g.reasoning
        ]
        if g.tool_call:
            call = g.tool_call
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                for piece in _pieces(call.arguments)
            ]
        deltas += [{"content": token} for token in g.tokens]
        steps.append(deltas)
    pacer = Pacer(scenario)
    await pacer.first()
    for g in generations:
        yield chunk(g.index, {"role": "assistant", "content": "", "refusal": None})
    longest = max((len(s) for s in steps), default=0)
    for emitted, step in enumerate(range(longest), start=1):
        for g, deltas in zip(generations, steps, strict=True):
            if step < len(deltas):
                yield chunk(g.index, deltas[step])
        async for marker in pacer.step(emitted):
            yield marker
    for g in generations:
        yield chunk(g.index, {}, g.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": usage_body(usage_of(request, generations, scenario))}
    yield "[DONE]"


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
