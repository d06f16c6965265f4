"""A task's stored events in the Responses API's shapes: the `response` object (what a
create, a poll or a cancel answers) and its streaming events.

Every streaming event's `sequence_number` is its position in the rendering of the task's
stored events from the first, so a stream resumed with `starting_after=N` (rendered again
from the start, emitting only what follows N) numbers each event as the first stream did,
whichever process renders it. The `response` object's fields other than the output come
from the stored task request, so a poll shows what the create answered.
"""

from __future__ import annotations

import json
from typing import Any

from core.contract import Delta, ErrorItem, ResultItem, SuccessItem, Usage
from core.events import Event
from service.openai_common import snake, sse_data

# taskwire's thinkingLevel back as a reasoning effort
EFFORT_OF_LEVEL = {"off": "none", "low": "low", "medium": "medium", "high": "high"}


def response_id(task_uuid: str) -> str:
    return "resp_" + task_uuid.replace("-", "")


def usage_body(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def request_fields(request: dict[str, Any]) -> dict[str, Any]:
    """The response's echo of its request, from the stored task."""
    settings = request.get("settings") or {}
    tools = [
        {
            "type": "function",
            "name": tool.get("name"),
            "description": tool.get("description") or None,
            "parameters": tool.get("schema", tool.get("parameters")),
            "strict": False,
        }
        for tool in request.get("tools") or settings.get("tools") or []
    ]
    choice = request.get("toolChoice") or settings.get("toolChoice")
    tool_choice: Any = "auto"
    if choice is not None:
        kind = choice.get("type")
        tool_choice = (
            {"type": "function", "name": choice.get("name")}
            if kind == "tool"
            else {"any": "required"}.get(kind, kind)
        )
    fmt: dict[str, Any] = {"type": "text"}
    if request.get("outputFormat") == "JSON":
        schema = request.get("jsonSchema")
        fmt = (
            {"type": "json_schema", "name": "output", "schema": schema, "strict": False}
            if schema is not None
            else {"type": "json_object"}
        )
    level = settings.get("thinkingLevel")
    return {
        "instructions": settings.get("systemPrompt"),
        "max_output_tokens": settings.get("maxTokens"),
        "temperature": settings.get("temperature", 1.0),
        "top_p": settings.get("topP", 0.95),
        "tools": tools,
        "tool_choice": tool_choice,
        "text": {"format": fmt},
        "reasoning": {"effort": EFFORT_OF_LEVEL.get(level) if level else None, "summary": None},
        "parallel_tool_calls": True,
        "metadata": {},
        "background": request.get("deliveryMethod") == "async",
    }


class ResponseRenderer:
    """One task's events → the Responses API's stream events and `response` snapshots.
    `starting_after` hides the events a resuming client already has."""

    def __init__(
        self,
        task_uuid: str,
        request: dict[str, Any],
        created_ms: float,
        *,
        starting_after: int = -1,
    ):
        self.id = response_id(task_uuid)
        self._hex = task_uuid.replace("-", "")
        self.model = str(request.get("model", ""))
        self.created_at = int(created_ms // 1000)
        self.fields = request_fields(request)
        self.starting_after = starting_after
        self.seq = 0
        self.reasoning = ""
        self.text = ""
        self.phase: str | None = None  # None, "reasoning", "message"
        self.indexes: dict[str, int] = {}
        self.attempt = 0
        self.seen = False
        self.final: ResultItem | None = None

    # --- the response object

    @property
    def done(self) -> bool:
        return self.final is not None

    def status(self) -> str:
        item = self.final
        if item is None:
            return "in_progress" if self.seen else "queued"
        if isinstance(item, ErrorItem):
            return "cancelled" if item.code == "taskCancelled" else "failed"
        return "incomplete" if item.finish_reason in ("length", "content_filter") else "completed"

    def output(self) -> list[dict[str, Any]]:
        item = self.final
        if isinstance(item, ErrorItem):
            return []
        done = isinstance(item, SuccessItem)
        reasoning = item.reasoning if isinstance(item, SuccessItem) else self.reasoning
        text = item.text if isinstance(item, SuccessItem) else self.text
        out: list[dict[str, Any]] = []
        if reasoning:
            out.append(self._reasoning_item(reasoning))
        if text or (done and not (isinstance(item, SuccessItem) and item.tool_calls)):
            out.append(self._message_item(text, "completed" if done else "in_progress"))
        if isinstance(item, SuccessItem):
            out += [self._call_item(k, item) for k in range(len(item.tool_calls))]
        return out

    def snapshot(self, status: str | None = None) -> dict[str, Any]:
        item = self.final
        shown = status or self.status()
        error = None
        incomplete = None
        if isinstance(item, ErrorItem) and shown == "failed":
            error = {"code": snake(item.code), "message": item.message}
        if isinstance(item, SuccessItem) and shown == "incomplete":
            reason = "max_output_tokens" if item.finish_reason == "length" else "content_filter"
            incomplete = {"reason": reason}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": shown,
            "model": self.model,
            "output": self.output(),
            "error": error,
            "incomplete_details": incomplete,
            "usage": usage_body(item.usage) if isinstance(item, SuccessItem) else None,
            **self.fields,
        }

    def _reasoning_item(self, text: str) -> dict[str, Any]:
        return {
            "type": "reasoning",
            "id": f"rs_{self._hex}",
            "summary": [{"type": "summary_text", "text": text}],
        }

    def _message_item(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        return {
            "type": "message",
            "id": f"msg_{self._hex}",
            "status": status,
            "role": "assistant",
            "content": content if status == "completed" or text else [],
        }

    def _call_item(self, k: int, item: SuccessItem, arguments: str | None = None) -> dict[str, Any]:
        call = item.tool_calls[k]
        return {
            "type": "function_call",
            "id": f"fc_{self._hex}_{k}",
            "call_id": call.id,
            "name": call.name,
            "arguments": json.dumps(call.input) if arguments is None else arguments,
            "status": "completed" if arguments is None else "in_progress",
        }

    # --- streaming events

    def _emit(self, kind: str, **fields: Any) -> list[bytes]:
        seq = self.seq
        self.seq += 1
        if seq <= self.starting_after:
            return []
        return [sse_data({"type": kind, "sequence_number": seq, **fields}, event=kind)]

    def opening(self) -> list[bytes]:
        return self._emit("response.created", response=self.snapshot("queued")) + self._emit(
            "response.in_progress", response=self.snapshot("in_progress")
        )

    def closing(self) -> list[bytes]:
        return []

    def _index(self, name: str) -> int:
        return self.indexes.setdefault(name, len(self.indexes))

    def _open_reasoning(self) -> list[bytes]:
        self.phase = "reasoning"
        index = self._index("reasoning")
        return self._emit(
            "response.output_item.added",
            output_index=index,
            item={"type": "reasoning", "id": f"rs_{self._hex}", "summary": []},
        ) + self._emit(
            "response.reasoning_summary_part.added",
            item_id=f"rs_{self._hex}",
            output_index=index,
            summary_index=0,
            part={"type": "summary_text", "text": ""},
        )

    def _close_reasoning(self) -> list[bytes]:
        index = self.indexes["reasoning"]
        item_id = f"rs_{self._hex}"
        part = {"type": "summary_text", "text": self.reasoning}
        return (
            self._emit(
                "response.reasoning_summary_text.done",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                text=self.reasoning,
            )
            + self._emit(
                "response.reasoning_summary_part.done",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part=part,
            )
            + self._emit(
                "response.output_item.done",
                output_index=index,
                item=self._reasoning_item(self.reasoning),
            )
        )

    def _open_message(self) -> list[bytes]:
        frames = self._close_reasoning() if self.phase == "reasoning" else []
        self.phase = "message"
        index = self._index("message")
        return (
            frames
            + self._emit(
                "response.output_item.added",
                output_index=index,
                item=self._message_item("", "in_progress"),
            )
            + self._emit(
                "response.content_part.added",
                item_id=f"msg_{self._hex}",
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        )

    def _text_delta(self, text: str) -> list[bytes]:
        frames = self._open_message() if self.phase != "message" else []
        self.text += text
        return frames + self._emit(
            "response.output_text.delta",
            item_id=f"msg_{self._hex}",
            output_index=self.indexes["message"],
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _close_message(self) -> list[bytes]:
        index = self.indexes["message"]
        item_id = f"msg_{self._hex}"
        part = {"type": "output_text", "text": self.text, "annotations": []}
        return (
            self._emit(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=self.text,
                logprobs=[],
            )
            + self._emit(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
            )
            + self._emit(
                "response.output_item.done",
                output_index=index,
                item=self._message_item(self.text, "completed"),
            )
        )

    def _calls(self, item: SuccessItem) -> list[bytes]:
        frames: list[bytes] = []
        for k in range(len(item.tool_calls)):
            index = self._index(f"call{k}")
            arguments = json.dumps(item.tool_calls[k].input)
            item_id = f"fc_{self._hex}_{k}"
            frames += self._emit(
                "response.output_item.added",
                output_index=index,
                item=self._call_item(k, item, ""),
            )
            frames += self._emit(
                "response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=arguments,
            )
            frames += self._emit(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=arguments,
            )
            frames += self._emit(
                "response.output_item.done", output_index=index, item=self._call_item(k, item)
            )
        return frames

    def render(self, event: Event) -> list[bytes]:
        body = event.body
        if body is None or body.index != 0 or self.final is not None:
            return []
        if body.attempt < self.attempt:
            return []  # an older attempt's late delta (a re-run published as newer)
        self.attempt = body.attempt
        self.seen = True
        if isinstance(body, Delta):
            frames: list[bytes] = []
            if body.reasoning and self.phase != "message":
                if self.phase is None:
                    frames += self._open_reasoning()
                self.reasoning += body.reasoning
                frames += self._emit(
                    "response.reasoning_summary_text.delta",
                    item_id=f"rs_{self._hex}",
                    output_index=self.indexes["reasoning"],
                    summary_index=0,
                    delta=body.reasoning,
                )
            if body.text:
                frames += self._text_delta(body.text)
            return frames
        return self.settle(body.item)

    def settle(self, item: ResultItem) -> list[bytes]:
        """The result's final item: the open output items closed, then the last event."""
        frames: list[bytes] = []
        if isinstance(item, SuccessItem):
            if item.text and self.phase != "message" and not self.text:
                frames += self._text_delta(item.text)
            if self.phase == "reasoning":
                frames += self._close_reasoning()
            elif self.phase == "message":
                frames += self._close_message()
            frames += self._calls(item)
        self.final = item
        self.seen = True
        kind = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
        }.get(self.status(), "response.failed")
        return frames + self._emit(kind, response=self.snapshot())
