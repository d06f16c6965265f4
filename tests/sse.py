"""A deliberately strict parser of taskwire's event streams, for tests.

It accepts only what the protocol allows: `retry:` and comment lines, and events made of
exactly one `id:` line followed by exactly one `data:` line. Anything else fails the test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DELTA_KEYS = {"taskUUID", "taskType", "resultIndex", "delta"}
FINAL_KEYS = DELTA_KEYS | {"finishReason", "seed"}
FINAL_OPTIONAL = {"usage", "cost", "toolCalls"}


@dataclass
class StreamEvent:
    id: str
    data: str

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


@dataclass
class ParsedStream:
    events: list[StreamEvent]
    comments: int
    retry: int | None


def parse_strict(raw: bytes) -> ParsedStream:
    text = raw.decode("utf-8")
    assert "\r" not in text, "taskwire writes LF line ends"
    blocks = text.split("\n\n")
    assert blocks[-1] == "", "the stream must end with a complete event"
    events: list[StreamEvent] = []
    comments = 0
    retry = None
    for block in blocks[:-1]:
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            comments += len(lines)
            continue
        if len(lines) == 1 and lines[0].startswith("retry: "):
            retry = int(lines[0][7:])
            continue
        assert len(lines) == 2, f"an event is one id and one data line, got {lines!r}"
        assert lines[0].startswith("id: "), lines
        assert lines[1].startswith("data: "), lines
        events.append(StreamEvent(lines[0][4:], lines[1][6:]))
    return ParsedStream(events, comments, retry)


def check_chunk(chunk: dict[str, Any], task_uuid: str, number_results: int) -> str:
    """Check one chunk's exact shape; return its kind: delta, final or error."""
    if "errors" in chunk:
        assert set(chunk) == {"errors"}
        [error] = chunk["errors"]
        assert set(error) == {"code", "message", "taskUUID", "taskType", "resultIndex"}
        assert error["taskUUID"] == task_uuid
        return "error"
    assert chunk["taskUUID"] == task_uuid
    assert chunk["taskType"] == "textInference"
    assert 0 <= chunk["resultIndex"] < number_results
    if "finishReason" in chunk:
        assert FINAL_KEYS <= set(chunk) <= FINAL_KEYS | FINAL_OPTIONAL, set(chunk)
        assert chunk["delta"] == {}
        assert chunk["finishReason"] in (
            "stop",
            "length",
            "content_filter",
            "tool_calls",
            "unknown",
        )
        return "final"
    assert set(chunk) == DELTA_KEYS, set(chunk)
    delta = chunk["delta"]
    assert len(delta) == 1, "a delta carries text or reasoningContent"
    assert set(delta) <= {"text", "reasoningContent"}
    assert all(isinstance(v, str) and v for v in delta.values())
    return "delta"


def assemble(events: list[StreamEvent]) -> dict[int, dict[str, str]]:
    """Per result: the streamed text and reasoning."""
    out: dict[int, dict[str, str]] = {}
    for event in events:
        if event.done:
            continue
        chunk = event.json
        if "delta" not in chunk:
            continue
        slot = out.setdefault(chunk["resultIndex"], {"text": "", "reasoning": ""})
        slot["text"] += chunk["delta"].get("text", "")
        slot["reasoning"] += chunk["delta"].get("reasoningContent", "")
    return out


def id_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)
