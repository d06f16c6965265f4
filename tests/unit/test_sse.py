"""The worker's event-stream reader agrees with httpx-sse on every chunking."""

from __future__ import annotations

import random

import httpx
import pytest
from httpx_sse import EventSource

from worker.providers.sse import aiter_sse

STREAMS = [
    b"data: one\n\ndata: two\n\n",
    b"data: one\r\n\r\ndata: two\r\n\r\n",
    b"data: one\r\rdata: two\r\r",
    b': keep-alive\n\nevent: delta\ndata: {"a": 1}\n\n',
    b"data: line1\ndata: line2\n\ndata:no-space\n\n",
    b"id: 7\nretry: 100\ndata: x\n\n: comment only\n\n",
    b"data: [DONE]\n\n",
    "data: unicode \u00e9\u4e2d\U0001f600\n\n".encode(),
]


class _Chunked(httpx.AsyncByteStream):
    def __init__(self, parts: list[bytes]):
        self._parts = parts

    async def __aiter__(self):
        for part in self._parts:
            yield part


def _response(parts: list[bytes]) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=_Chunked(parts)
    )


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def _ours(parts: list[bytes]) -> list[tuple[str, str]]:
    return [(e.event, e.data) async for e in aiter_sse(_response(parts))]


async def _reference(parts: list[bytes]) -> list[tuple[str, str]]:
    events = EventSource(_response(parts)).aiter_sse()
    return [(e.event, e.data) async for e in events if e.data or e.event != "message"]


@pytest.mark.parametrize("stream", STREAMS)
async def test_matches_httpx_sse_on_random_chunkings(stream: bytes) -> None:
    rng = random.Random(stream)
    expected = await _reference([stream])
    assert expected
    for _ in range(50):
        assert await _ours(_split(stream, rng)) == expected


async def test_byte_at_a_time_crlf() -> None:
    stream = b"data: a\r\n\r\ndata: b\r\n\r\n"
    assert await _ours([bytes([b]) for b in stream]) == [("message", "a"), ("message", "b")]


async def test_unterminated_last_event_is_still_seen() -> None:
    assert await _ours([b"data: tail"]) == []
    assert await _ours([b"data: tail\n"]) == [("message", "tail")]
