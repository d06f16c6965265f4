"""`GET /v1/tasks/{taskUUID}/events`: (re-)attach to any task's event stream, and resume.

A client that resumes past the last event of a finished task gets 204 No Content: the
EventSource standard's "stop reconnecting" (a browser would otherwise reconnect after every
close and be sent `[DONE]` again, forever).
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from core.contract import Final, decode_event
from core.errors import InvalidRequest, TaskNotFound, TaskwireError
from core.events import TaskEvents, stream_id_order
from core.keys import TaskRef
from core.store import TaskRecord
from service.api import bearer_key, checked_task_uuid, error_response
from service.delivery import confirmed
from service.state import AppState, State
from service.streaming import ChunkRenderer, sse_body, sse_response

router = APIRouter()
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


async def _nothing_left(state: AppState, record: TaskRecord, resume: str | None) -> bool:
    """Whether every result is final and no final event follows the client's `resume` id
    (anything after it, such as a stale attempt's delta, would not be shown)."""
    if resume is None or len(record.results) < record.number_results:
        return False
    key = state.store.keys.events(record.ref)
    start = f"({resume}"
    while True:
        entries = await state.store.redis.xrange(key, min=start, max="+", count=64)
        for _event_id, fields in entries:
            if isinstance(decode_event(fields[b"d"]), Final):
                return False
        if len(entries) < 64:
            return True
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


@router.get("/v1/tasks/{task_uuid}/events")
async def task_events(
    task_uuid: str,
    request: Request,
    state: State,
    after: Annotated[str | None, Query(description="resume after this event id")] = None,
    token: Annotated[str | None, Query(description="a stream link's token (browsers)")] = None,
) -> Response:
    """The task's events from the start, or after `Last-Event-ID` / `after`, then live ones
    until `[DONE]`. Authenticate with the API key, or with the token of a stream link."""
    cors = {"Access-Control-Allow-Origin": "*"} if token is not None else {}
    try:
        canonical = checked_task_uuid(task_uuid)
        if token is not None:
            owner = state.tokens.verify(token, canonical)
        else:
            owner = state.keyring.authenticate(bearer_key(request))
        given = request.headers.get("last-event-id") or after
        resume = given or "0-0"
        if not _EVENT_ID.fullmatch(resume):
            raise InvalidRequest(
                "Last-Event-ID / after must be an event id like 1700000000000-0.",
                code="invalidAfter",
                parameter="after",
            )
        ref = TaskRef(owner, canonical)
        record = await state.store.get(ref)
        if record is None:
            raise TaskNotFound(
                f"No task {task_uuid} for this key: unknown, expired, or another key's.",
                parameter="taskUUID",
            )
        if await _nothing_left(state, record, given):
            return Response(status_code=204, headers=cors)
        cleanup = contextlib.AsyncExitStack()
        try:
            sub = await cleanup.enter_async_context(
                state.hub.subscribe(state.store.keys.events(ref))
            )
            await confirmed(sub)
        except BaseException:
            await cleanup.aclose()
            raise
    except TaskwireError as exc:
        response = error_response(exc)
        response.headers.update(cors)
        return response
    # Replay from the start (rendering only what follows `resume`), so the stream knows which
    # results were already final before the point the client resumes from.
    body = sse_body(
        TaskEvents(sub, state.store, ref),
        ChunkRenderer(task_uuid, record.number_results),
        keepalive_s=state.settings.sse_keepalive_s,
        lifetime_s=state.settings.sse_max_lifetime_s,
        retry_ms=1000,
        emit_after=stream_id_order(resume),
        cleanup=cleanup,
    )
    return sse_response(body, headers=cors)
