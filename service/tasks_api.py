"""`DELETE /v1/tasks/{taskUUID}`: cancel a task, the REST spelling of a `taskCancel` task."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from core.errors import TaskwireError
from service.api import bearer_key, checked_task_uuid, error_response, json_response
from service.batch import task_ref
from service.cancel import TaskCancels
from service.state import State

router = APIRouter()


@router.delete("/v1/tasks/{task_uuid}")
async def cancel_task(task_uuid: str, request: Request, state: State) -> Response:
    """Stop the task's results that are not final; answers as a taskCancel task does,
    `{"data": [one item per result]}`, or 404 for an unknown task or another key's."""
    try:
        checked_task_uuid(task_uuid)
        owner = state.keyring.authenticate(bearer_key(request))
        cancels = TaskCancels(state.store, state.hub, state.deliveries)
        items = await cancels.cancel(
            task_ref(owner, task_uuid), task_uuid, state.settings.cancel_wait_s
        )
    except TaskwireError as exc:
        return error_response(exc, taskType="taskCancel", taskUUID=task_uuid)
    return json_response({"data": items}, 200)
