"""Rendering stored events as protocol chunks, and stream tokens (no processes needed)."""

from __future__ import annotations

import json

import pytest

from core.contract import decode_event
from core.errors import AuthenticationFailed
from core.events import Event
from core.tokens import ImageTokens, StreamTokens
from service.streaming import ChunkRenderer

UUID = "3f2b6c1e-7d4a-4e9b-9a1c-2b7e5d8f0a13"
FINAL_STOP = {"taskUUID": UUID, "resultIndex": 0, "status": "success", "finishReason": "stop"}
USAGE = {
    "promptTokens": 1,
    "completionTokens": 2,
    "totalTokens": 3,
    "thinkingTokens": 0,
    "cachedTokens": 0,
}


def stored(event_id: str, old: dict) -> Event:
    """An event as an older worker stored it (a dict with short keys)."""
    return Event(event_id, decode_event(json.dumps(old)))


def data(raw: bytes | None) -> dict:
    assert raw is not None
    event_id, payload = raw.decode().rstrip("\n").split("\n")
    assert event_id.startswith("id: ")
    return json.loads(payload.removeprefix("data: "))


def test_deltas_finals_errors_and_done() -> None:
    r = ChunkRenderer(UUID, 2)
    assert data(r.render(stored("1-0", {"t": "d", "i": 0, "a": 1, "s": 1, "rc": "hmm"}))) == {
        "taskUUID": UUID,
        "taskType": "textInference",
        "resultIndex": 0,
        "delta": {"reasoningContent": "hmm"},
    }
    assert data(r.render(stored("2-0", {"t": "d", "i": 1, "a": 1, "s": 1, "text": "Hi"})))[
        "delta"
    ] == {"text": "Hi"}
    final = data(
        r.render(
            stored(
                "3-0",
                {
                    "t": "f",
                    "i": 0,
                    "a": 1,
                    "r": {
                        "taskType": "textInference",
                        "taskUUID": UUID,
                        "resultIndex": 0,
                        "status": "success",
                        "text": "x",
                        "finishReason": "length",
                        "seed": 1,
                        "usage": USAGE,
                        "cost": 0.5,
                    },
                },
            )
        )
    )
    assert final == {
        "taskUUID": UUID,
        "taskType": "textInference",
        "resultIndex": 0,
        "delta": {},
        "finishReason": "length",
        "seed": 1,
        "usage": USAGE,
        "cost": 0.5,
    }
    assert not r.done
    error = data(
        r.render(
            stored(
                "4-0",
                {
                    "t": "f",
                    "i": 1,
                    "a": 1,
                    "r": {
                        "taskType": "textInference",
                        "taskUUID": UUID,
                        "resultIndex": 1,
                        "status": "error",
                        "error": {"code": "timeoutProvider", "message": "slow"},
                    },
                },
            )
        )
    )
    assert error == {
        "errors": [
            {
                "code": "timeoutProvider",
                "message": "slow",
                "taskUUID": UUID,
                "taskType": "textInference",
                "resultIndex": 1,
            }
        ]
    }
    assert r.done
    assert r.done_event() == b"id: 4-0\ndata: [DONE]\n\n"


def test_ignores_stale_attempts_and_late_events() -> None:
    r = ChunkRenderer(UUID, 1)
    assert r.render(stored("1-0", {"t": "d", "i": 0, "a": 2, "s": 1, "text": "new"}))
    assert r.render(stored("2-0", {"t": "d", "i": 0, "a": 1, "s": 5, "text": "old"})) is None
    assert r.render(stored("3-0", {"t": "d", "i": 7, "a": 2, "s": 1, "text": "?"})) is None
    assert r.render(
        stored(
            "4-0",
            {
                "t": "f",
                "i": 0,
                "a": 2,
                "r": {
                    "taskUUID": UUID,
                    "resultIndex": 0,
                    "status": "success",
                    "finishReason": "stop",
                },
            },
        )
    )
    assert r.render(stored("5-0", {"t": "d", "i": 0, "a": 2, "s": 2, "text": "after"})) is None


def test_stream_tokens() -> None:
    tokens = StreamTokens(b"k" * 32, ttl_s=60)
    token = tokens.issue("owner1", UUID, now=1000)
    assert tokens.verify(token, UUID, now=1059) == "owner1"
    with pytest.raises(AuthenticationFailed) as caught:
        tokens.verify(token, UUID, now=1061)
    assert caught.value.code == "expiredStreamToken"
    for bad in (token.replace("owner1", "owner2"), token + "x", "garbage", "a.b.c"):
        with pytest.raises(AuthenticationFailed):
            tokens.verify(bad, UUID, now=1000)
    with pytest.raises(AuthenticationFailed):
        tokens.verify(token, "00000000-0000-4000-8000-000000000000", now=1000)
    owner, expires, mac = token.split(".")
    with pytest.raises(AuthenticationFailed):  # a longer expiry cannot be forged
        tokens.verify(f"{owner}.{int(expires) + 10_000}.{mac}", UUID, now=1000)
    assert StreamTokens(b"other" * 8, 60).issue("owner1", UUID, now=1000) != token


def test_stream_and_image_tokens_are_not_interchangeable() -> None:
    stream = StreamTokens(b"k" * 32, ttl_s=60)
    image = ImageTokens(b"k" * 32, ttl_s=60)
    with pytest.raises(AuthenticationFailed) as caught:
        image.verify(stream.issue("owner1", UUID, now=1000), UUID, now=1000)
    assert caught.value.code == "invalidImageToken"
    with pytest.raises(AuthenticationFailed):
        stream.verify(image.issue("owner1", UUID, now=1000), UUID, now=1000)
    url = image.image_url("https://api.example.com/", "owner1", UUID, "png")
    assert url.startswith(f"https://api.example.com/v1/images/{UUID}.png?token=owner1.")
    assert stream.stream_url("https://api.example.com", "o", UUID).startswith(
        f"https://api.example.com/v1/tasks/{UUID}/events?token=o."
    )
