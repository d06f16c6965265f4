"""Webhook endpoints: a key's signing secret (and its rotation), and re-sending deliveries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from core.deliveries import DeliveryState
from core.errors import InvalidRequest, TaskNotFound
from core.keys import TaskRef
from service.api import Owner, checked_task_uuid, json_response
from service.state import State

router = APIRouter()


@router.get("/v1/webhooks/secret")
async def webhook_secret(owner: Owner, state: State) -> Response:
    """This key's Standard Webhooks signing secret (`whsec_…`), created on first use."""
    secret = await state.webhook_secrets.get(owner)
    return json_response({"secret": secret.current}, 200)


@router.post("/v1/webhooks/secret/rotate")
async def rotate_webhook_secret(owner: Owner, state: State) -> Response:
    """A new secret. Until `previousValidUntil`, deliveries carry signatures by both."""
    rotated = await state.webhook_secrets.rotate(owner, state.settings.webhook_rotation_window_s)
    until = datetime.fromtimestamp(rotated.previous_until or 0, UTC)
    return json_response(
        {"secret": rotated.current, "previousValidUntil": until.isoformat().replace("+00:00", "Z")},
        200,
    )


@router.post("/v1/tasks/{task_uuid}/webhooks/redeliver")
async def redeliver(
    task_uuid: str,
    owner: Owner,
    state: State,
    result_index: Annotated[int | None, Query(alias="resultIndex", ge=0, le=3)] = None,
) -> Response:
    """Send a task's results to its webhook again (every result, or just `resultIndex`), on
    a fresh retry schedule, with the same webhook-id: deliveries failed, delivered, or pending
    with their job lost. One already on its way (job queued or running) is left alone."""
    ref = TaskRef(owner, checked_task_uuid(task_uuid))
    record = await state.store.get(ref)
    if record is None:
        raise TaskNotFound(f"No task {task_uuid} for this key.", parameter="taskUUID")
    if not record.request.get("webhookURL"):
        raise InvalidRequest(
            "This task has no webhookURL.", code="invalidWebhookURL", parameter="webhookURL"
        )
    states = {
        i: DeliveryState(**d)
        for i, d in record.deliveries.items()
        if result_index is None or i == result_index
    }
    if result_index is not None and result_index not in states:
        raise InvalidRequest(
            f"Result {result_index} has no delivery (not final yet?).",
            code="invalidResultIndex",
            parameter="resultIndex",
        )
    resent = await state.deliveries.resend(ref, states)
    record = await state.store.get(ref)
    assert record is not None
    data = [
        {
            "taskType": "textInference",
            "taskUUID": task_uuid,
            "resultIndex": i,
            "resent": i in resent,
            "webhook": DeliveryState(**record.deliveries[i]).public(),
        }
        for i in sorted(states)
    ]
    return json_response({"data": data}, 202 if resent else 200)
