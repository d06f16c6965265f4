"""`GET /v1/images/{imageUUID}.{ext}`: an uploaded image, for its owner only.

The owner shows its API key (`Authorization: Bearer`), or the URL carries the signed,
expiring token `imageUpload` put in its `imageURL` (bound to owner, image and expiry), so
the URL works in a browser or for an upstream that fetches it. Another key's image, and an
image that expired, are both "not found".
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from core.errors import InvalidRequest, TaskNotFound, TaskwireError
from core.images import classify
from service.api import bearer_key, error_response
from service.state import AppState, State

router = APIRouter()


def _owner(state: AppState, request: Request, image_uuid: str, token: str | None) -> str:
    if token is not None:
        return state.images.tokens.verify(token, image_uuid)
    return state.keyring.authenticate(bearer_key(request))


@router.get("/v1/images/{name}")
async def image(
    name: str,
    request: Request,
    state: State,
    token: Annotated[str | None, Query(description="the token of a signed imageURL")] = None,
) -> Response:
    """An uploaded image, by the imageURL `imageUpload` returned (its UUID is the key)."""
    image_uuid, _, _ = name.partition(".")
    try:
        if classify(image_uuid) != "uuid":
            raise InvalidRequest("Not an image id.", code="invalidImageUUID")
        owner = _owner(state, request, image_uuid, token)
        stored = await state.images.store.get(image_uuid)
        if stored is None or stored.owner != owner:
            raise TaskNotFound("No such image for this key (uploads expire).", code="imageNotFound")
    except TaskwireError as exc:
        return error_response(exc)
    return Response(
        stored.data,
        media_type=stored.mime,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
