"""`GET /v1/tasks`: a key's own tasks, newest first, filtered by status, a page at a time."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from core.deliveries import DeliveryState
from core.errors import InvalidRequest, ServiceUnavailable, TaskwireError
from core.store import ListCursor, TaskRecord, task_status
from service.api import bearer_key, error_response, json_response
from service.delivery import result_items
from service.limits import limit_error
from service.state import State

router = APIRouter()

MAX_LIMIT = 100
# Result fields that carry the generated text; listed only with `?include=text`.
TEXT_FIELDS = ("text", "reasoningContent", "toolCalls")


def encode_cursor(cursor: ListCursor) -> str:
    raw = json.dumps([cursor.score, cursor.uuid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> ListCursor:
    """The cursor a previous page returned (InvalidRequest for anything else)."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        score, uuid = json.loads(raw)
        float(score)
        if not isinstance(score, str) or not isinstance(uuid, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "cursor is not one this API returned; pass `nextCursor` from the previous page "
            "as it is.",
            code="invalidCursor",
            parameter="cursor",
        ) from None
    return ListCursor(score, uuid)


def task_entry(record: TaskRecord, links: dict[str, Any], include_text: bool) -> dict[str, Any]:
    """What getResponse says of a task, as one entry: its status as a whole, when it was
    created, and its result items (without their text unless asked for)."""
    request = record.request
    sent = request.get("taskUUID")
    uuid = sent if isinstance(sent, str) else record.ref.uuid
    items = []
    for item in result_items(uuid, record.number_results, record.results):
        shown = {**item, "taskUUID": uuid}
        if not include_text:
            for name in TEXT_FIELDS:
                shown.pop(name, None)
        delivery = record.deliveries.get(item["resultIndex"])
        if delivery is not None:
            shown["webhook"] = DeliveryState(**delivery).public()
        items.append(shown)
    errors = sum(1 for item in items if item.get("status") == "error")
    done = sum(1 for item in items if item.get("status") != "processing")
    created = datetime.fromtimestamp(record.created_ms / 1000, UTC)
    return {
        "taskType": "textInference",
        "taskUUID": uuid,
        "status": task_status(record.number_results, done, errors),
        "createdAt": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": request.get("model"),
        "deliveryMethod": request.get("deliveryMethod", "sync"),
        "numberResults": record.number_results,
        "results": items,
        **links,
    }


@router.get("/v1/tasks")
async def list_tasks(
    request: Request,
    state: State,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    status: Literal["processing", "success", "error", "partial"] | None = None,
    include: Annotated[Literal["text"] | None, Query()] = None,
) -> Response:
    """The key's own tasks, newest first: `{"data": [entries], "nextCursor": …}`, where
    `nextCursor` is null once nothing older is left."""
    try:
        owner = state.keyring.authenticate(bearer_key(request))
        after = decode_cursor(cursor) if cursor is not None else None
        hit = await state.read_bucket.take(owner, 1)
        if hit is not None:
            raise limit_error(hit)
        page = await state.store.list_page(owner, limit=limit, after=after, status=status)
    except TaskwireError as exc:
        return error_response(exc)
    except (RedisError, OSError):
        return error_response(
            ServiceUnavailable("Task storage is unavailable; try again shortly.", retry_after=2)
        )
    base_url = str(request.base_url)
    data = []
    for record in page.records:
        links = {"links": {"stream": state.tokens.stream_url(base_url, owner, record.ref.uuid)}}
        data.append(task_entry(record, links, include == "text"))
    next_cursor = encode_cursor(page.next) if page.next is not None else None
    return json_response({"data": data, "nextCursor": next_cursor}, 200)
