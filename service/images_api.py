"""`GET /v1/images/{imageUUID}.{ext}`: uploaded images, served at their `imageURL`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from core.errors import InvalidRequest, TaskNotFound
from core.images import classify
from service.api import error_response
from service.state import State

router = APIRouter()


@router.get("/v1/images/{name}")
async def image(name: str, state: State) -> Response:
    """An uploaded image, by the imageURL `imageUpload` returned (its UUID is the key)."""
    image_uuid, _, _ = name.partition(".")
    if classify(image_uuid) != "uuid":
        return error_response(InvalidRequest("Not an image id.", code="invalidImageUUID"))
    stored = await state.images.store.get(image_uuid)
    if stored is None:
        return error_response(TaskNotFound("No such image (uploads expire).", code="imageNotFound"))
    return Response(
        stored.data, media_type=stored.mime, headers={"Cache-Control": "private, max-age=3600"}
    )
