"""The OpenAI Responses API as the simulator speaks it (as OurToken and OpenAI serve it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sim.generation import BadRequest, Generation, SimRequest, Usage, plan, usage_of
from sim.inputs import read_content
from sim.scenario import Scenario
from sim.timing import Pacer, _Flush


def parse_request(body: dict[str, Any]) -> SimRequest:
    texts: list[str] = []
    images: list[Any] = []
    if isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    source = body.get("input")
    if isinstance(source, str):
        texts.append(source)
    elif isinstance(source, list):
        for item in source:
            if not isinstance(item, dict):
                raise BadRequest("input items must be objects", "input")
            kind = item.get("type", "message")
            if kind == "message":
                read_content(item.get("content"), texts, images)
            elif kind == "function_call_output":
                texts.append(str(item.get("output", "")))
            elif kind in ("function_call", "reasoning"):
                continue
            else:
                raise BadRequest(f"unsupported input item type {kind!r}", "input")
    else:
        raise BadRequest("input must be a string or an array of items", "input")
    if not texts:
        raise BadRequest("input is empty", "input")
    tools = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise BadRequest("tools must be function tools with a name", "tools")
        tools.append({"name": tool["name"], "parameters": tool.get("parameters") or {}})
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"name": choice.get("name")}
    text_format = ((body.get("text") or {}).get("format")) or {}
    json_mode = {"json_object": "object", "json_schema": "schema"}.get(text_format.get("type", ""))
    limit = body.get("max_output_tokens")
    if limit is not None and not isinstance(limit, int):
        raise BadRequest("max_output_tokens must be an integer", "max_output_tokens")
    effort = (body.get("reasoning") or {}).get("effort")
    return SimRequest(
        texts=texts,
        images=images,
        tools=tools,
        tool_choice=choice,
        json_mode=json_mode,
        json_schema=text_format.get("schema"),
        reasoning_effort=effort,
        seed=body.get("seed"),
        max_tokens=limit,
    )


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _output(g: Generation, ids: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if g.reasoning:
        items.append(
            {
                "type": "reasoning",
                "id": ids["reasoning"],
                "summary": [{"type": "summary_text", "text": "".join(g.reasoning)}],
            }
        )
    if g.tool_call:
        items.append(
            {
                "type": "function_call",
                "id": ids["call"],
                "call_id": g.tool_call.id,
                "name": g.tool_call.name,
                "arguments": g.tool_call.arguments,
                "status": "completed",
            }
        )
    else:
        items.append(
            {
                "type": "message",
                "id": ids["message"],
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "".join(g.tokens), "annotations": []}],
            }
        )
    return items


def _response(
    model: str, g: Generation, ids: dict[str, str], status: str, usage: Usage | None
) -> dict[str, Any]:
    incomplete = status == "incomplete"
    return {
        "id": ids["response"],
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": _output(g, ids) if status != "in_progress" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage_body(usage) if usage is not None else None,
    }


def _ids() -> dict[str, str]:
    return {
        name: f"{prefix}_{uuid.uuid4().hex[:24]}"
        for name, prefix in (
            ("response", "resp"),
            ("message", "msg"),
            ("reasoning", "rs"),
            ("call", "fc"),
        )
    }


def response_body(model: str, request: SimRequest, scenario: Scenario) -> dict[str, Any]:
    [g] = plan(request, scenario)
    status = "incomplete" if g.finish_reason == "length" else "completed"
    return _response(model, g, _ids(), status, usage_of(request, [g], scenario))


async def response_events(
    model: str, request: SimRequest, scenario: Scenario
) -> AsyncIterator[tuple[str, dict[str, Any]] | _Flush]:
    """The streamed form: (event name, data) pairs, ending with response.completed."""
    [g] = plan(request, scenario)
    ids = _ids()
    seq = iter(range(1_000_000))

    def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, "sequence_number": next(seq), **data}

    pacer = Pacer(scenario)
    await pacer.first()
    yield event("response.created", response=_response(model, g, ids, "in_progress", None))
    yield event("response.in_progress", response=_response(model, g, ids, "in_progress", None))
    steps: list[list[tuple[str, dict[str, Any]]]] = []
    index = 0
    if g.reasoning:
        item = {"type": "reasoning", "id": ids["reasoning"], "summary": []}
        opening = [
            event("response.output_item.added", output_index=index, item=item),
            event(
                "response.reasoning_summary_part.added",
                item_id=ids["reasoning"],
                output_index=index,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            ),
        ]
        steps += [opening]
        steps += [
            [
                event(
                    "response.reasoning_summary_text.delta",
                    item_id=ids["reasoning"],
                    output_index=index,
                    summary_index=0,
                    delta=piece,
                )
            ]
            for piece in g.reasoning
        ]
        full = _output(g, ids)[0]
        steps += [
            [
                event(
                    "response.reasoning_summary_text.done",
                    item_id=ids["reasoning"],
                    output_index=index,
                    summary_index=0,
                    text="".join(g.reasoning),
                ),
                event("response.output_item.done", output_index=index, item=full),
            ]
        ]
        index += 1
    if g.tool_call:
        call = g.tool_call
        item = {
            "type": "function_call",
            "id": ids["call"],
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        steps += [[event("response.output_item.added", output_index=index, item=item)]]
        steps += [
            [
                event(
                    "response.function_call_arguments.delta",
                    item_id=ids["call"],
                    output_index=index,
                    delta=call.arguments[i : i + 8],
                )
            ]
            for i in range(0, len(call.arguments), 8)
        ]
        steps += [
            [
                event(
                    "response.function_call_arguments.done",
                    item_id=ids["call"],
                    output_index=index,
                    arguments=call.arguments,
                ),
                event(
                    "response.output_item.done",
                    output_index=index,
                    item={**item, "arguments": call.arguments, "status": "completed"},
                ),
            ]
        ]
    else:
        item = {
            "type": "message",
            "id": ids["message"],
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        steps += [
            [
                event("response.output_item.added", output_index=index, item=item),
                event(
                    "response.content_part.added",
                    item_id=ids["message"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []},
                ),
            ]
        ]
        steps += [
            [
                event(
                    "response.output_text.delta",
                    item_id=ids["message"],
                    output_index=index,
                    content_index=0,
                    delta=token,
                    logprobs=[],
                )
            ]
            for token in g.tokens
        ]
        text = "".join(g.tokens)
        steps += [
            [
                event(
                    "response.output_text.done",
                    item_id=ids["message"],
                    output_index=index,
                    content_index=0,
                    text=text,
                    logprobs=[],
                ),
                event(
                    "response.content_part.done",
                    item_id=ids["message"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": text, "annotations": []},
                ),
                event("response.output_item.done", output_index=index, item=_output(g, ids)[-1]),
            ]
        ]
    for emitted, batch in enumerate(steps, start=1):
        for item_event in batch:
            yield item_event
        async for marker in pacer.step(emitted):
            yield marker
    status = "incomplete" if g.finish_reason == "length" else "completed"
    final = "response.incomplete" if status == "incomplete" else "response.completed"
    yield event(final, response=_response(model, g, ids, status, usage_of(request, [g], scenario)))
