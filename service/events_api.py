"""`GET /v1/tasks/{taskUUID}/events`: (re-)attach to any task's event stream, and resume."""

from __future__ import annotations

import contextlib
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from core.errors import InvalidRequest, TaskNotFound, TaskwireError
from core.events import TaskEvents, stream_id_order
from core.keys import TaskRef
from service.api import bearer_key, checked_task_uuid, error_response
from service.delivery import confirmed
from service.state import State
from service.streaming import ChunkRenderer, sse_body, sse_response

router = APIRouter()
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@router.get("/v1/tasks/{task_uuid}/events")
async def task_events(
    task_uuid: str,
    request: Request,
    state: State,
    after: Annotated[str | None, Query(description="resume after this event id")] = None,
    token: Annotated[str | None, Query(description="a streamURL token (browsers)")] = None,
) -> Response:
    """The task's events from the start, or after `Last-Event-ID` / `after`, then live ones
    until `[DONE]`. Authenticate with the API key, or with the token of a `streamURL`."""
    cors = {"Access-Control-Allow-Origin": "*"} if token is not None else {}
    try:
        checked_task_uuid(task_uuid)
        if token is not None:
            owner = state.tokens.verify(token, task_uuid)
        else:
            owner = state.keyring.authenticate(bearer_key(request))
        resume = request.headers.get("last-event-id") or after or "0-0"
        if not _EVENT_ID.fullmatch(resume):
            raise InvalidRequest(
                "Last-Event-ID / after must be an event id like 1700000000000-0.",
                code="invalidAfter",
                parameter="after",
            )
        ref = TaskRef(owner, task_uuid)
        record = await state.store.get(ref)
        if record is None:
            raise TaskNotFound(
                f"No task {task_uuid} for this key: unknown, expired, or another key's.",
                parameter="taskUUID",
            )
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
