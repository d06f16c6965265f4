"""The typed contract between processes: one encode and one decode per event and item, and
the stored format of earlier versions (dicts with short keys) still read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.contract import (
    Delta,
    ErrorItem,
    Final,
    ProcessingItem,
    SuccessItem,
    ToolCall,
    Usage,
    decode_event,
    decode_item,
)

UUID = "3f2b6c1e-7d4a-4e9b-9a1c-2b7e5d8f0a13"


def old_dumps(value: Any) -> bytes:
    """How the dict-based producers serialised events and items before the contract."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


SUCCESS_WIRE = {
    "taskType": "textInference",
    "taskUUID": UUID,
    "resultIndex": 1,
    "status": "success",
    "text": "Hallå",
    "finishReason": "tool_calls",
    "seed": 42,
    "reasoningContent": "hmm",
    "toolCalls": [{"id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}],
    "cost": 1.23e-05,
    "usage": {
        "promptTokens": 10,
        "completionTokens": 5,
        "totalTokens": 15,
        "thinkingTokens": 2,
        "cachedTokens": 1,
    },
}
SUCCESS = SuccessItem(
    UUID,
    1,
    "Hallå",
    "tool_calls",
    42,
    "hmm",
    (ToolCall("c1", "get_weather", {"city": "Oslo"}),),
    1.23e-05,
    Usage(10, 5, 15, 2, 1),
)
ERROR_WIRE = {
    "taskType": "textInference",
    "taskUUID": UUID,
    "resultIndex": 0,
    "status": "error",
    "error": {"code": "taskCancelled", "message": "Stopped."},
}


def test_items_decode_from_what_older_workers_stored() -> None:
    assert decode_item(old_dumps(SUCCESS_WIRE)) == SUCCESS
    assert decode_item(old_dumps(ERROR_WIRE)) == ErrorItem(UUID, 0, "taskCancelled", "Stopped.")
    plain = {k: v for k, v in SUCCESS_WIRE.items() if k in ("taskType", "taskUUID", "text")}
    plain |= {"resultIndex": 0, "status": "success", "finishReason": "stop", "seed": 1}
    assert decode_item(old_dumps(plain)) == SuccessItem(UUID, 0, "Hallå", "stop", 1)


def test_items_encode_to_the_protocol_object_field_for_field() -> None:
    # the same fields in the same order: clients see items exactly as before
    assert list(SUCCESS.to_wire().items()) == list(SUCCESS_WIRE.items())
    assert json.loads(SUCCESS.encode()) == SUCCESS_WIRE
    error = ErrorItem(UUID, 0, "taskCancelled", "Stopped.")
    assert error.encode() == old_dumps(ERROR_WIRE)
    assert decode_item(error.encode()) == error
    assert decode_item(SUCCESS.encode()) == SUCCESS
    # optional fields are left out, never null
    bare = SuccessItem(UUID, 0, "x", "stop", 7).to_wire()
    assert list(bare) == [
        "taskType",
        "taskUUID",
        "resultIndex",
        "status",
        "text",
        "finishReason",
        "seed",
    ]


def test_processing_items() -> None:
    assert ProcessingItem(UUID).to_wire() == {
        "taskType": "textInference",
        "taskUUID": UUID,
        "status": "processing",
    }
    assert list(ProcessingItem(UUID, 2).to_wire().items()) == [
        ("taskType", "textInference"),
        ("taskUUID", UUID),
        ("resultIndex", 2),
        ("status", "processing"),
    ]


def test_events_keep_their_stored_bytes() -> None:
    text = Delta(0, 1, 3, text="Hel")
    assert text.encode() == old_dumps({"t": "d", "i": 0, "a": 1, "s": 3, "text": "Hel"})
    reasoning = Delta(1, 2, 1, reasoning="hmm")
    assert reasoning.encode() == old_dumps({"t": "d", "i": 1, "a": 2, "s": 1, "rc": "hmm"})
    error = ErrorItem(UUID, 0, "inferenceError", "ünïcode")
    final = Final(0, 2, error)
    assert final.encode() == old_dumps(
        {
            "t": "f",
            "i": 0,
            "a": 2,
            "r": ERROR_WIRE | {"error": {"code": "inferenceError", "message": "ünïcode"}},
        }
    )
    assert final.encode(error.encode()) == final.encode()


@pytest.mark.parametrize(
    "old",
    [
        {"t": "d", "i": 0, "a": 1, "s": 1, "text": "Hi"},
        {"t": "d", "i": 2, "a": 3, "s": 9, "rc": "thinking"},
        {"t": "f", "i": 1, "a": 1, "r": SUCCESS_WIRE},
        {"t": "f", "i": 0, "a": 4, "r": ERROR_WIRE},
    ],
)
def test_events_written_by_an_older_worker_decode(old: dict[str, Any]) -> None:
    event = decode_event(old_dumps(old))
    assert event is not None and event.index == old["i"] and event.attempt == old["a"]
    assert json.loads(event.encode()) == old


def test_deltas_without_attempt_or_sequence_default() -> None:
    assert decode_event(b'{"t":"d","i":0,"text":"x"}') == Delta(0, 1, 0, "x")


@pytest.mark.parametrize(
    "raw",
    [b'{"t":"x","i":0}', b'{"n":1}', b"[1]", b"not json", b'{"t":"f","i":0}', b'{"t":"d"}'],
)
def test_unknown_or_malformed_events_decode_to_none(raw: bytes) -> None:
    assert decode_event(raw) is None


def test_a_string_that_is_not_unicode_is_still_stored() -> None:
    delta = Delta(0, 1, 1, text="\ud83d")
    assert decode_event(delta.encode()) == delta
