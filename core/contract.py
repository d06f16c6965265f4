"""What crosses Redis between processes: task events and result items, typed, each with one
encode and one decode.

A worker writes a result's events (deltas, then one final event carrying the result item)
to the task's Redis Stream, and the item itself into the task record; API processes read
them back to answer a sync wait, render an event stream, show `getResponse` or a cancel's
outcome. Every producer and reader goes through the classes here, so the short keys of the
stored format are spelled in this module only.

Why frozen dataclasses (with slots), not pydantic models: events are encoded and decoded
thousands of times a second, always by our own code on both ends; the untrusted input was
validated at the edge (core/protocol.py). A plain constructor costs a fraction of a
validating one, and mypy still checks every field.

The stored format is unchanged from the dicts it replaces, so a rolling deploy's older and
newer processes read each other's events:
- delta `{"t":"d","i":index,"a":attempt,"s":seq,"text":...}` (or `"rc"` for reasoning);
- final `{"t":"f","i":index,"a":attempt,"r":<result item>}`;
- a result item is the protocol's own JSON object (docs/protocol.md), field order included,
  as the task record stores it and clients are shown it.
An event of a kind this version does not know decodes to None: readers skip it (keeping its
stream id), as a newer worker's additions must not break an older API process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import orjson

TEXT_INFERENCE = "textInference"


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8. orjson for speed; a string that is not valid Unicode (a lone
    surrogate from upstream) falls back to \\u escapes rather than failing the write."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def loads(raw: bytes | str) -> Any:
    """JSON as stored; the stdlib reads what orjson refuses (an escaped lone surrogate)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


# --- result items


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    thinking_tokens: int = 0
    cached_tokens: int = 0

    def to_wire(self) -> dict[str, int]:
        return {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "totalTokens": self.total_tokens,
            "thinkingTokens": self.thinking_tokens,
            "cachedTokens": self.cached_tokens,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Usage:
        return cls(
            int(data.get("promptTokens", 0)),
            int(data.get("completionTokens", 0)),
            int(data.get("totalTokens", 0)),
            int(data.get("thinkingTokens", 0)),
            int(data.get("cachedTokens", 0)),
        )


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "input": self.input}


@dataclass(frozen=True, slots=True)
class SuccessItem:
    """A finished result (`status: success`)."""

    status: ClassVar[Literal["success"]] = "success"
    task_uuid: str
    index: int
    text: str
    finish_reason: str
    seed: int | None = None
    reasoning: str = ""  # reasoningContent, shown only when there is some
    tool_calls: tuple[ToolCall, ...] = ()
    cost: float | None = None  # only with includeCost
    usage: Usage | None = None  # only with includeUsage

    def to_wire(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "taskType": TEXT_INFERENCE,
            "taskUUID": self.task_uuid,
            "resultIndex": self.index,
            "status": "success",
            "text": self.text,
            "finishReason": self.finish_reason,
        }
        if self.seed is not None:
            item["seed"] = self.seed
        if self.reasoning:
            item["reasoningContent"] = self.reasoning
        if self.tool_calls:
            item["toolCalls"] = [call.to_wire() for call in self.tool_calls]
        if self.cost is not None:
            item["cost"] = self.cost
        if self.usage is not None:
            item["usage"] = self.usage.to_wire()
        return item

    def encode(self) -> bytes:
        return dumps(self.to_wire())


@dataclass(frozen=True, slots=True)
class ErrorItem:
    """A result that failed, was cancelled or expired (`status: error`)."""

    status: ClassVar[Literal["error"]] = "error"
    task_uuid: str
    index: int
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "taskType": TEXT_INFERENCE,
            "taskUUID": self.task_uuid,
            "resultIndex": self.index,
            "status": "error",
            "error": {"code": self.code, "message": self.message},
        }

    def encode(self) -> bytes:
        return dumps(self.to_wire())


@dataclass(frozen=True, slots=True)
class ProcessingItem:
    """A result (or, without an index, a whole task) not final yet. Never stored: answers
    build it for what the record does not hold yet."""

    status: ClassVar[Literal["processing"]] = "processing"
    task_uuid: str
    index: int | None = None

    def to_wire(self) -> dict[str, Any]:
        item: dict[str, Any] = {"taskType": TEXT_INFERENCE, "taskUUID": self.task_uuid}
        if self.index is not None:
            item["resultIndex"] = self.index
        item["status"] = "processing"
        return item


# What a task record stores for a result, and a final event carries.
ResultItem = SuccessItem | ErrorItem
# What an answer shows for a result.
Item = SuccessItem | ErrorItem | ProcessingItem


def item_from_wire(data: dict[str, Any]) -> ResultItem:
    """A stored result item (ValueError if it is neither a success nor an error)."""
    status = data.get("status")
    if status == "success":
        usage = data.get("usage")
        calls = data.get("toolCalls")
        return SuccessItem(
            data["taskUUID"],
            int(data["resultIndex"]),
            data.get("text", ""),
            data.get("finishReason", "unknown"),
            data.get("seed"),
            data.get("reasoningContent", ""),
            tuple(ToolCall(c["id"], c["name"], c["input"]) for c in calls) if calls else (),
            data.get("cost"),
            Usage.from_wire(usage) if usage is not None else None,
        )
    if status == "error":
        error = data.get("error") or {}
        return ErrorItem(
            data["taskUUID"],
            int(data["resultIndex"]),
            error.get("code", "inferenceError"),
            error.get("message", ""),
        )
    raise ValueError(f"not a final result item (status {status!r})")


def decode_item(raw: bytes | str) -> ResultItem:
    """A result item as the task record stores it."""
    return item_from_wire(loads(raw))


# --- task events


@dataclass(frozen=True, slots=True)
class Delta:
    """Text or reasoning a result produced since its last delta. `attempt` is the job's try
    (a re-run publishes as a newer attempt), `seq` numbers the deltas of one attempt."""

    index: int
    attempt: int
    seq: int
    text: str = ""
    reasoning: str = ""

    def encode(self) -> bytes:
        event: dict[str, Any] = {"t": "d", "i": self.index, "a": self.attempt, "s": self.seq}
        if self.reasoning:
            event["rc"] = self.reasoning
        if self.text or not self.reasoning:
            event["text"] = self.text
        return dumps(event)


@dataclass(frozen=True, slots=True)
class Final:
    """A result's final item; the last event of that result."""

    index: int
    attempt: int
    item: ResultItem

    def encode(self, item: bytes | None = None) -> bytes:
        """The event; `item` is the item already encoded (the record stores the same bytes)."""
        body = self.item.encode() if item is None else item
        return b'{"t":"f","i":%d,"a":%d,"r":%b}' % (self.index, self.attempt, body)


TaskEvent = Delta | Final

# The same final event spelled in Lua, for a script that records a result itself (the cancel
# script, which reads the attempt inside Redis): final_event(index, attempt, item JSON).
LUA_FINAL_EVENT = """
local function final_event(index, attempt, item)
  return '{"t":"f","i":' .. index .. ',"a":' .. attempt .. ',"r":' .. item .. '}'
end
"""


def decode_event(raw: bytes | str) -> TaskEvent | None:
    """A stored or published event; None for one this version does not know (or a malformed
    one), which readers skip."""
    try:
        data = loads(raw)
        kind = data.get("t")
        if kind == "d":
            return Delta(
                int(data["i"]),
                int(data.get("a", 1)),
                int(data.get("s", 0)),
                data.get("text", ""),
                data.get("rc", ""),
            )
        if kind == "f":
            return Final(int(data["i"]), int(data.get("a", 1)), item_from_wire(data["r"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return None
