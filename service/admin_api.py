"""/admin/keys: the key commands over HTTP, for `Authorization: Bearer $TASKWIRE_ADMIN_TOKEN`.

Off unless TASKWIRE_ADMIN_TOKEN is set: every route then answers 404 like an unknown path.
The token is compared in constant time (digests of both sides); a wrong or missing one gets
401. A new key is in the answer that creates it, and nowhere else.

  GET  /admin/keys                      every managed key (?owner=<id>: one owner's)
  POST /admin/keys                      {"name", "owner"?, "expiresInS"?, "limits"?}
  POST /admin/keys/{keyId}/revoke
  POST /admin/keys/{keyId}/rotate       {"graceS"?: 3600, "name"?, "expiresInS"?}
  GET  /admin/keys/{ownerOrKeyId}/limits
  PUT  /admin/keys/{ownerOrKeyId}/limits {"rps": 5, "burst": null, ...}: null = the default
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from core.apikeys import ApiKeyStore, KeyConflict, KeyNotFound, NewKey, is_owner_id
from core.errors import AuthenticationFailed, InvalidRequest, TaskNotFound
from core.limits import TENANT_FIELDS
from core.settings import KeyLimits
from service.api import bearer_key, json_response

router = APIRouter(prefix="/admin", include_in_schema=False)


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    owner: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    expiresInS: float | None = Field(default=None, gt=0)
    limits: KeyLimits | None = None


class RotateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    graceS: float = Field(default=3600.0, ge=0)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    expiresInS: float | None = Field(default=None, gt=0)


def admin_enabled(request: Request) -> None:
    """404, like an unknown path, unless TASKWIRE_ADMIN_TOKEN is set."""
    if request.app.state.taskwire.settings.admin_token is None:
        raise HTTPException(404, "Not Found")


def require_admin(request: Request) -> None:
    """Pass a request carrying the admin token; 404 when there is none, else 401."""
    admin_enabled(request)
    token = request.app.state.taskwire.settings.admin_token
    presented = bearer_key(request) or ""
    expected = hashlib.sha256(token.get_secret_value().encode()).digest()
    if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), expected):
        raise AuthenticationFailed("Invalid admin token.", code="invalidAdminToken")


def admin_store(request: Request) -> ApiKeyStore:
    """The key store, for a request carrying the admin token (404 when there is none)."""
    require_admin(request)
    store: ApiKeyStore = request.app.state.apikeys
    return store


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "body"
        raise InvalidRequest(f"Invalid value for '{where}': {error.get('msg')}.") from None


def _new(new: NewKey, **extra: Any) -> dict[str, Any]:
    return {"apiKey": new.api_key, **new.record.public(), **extra}


def _not_found(exc: KeyNotFound) -> TaskNotFound:
    return TaskNotFound(str(exc.args[0]), code="keyNotFound")


@router.get("/keys")
async def list_keys(request: Request, owner: str | None = None) -> Response:
    store = admin_store(request)
    rows = [r.public() for r in await store.list() if owner in (None, r.owner)]
    return json_response({"data": rows}, 200)


@router.post("/keys")
async def create_key(request: Request) -> Response:
    store = admin_store(request)
    body: CreateKey = await _body(request, CreateKey)
    expires = time.time() + body.expiresInS if body.expiresInS else None
    try:
        new = await store.create(body.name, expires=expires, owner=body.owner)
    except KeyNotFound as exc:
        raise _not_found(exc) from None
    extra: dict[str, Any] = {}
    if body.limits is not None:
        values = body.limits.model_dump(exclude_none=True)
        extra["limits"] = await store.set_limits(new.record.owner, values)
    return json_response({"data": _new(new, **extra)}, 201)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    store = admin_store(request)
    try:
        record = await store.revoke(key_id)
    except KeyNotFound as exc:
        raise _not_found(exc) from None
    except KeyConflict as exc:
        raise InvalidRequest(str(exc.args[0])) from None
    return json_response({"data": record.public()}, 200)


@router.post("/keys/{key_id}/rotate")
async def rotate_key(request: Request, key_id: str) -> Response:
    store = admin_store(request)
    body: RotateKey = await _body(request, RotateKey)
    expires = time.time() + body.expiresInS if body.expiresInS else None
    try:
        new, old = await store.rotate(key_id, grace_s=body.graceS, name=body.name, expires=expires)
    except KeyNotFound as exc:
        raise _not_found(exc) from None
    except KeyConflict as exc:
        raise InvalidRequest(str(exc.args[0])) from None
    return json_response({"data": _new(new, replaces=old.public())}, 201)


async def _owner(store: ApiKeyStore, target: str) -> str:
    if is_owner_id(target):
        return target
    try:
        return (await store.resolve(target)).owner
    except KeyNotFound as exc:
        raise _not_found(exc) from None
    except KeyConflict as exc:
        raise InvalidRequest(str(exc.args[0])) from None


@router.get("/keys/{target}/limits")
async def get_limits(request: Request, target: str) -> Response:
    store = admin_store(request)
    owner = await _owner(store, target)
    return json_response({"data": {"owner": owner, "limits": await store.limits(owner)}}, 200)


@router.put("/keys/{target}/limits")
async def put_limits(request: Request, target: str) -> Response:
    store = admin_store(request)
    owner = await _owner(store, target)
    raw = await request.body()
    try:
        given = KeyLimits.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ())) or "body"
        raise InvalidRequest(f"Invalid value for '{where}': {error.get('msg')}.") from None
    sent = given.model_fields_set
    values = {name: v for name, v in given.model_dump().items() if name in sent and v is not None}
    reset = [name for name in TENANT_FIELDS if name in sent and name not in values]
    limits = await store.set_limits(owner, values, reset)
    return json_response({"data": {"owner": owner, "limits": limits}}, 200)
