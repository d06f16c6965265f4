"""A Runware-style upstream (another Runware or taskwire endpoint): `textInference` tasks,
answered as a server-sent event stream or as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sim.generation import BadRequest, Generation, SimRequest, Usage, plan, usage_of
from sim.inputs import image_from_url
from sim.scenario import Scenario
from sim.timing import Pacer, _Flush


def split_tasks(body: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """(the key of a leading authentication task, the other tasks)."""
    tasks = body if isinstance(body, list) else [body]
    if not tasks or not all(isinstance(t, dict) for t in tasks):
        raise BadRequest("the body must be an array of task objects", "body")
    key = None
    if tasks[0].get("taskType") == "authentication":
        key = tasks[0].get("apiKey")
        tasks = tasks[1:]
    return key, tasks


def parse_task(task: dict[str, Any]) -> SimRequest:
    if task.get("taskType") != "textInference":
        raise BadRequest("only textInference is simulated", "taskType")
    messages = task.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages is required", "messages")
    texts: list[str] = []
    settings = task.get("settings") or {}
    if settings.get("systemPrompt"):
        texts.append(settings["systemPrompt"])
    texts += [str(m.get("content", "")) for m in messages if isinstance(m, dict)]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    prefill = last.get("content") if last.get("role") == "assistant" else None
    images = [image_from_url(i) for i in (task.get("inputs") or {}).get("images", [])]
    if task.get("numberResults", 1) != 1:
        raise BadRequest("the simulator answers one result per task", "numberResults")
    effort = settings.get("thinkingLevel")
    return SimRequest(
        texts=texts,
        images=images,
        seed=task.get("seed"),
        max_tokens=settings.get("maxTokens"),
        stop=list(settings.get("stopSequences") or []),
        reasoning_effort=None if effort in (None, "off") else effort,
        json_mode="object" if task.get("outputFormat") == "JSON" else None,
        prefill=prefill if isinstance(prefill, str) else None,
    )


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "totalTokens": usage.total_tokens,
        "thinkingTokens": usage.reasoning_tokens,
        "cachedTokens": usage.cached_tokens,
    }


def result_item(
    task: dict[str, Any], request: SimRequest, g: Generation, scenario: Scenario
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": task["taskUUID"],
        "resultIndex": 0,
        "status": "success",
        "text": "".join(g.tokens),
        "finishReason": g.finish_reason,
        "seed": request.seed,
    }
    if g.reasoning:
        item["reasoningContent"] = "".join(g.reasoning)
    if task.get("includeUsage"):
        item["usage"] = _usage(usage_of(request, [g], scenario))
    return item


async def stream_chunks(
    task: dict[str, Any], request: SimRequest, scenario: Scenario
) -> AsyncIterator[dict[str, Any] | str | _Flush]:
    [g] = plan(request, scenario)
    base = {"taskUUID": task["taskUUID"], "taskType": "textInference", "resultIndex": 0}
    deltas = [{"reasoningContent": r} for r in g.reasoning] + [{"text": t} for t in g.tokens]
    pacer = Pacer(scenario)
    await pacer.first()
    for emitted, delta in enumerate(deltas, start=1):
        yield {**base, "delta": delta}
        async for marker in pacer.step(emitted):
            yield marker
    final: dict[str, Any] = {**base, "delta": {}, "finishReason": g.finish_reason}
    if task.get("includeUsage"):
        final["usage"] = _usage(usage_of(request, [g], scenario))
    yield final
    yield "[DONE]"
