"""Assembles upstream events into a protocol result item (text, reasoning, tools, usage, cost)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from core.catalog import Price
from core.contract import SuccessItem, ToolCall, Usage
from core.protocol import TextInferenceTask
from worker.providers.base import (
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamEvent,
    UsageReport,
)

_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "completed": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}


def map_finish_reason(raw: str | None) -> str:
    return _FINISH_REASONS.get(raw or "", "unknown")


@dataclass
class _ToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class ResultAssembler:
    """Accumulates one attempt's upstream events."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tools: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: UsageReport | None = None
    deltas: int = 0

    def feed(self, event: UpstreamEvent) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            self.deltas += 1
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
            self.deltas += 1
        elif isinstance(event, ToolCallDelta):
            call = self.tools.setdefault(event.index, _ToolCall())
            call.id = event.id or call.id
            call.name = event.name or call.name
            if event.arguments:
                call.arguments.append(event.arguments)
        elif isinstance(event, Finished):
            self.finish_reason = event.reason
        elif isinstance(event, UsageReport):
            self.usage = event

    def tool_calls(self) -> list[ToolCall]:
        calls = []
        for index in sorted(self.tools):
            call = self.tools[index]
            raw = "".join(call.arguments) or "{}"
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            calls.append(
                ToolCall(
                    call.id or f"call_{index}",
                    call.name,
                    parsed if isinstance(parsed, dict) else {"arguments": raw},
                )
            )
        return calls

    def final_usage(self, task: TextInferenceTask) -> tuple[UsageReport, bool]:
        """The upstream's usage, or an estimate (flagged) when it reported none."""
        if self.usage is not None:
            return self.usage, False
        prompt_chars = sum(len(m.content or "") for m in task.messages)
        return UsageReport(
            prompt_tokens=max(1, prompt_chars // 4), completion_tokens=self.deltas
        ), True

    def item(self, task: TextInferenceTask, index: int, seed: int, price: Price) -> SuccessItem:
        finish_reason = map_finish_reason(self.finish_reason)
        tool_calls = tuple(self.tool_calls()) if self.tools else ()
        if tool_calls and finish_reason in ("stop", "unknown"):
            finish_reason = "tool_calls"
        usage, _estimated = self.final_usage(task)
        return SuccessItem(
            task.taskUUID,
            index,
            "".join(self.text),
            finish_reason,
            seed,
            reasoning="".join(self.reasoning),
            tool_calls=tool_calls,
            cost=price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
            if task.includeCost
            else None,
            usage=Usage(
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.prompt_tokens + usage.completion_tokens,
                usage.reasoning_tokens,
                usage.cached_tokens,
            )
            if task.includeUsage
            else None,
        )
