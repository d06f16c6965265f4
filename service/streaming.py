"""Server-sent events: a task's event stream rendered in the protocol's chunk format."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from core.contract import Delta, ErrorItem, ResultItem
from core.events import Event, TaskEvents
from service.metrics import stream_closed, stream_opened

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # no buffering in nginx-style proxies
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ChunkRenderer:
    """Turns stored task events into `id:`/`data:` SSE events, and knows when all results of
    the task are final (then `[DONE]`)."""

    def __init__(self, task_uuid: str, number_results: int):
        self.task_uuid = task_uuid
        self.number_results = number_results
        self.finished: set[int] = set()
        self.last_id = "0-0"
        # A re-run of a result (after a worker crash) publishes as a new attempt; deltas of
        # an older attempt that arrive after a newer one (a lost lease) are dropped.
        self._attempt: dict[int, int] = {}

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.number_results

    def render(self, event: Event) -> bytes | None:
        self.last_id = event.id
        body = event.body
        if body is None:
            return None
        index = body.index
        if not 0 <= index < self.number_results or index in self.finished:
            return None
        if body.attempt < self._attempt.get(index, 0):
            return None
        self._attempt[index] = body.attempt
        if isinstance(body, Delta):
            delta: dict[str, str] = {}
            if body.reasoning:
                delta["reasoningContent"] = body.reasoning
            if body.text:
                delta["text"] = body.text
            if not delta:
                return None
            return self._event(event.id, self._chunk(index, delta=delta))
        self.finished.add(index)
        return self._event(event.id, self._final(index, body.item))

    def _chunk(self, index: int, **fields: Any) -> dict[str, Any]:
        return {
            "taskUUID": self.task_uuid,
            "taskType": "textInference",
            "resultIndex": index,
            **fields,
        }

    def _final(self, index: int, item: ResultItem) -> dict[str, Any]:
        if isinstance(item, ErrorItem):
            return {
                "errors": [
                    {
                        "code": item.code,
                        "message": item.message,
                        "taskUUID": self.task_uuid,
                        "taskType": "textInference",
                        "resultIndex": index,
                    }
                ]
            }
        chunk = self._chunk(index, delta={}, finishReason=item.finish_reason)
        if item.seed is not None:
            chunk["seed"] = item.seed
        if item.tool_calls:
            chunk["toolCalls"] = [call.to_wire() for call in item.tool_calls]
        if item.usage is not None:
            chunk["usage"] = item.usage.to_wire()
        if item.cost is not None:
            chunk["cost"] = item.cost
        return chunk

    @staticmethod
    def _event(event_id: str, payload: dict[str, Any]) -> bytes:
        return f"id: {event_id}\ndata: {_dumps(payload)}\n\n".encode()

    def done_event(self) -> bytes:
        return f"id: {self.last_id}\ndata: [DONE]\n\n".encode()


async def sse_body(
    events: TaskEvents,
    renderer: ChunkRenderer,
    *,
    keepalive_s: float,
    lifetime_s: float | None = None,
    retry_ms: int | None = None,
    emit_after: tuple[int, int] = (0, 0),
    cleanup: contextlib.AsyncExitStack | None = None,
) -> AsyncIterator[bytes]:
    """The bytes of an event stream, until `[DONE]` (or the lifetime, for a reconnecting
    client). Events up to `emit_after` are rendered (for their state) but not sent. Comment
    lines keep a silent connection open."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime_s if lifetime_s is not None else None
    stream_opened()
    try:
        if retry_ms is not None:
            yield f"retry: {retry_ms}\n\n".encode()
        while not renderer.done:
            wait = keepalive_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return  # the client reconnects with Last-Event-ID and resumes here
            try:
                event = await asyncio.wait_for(events.next(), wait)
            except TimeoutError:
                if deadline is None or loop.time() < deadline:
                    yield b": keep-alive\n\n"
                continue
            chunk = renderer.render(event)
            if chunk is not None and event.order > emit_after:
                yield chunk
        yield renderer.done_event()
    finally:
        stream_closed()
        if cleanup is not None:
            await cleanup.aclose()


def sse_response(
    body: AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
    )
