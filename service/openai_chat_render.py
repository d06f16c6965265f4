"""A task's stored events and results in Chat Completions' shapes: the `chat.completion`
body, and `chat.completion.chunk` server-sent events (beside service/streaming.py's
ChunkRenderer, which renders the same events in the Runware format).

Choice i is result i. Reasoning is shown as `reasoning_content` (the field vLLM, DeepSeek
and OpenRouter-style servers use); tool calls keep their upstream ids, their arguments the
JSON text of the call's input.
"""

from __future__ import annotations

import json
from typing import Any

from core.contract import Delta, ErrorItem, ResultItem, SuccessItem, Usage
from core.events import Event
from service.openai_common import result_error, sse_data

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}


def finish_reason(item: SuccessItem) -> str:
    return item.finish_reason if item.finish_reason in FINISH_REASONS else "stop"


def usage_body(usages: list[Usage]) -> dict[str, Any]:
    """Usage summed over the results (each result is an upstream call of its own)."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in usages)},
        "completion_tokens_details": {"reasoning_tokens": sum(u.thinking_tokens for u in usages)},
    }


def tool_calls(item: SuccessItem, *, indexed: bool = False) -> list[dict[str, Any]]:
    calls = []
    for k, call in enumerate(item.tool_calls):
        shown: dict[str, Any] = {"index": k} if indexed else {}
        shown.update(
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.input)},
            }
        )
        calls.append(shown)
    return calls


def completion_body(
    completion_id: str, model: str, created: int, n: int, results: dict[int, ResultItem]
) -> dict[str, Any]:
    """The `chat.completion` of a task whose results are all final. Every result failed: the
    first one's error is raised (OpenAIError); a failed result among successful ones is a
    choice with `finish_reason: "error"` and its `error`."""
    items = [results[i] for i in range(n)]
    if all(isinstance(item, ErrorItem) for item in items):
        first = items[0]
        assert isinstance(first, ErrorItem)
        raise result_error(first.code, first.message)
    choices = []
    usages = []
    for i, item in enumerate(items):
        if isinstance(item, ErrorItem):
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": None, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "error",
                    "error": result_error(item.code, item.message).body()["error"],
                }
            )
            continue
        message: dict[str, Any] = {
            "role": "assistant",
            "content": item.text if item.text or not item.tool_calls else None,
            "refusal": None,
        }
        if item.reasoning:
            message["reasoning_content"] = item.reasoning
        if item.tool_calls:
            message["tool_calls"] = tool_calls(item)
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(item),
            }
        )
        if item.usage is not None:
            usages.append(item.usage)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_body(usages),
        "system_fingerprint": None,
    }


class ChatChunks:
    """Stored task events → `chat.completion.chunk` events, then (with include_usage) one
    usage chunk and `data: [DONE]`. A failed result is an `{"error": …}` event, which
    OpenAI's SDKs raise as an APIError."""

    def __init__(self, completion_id: str, model: str, created: int, n: int, include_usage: bool):
        self.completion_id = completion_id
        self.model = model
        self.created = created
        self.n = n
        self.include_usage = include_usage
        self.finished: set[int] = set()
        self._started: set[int] = set()
        self._attempt: dict[int, int] = {}
        self._usages: list[Usage] = []

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.n

    def opening(self) -> list[bytes]:
        return []

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **delta}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_data(
            {
                "id": self.completion_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [choice],
            }
        )

    def render(self, event: Event) -> list[bytes]:
        body = event.body
        if body is None:
            return []
        index = body.index
        if not 0 <= index < self.n or index in self.finished:
            return []
        if body.attempt < self._attempt.get(index, 0):
            return []  # an older attempt's late delta (a re-run published as newer)
        self._attempt[index] = body.attempt
        if isinstance(body, Delta):
            delta: dict[str, Any] = {}
            if body.reasoning:
                delta["reasoning_content"] = body.reasoning
            if body.text:
                delta["content"] = body.text
            return [self._chunk(index, delta)] if delta else []
        self.finished.add(index)
        item = body.item
        if isinstance(item, ErrorItem):
            return [sse_data(result_error(item.code, item.message).body())]
        frames = []
        if item.tool_calls:
            frames.append(self._chunk(index, {"tool_calls": tool_calls(item, indexed=True)}))
        frames.append(self._chunk(index, {}, finish_reason(item)))
        if item.usage is not None:
            self._usages.append(item.usage)
        return frames

    def closing(self) -> list[bytes]:
        frames = []
        if self.include_usage:
            frames.append(
                sse_data(
                    {
                        "id": self.completion_id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": usage_body(self._usages),
                    }
                )
            )
        frames.append(b"data: [DONE]\n\n")
        return frames
